"""Shared fixtures: a tiny synthetic ACDC-like cohort and a small model configuration that fits it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: Preprocessing and model sizes for fast tests: a 32 x 32 x 16 grid at 6 x 6 x 6.3 mm still holds the heart.
TINY_SIZE = (32, 32, 16)
TINY_SPACING = (6.0, 6.0, 6.3)
TINY_MODEL = dict(image_size=TINY_SIZE, encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
                  kernel_smooth=9, sigma_smooth=1.5)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
