"""The checkpoints the app offers and what it shows of them, read without loading any weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cvae.checkpoint import CONFIG_FILE, checkpoint_dirs, read_config, resolve_checkpoint
from cvae.model import CVAERegistration

__all__ = ["ENV_CHECKPOINT", "DEFAULT_CHECKPOINT", "default_checkpoint", "checkpoint_choices", "model_card",
           "latent_size", "grid_of", "file_stamp"]

ENV_CHECKPOINT = "CVAE_CHECKPOINT"
DEFAULT_CHECKPOINT = "synthetic-acdc"


def default_checkpoint() -> str:
    """``$CVAE_CHECKPOINT`` (a name or a folder) or ``synthetic-acdc``."""
    return os.environ.get(ENV_CHECKPOINT) or DEFAULT_CHECKPOINT


def _is_cvae_checkpoint(folder: Path) -> bool:
    try:
        read_config(folder)
    except ValueError:  # CheckpointError: another model's folder (e.g. VoxelMorph's) or a broken one
        return False
    return True


def checkpoint_choices() -> list[str]:
    """The default checkpoint first, then every named cvae-reg checkpoint found in the checkpoint folders."""
    names = [default_checkpoint()]
    for root in checkpoint_dirs():
        if root.is_dir():
            names += sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file() and _is_cvae_checkpoint(p))
    return list(dict.fromkeys(names))


def model_card(checkpoint: str) -> dict[str, Any]:
    """``{"folder", "config", "readme"}`` of a checkpoint, without loading its weights (``CheckpointError`` if
    it does not exist)."""
    folder = resolve_checkpoint(checkpoint)
    readme = folder / "README.md"
    return {"folder": folder, "config": read_config(folder),
            "readme": readme.read_text(errors="replace") if readme.is_file() else ""}


def latent_size(checkpoint: str) -> int | None:
    """d of a checkpoint's latent space, read from its config (``None`` when the checkpoint cannot be read)."""
    try:
        return int(read_config(checkpoint)["model"]["latent_dim"])
    except (ValueError, KeyError, TypeError):  # CheckpointError is a ValueError
        return None


def grid_of(model: CVAERegistration, config: dict) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(size in voxels, spacing in mm)`` of the preprocessing grid a checkpoint was trained on."""
    return (tuple(int(n) for n in model.config.image_size),  # type: ignore[return-value]
            tuple(float(s) for s in config["spacing"]))


def file_stamp(path: Path) -> tuple[int, int]:
    """``(mtime_ns, size)`` of a file or folder, ``(0, 0)`` when missing: part of a cache key, so that a rewritten
    file is read again."""
    stat = path.stat() if path.exists() else None
    return (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)
