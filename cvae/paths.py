"""Default locations: the demo cohort, the cache, the results folder (each overridable by an environment variable)."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository (or source tree) that holds ``cvae/``, ``checkpoints/`` and ``data/``.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The cohort the app and the commands use by default: ``$CVAE_DATA`` or ``<project>/data/synthetic-acdc``."""
    return Path(os.environ.get("CVAE_DATA") or PROJECT_ROOT / "data" / "synthetic-acdc").expanduser()


def cache_root() -> Path:
    """Where derived data (preprocessed volumes, latent tables, projections) is cached: ``$CVAE_CACHE`` or
    ``~/.cache/cvae-reg``."""
    return Path(os.environ.get("CVAE_CACHE") or Path.home() / ".cache" / "cvae-reg").expanduser()


def results_root() -> Path:
    """Where ``cvae evaluate`` writes by default and the app reads: ``$CVAE_RESULTS`` or ``<project>/results``."""
    return Path(os.environ.get("CVAE_RESULTS") or PROJECT_ROOT / "results").expanduser()
