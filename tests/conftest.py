"""Shared fixtures: a tiny synthetic ACDC-like cohort and a small model configuration that fits it."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

#: Preprocessing and model sizes for fast tests: a 32 x 32 x 16 grid at 6 x 6 x 6.3 mm still holds the heart.
TINY_SIZE = (32, 32, 16)
TINY_SPACING = (6.0, 6.0, 6.3)
TINY_MODEL = dict(image_size=TINY_SIZE, encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
                  kernel_smooth=9, sigma_smooth=1.5)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: The benchmark scripts (not a package: they import each other with ``benchmarks/`` on ``sys.path``).
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module, with ``benchmarks/`` on ``sys.path`` as when it runs."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """8 training + 5 testing subjects (every group present) in the ACDC layout, made once per session."""
    from cvae.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("tiny-cohort")
    make_cohort(root, n_train=8, n_test=5, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Preprocessed-volume cache shared by the tests of one session."""
    return tmp_path_factory.mktemp("cvae-cache")
