"""The grid the paper's networks work on: 128 x 128 x 32 voxels of 1.5 x 1.5 x 3.15 mm around the heart.

Every default that names the model's input grid (preprocessing, model and training configurations, checkpoints,
evaluation) refers to these two constants; a checkpoint records the grid it was trained on in its ``config.json``.
"""
from __future__ import annotations

__all__ = ["DEFAULT_SIZE", "DEFAULT_SPACING"]

#: Voxels along (X, Y, Z) of the preprocessed crop.
DEFAULT_SIZE: tuple[int, int, int] = (128, 128, 32)
#: Voxel size in mm along (X, Y, Z) of the preprocessed crop.
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 3.15)
