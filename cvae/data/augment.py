"""Online augmentation for training: one random affine per sample (shift, rotation, scaling, mirroring), applied
identically to the fixed and moving images (trilinear) and to their labels (nearest).

Volumes are torch tensors ``(B, C, X, Y, Z)``. Transforms are built in voxel units about the grid centre, with
rotations done in mm (the voxels are anisotropic, e.g. 1.5 x 1.5 x 3.15 mm) and then handed to ``affine_grid`` /
``grid_sample`` (``align_corners=True``, zero padding). Randomness comes only from the given ``torch.Generator``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvae.data.grid import DEFAULT_SPACING

IMAGE_KEYS: tuple[str, ...] = ("fixed", "moving")
LABEL_KEYS: tuple[str, ...] = ("fixed_label", "moving_label")


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random transform; each value is drawn uniformly in [-r, r] (or in ``scale``).

    ``shift``: voxels along the in-plane axes (0, 1); ``shift_slices``: voxels along the slice axis (2).
    ``rotation``: degrees about the slice axis; ``tilt``: degrees about each in-plane axis (out of plane).
    ``scale``: (min, max) isotropic factor. ``mirror_prob``: probability of flipping each of ``mirror_axes``.
    """

    shift: float = 5.0
    shift_slices: float = 1.0
    rotation: float = 10.0
    tilt: float = 3.0
    scale: tuple[float, float] = (0.9, 1.1)
    mirror_prob: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        if min(self.shift, self.shift_slices, self.rotation, self.tilt) < 0:
            raise ValueError("augmentation ranges (shift, shift_slices, rotation, tilt) must be >= 0")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {self.scale}")
        if not 0.0 <= self.mirror_prob <= 1.0:
            raise ValueError(f"mirror_prob must be in [0, 1], got {self.mirror_prob}")
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes 0, 1 or 2, got {self.mirror_axes}")

    @property
    def is_identity(self) -> bool:
        """True when every drawn transform is the identity."""
        no_mirror = self.mirror_prob == 0 or not self.mirror_axes
        return self.shift == self.shift_slices == self.rotation == self.tilt == 0 and self.scale == (1, 1) and no_mirror


#: No augmentation at all (for evaluation).
NO_AUGMENTATION = AugmentParams(
    shift=0.0, shift_slices=0.0, rotation=0.0, tilt=0.0, scale=(1.0, 1.0), mirror_prob=0.0
)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _rotation(axis: int, angles: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations by ``angles`` (radians) about spatial ``axis``."""
    i, j = [a for a in range(3) if a != axis]
    rot = torch.eye(3, dtype=torch.float64).repeat(len(angles), 1, 1)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = cos, -sin, sin, cos
    return rot


def random_affines(
    batch: int,
    params: AugmentParams,
    generator: torch.Generator,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch`` transforms: ``(matrix (B, 3, 3), shift (B, 3))`` in voxel units about the grid centre.

    An output voxel ``x`` samples the input at ``c + matrix @ (x - c) + shift`` (``c`` = grid centre). The matrix is
    ``D^-1 R D S M`` with ``D`` = diag(spacing) mm, ``R`` = rotations, ``S`` = scale, ``M`` = mirror signs. float64.
    """
    deg = math.pi / 180.0
    rot = _rotation(2, _uniform(generator, batch, -params.rotation * deg, params.rotation * deg))
    for axis in (0, 1):
        rot = rot @ _rotation(axis, _uniform(generator, batch, -params.tilt * deg, params.tilt * deg))
    scale = _uniform(generator, batch, *params.scale)
    signs = torch.ones(batch, 3, dtype=torch.float64)
    flips = torch.rand(batch, 3, generator=generator, dtype=torch.float64) < params.mirror_prob
    for axis in params.mirror_axes:
        signs[flips[:, axis], axis] = -1.0
    d = torch.as_tensor(spacing, dtype=torch.float64)
    matrix = (rot / d[:, None]) * d[None, :] * (scale[:, None, None] * signs[:, None, :])
    limits = torch.tensor([params.shift, params.shift, params.shift_slices], dtype=torch.float64)
    shift = (2 * torch.rand(batch, 3, generator=generator, dtype=torch.float64) - 1) * limits
    return matrix, shift


def apply_affine(volume: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor, mode: str) -> torch.Tensor:
    """Warp ``volume`` (B, C, X, Y, Z) by voxel-unit transforms ``matrix`` (B, 3, 3), ``shift`` (B, 3).

    ``mode`` ``"bilinear"`` (trilinear, images) or ``"nearest"`` (labels; integer values are preserved). Outside the
    volume is 0. Returns the dtype of ``volume``.
    """
    if volume.ndim != 5:
        raise ValueError(f"expected a (B, C, X, Y, Z) tensor, got shape {tuple(volume.shape)}")
    sizes = torch.tensor(volume.shape[2:], dtype=torch.float64)
    if (sizes < 2).any():
        raise ValueError(f"every spatial size must be >= 2 to augment, got {tuple(volume.shape[2:])}")
    half = (sizes - 1) / 2  # voxel x <-> normalised n: x - c = half * n (align_corners=True)
    theta_matrix = matrix / half[None, :, None] * half[None, None, :]
    theta_shift = shift / half[None, :]
    # grid_sample's coordinates list the last axis first: reverse the axis order.
    theta = torch.cat([theta_matrix.flip(1, 2), theta_shift.flip(1)[:, :, None]], dim=2)
    theta = theta.to(device=volume.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(volume.shape), align_corners=True)
    source = volume if volume.is_floating_point() else volume.float()
    warped = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return warped if volume.is_floating_point() else warped.round().to(volume.dtype)


def augment_batch(
    batch: dict[str, object],
    params: AugmentParams,
    generator: torch.Generator,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> dict[str, object]:
    """Return a copy of ``batch`` whose ``fixed``/``moving`` (B, C, X, Y, Z) images and ``fixed_label``/
    ``moving_label`` (if present) are warped by one random transform per sample, the same for all four.

    Other entries are passed through. With identity ``params`` the batch comes back unchanged.
    """
    if params.is_identity:
        return dict(batch)
    images = [batch[k] for k in IMAGE_KEYS]
    matrix, shift = random_affines(images[0].shape[0], params, generator, spacing)  # type: ignore[union-attr]
    out = dict(batch)
    for keys, mode in ((IMAGE_KEYS, "bilinear"), (LABEL_KEYS, "nearest")):
        present = [k for k in keys if k in batch]
        if not present:
            continue
        channels = [batch[k].shape[1] for k in present]  # type: ignore[union-attr]
        warped = apply_affine(torch.cat([batch[k] for k in present], dim=1), matrix, shift, mode)  # type: ignore[misc]
        for key, part in zip(present, torch.split(warped, channels, dim=1)):
            out[key] = part
    return out
