"""Diffeomorphic demons baseline (SimpleITK), multi-resolution, on the preprocessed pairs.

The paper's strongest baseline is a diffeomorphic demons registration (Vercauteren et al. 2009). Here it runs through
SimpleITK's ``DiffeomorphicDemonsRegistrationFilter`` on the same preprocessed 128 x 128 x 32 pairs as the CVAE.
The images are given their voxel size (1.5 x 1.5 x 3.15 mm), identity direction and zero origin, so the filter works
in mm and its displacement field is in mm along the array axes; :func:`field_to_voxels` turns it into the project
convention (voxels, channel i along axis i, ``M o (id + u)``: ITK's displacement-field transform also maps a fixed
point x to the moving point x + u(x)).

Multi-resolution: a pyramid of ``BinShrink``-averaged images (block averages, which also low-pass filter), coarse to
fine; each level starts from the previous level's field resampled (linearly, in mm) onto its grid. The default
shrink factors (4, 4, 2), (2, 2, 1), (1, 1, 1) make the two coarse levels nearly isotropic (6 x 6 x 6.3 mm and
3 x 3 x 3.15 mm voxels). ``field_sigma`` is ITK's ``StandardDeviations`` of the Gaussian smoothing of the
displacement field after every iteration (diffusion-like regularisation) and ``update_sigma`` that of the update
field (fluid-like; 0 = off); both are in voxels of the level (ITK sets them "with respect to pixel coordinates").

The defaults (:data:`DEFAULT_PARAMS`: 60/40/20 iterations, ``field_sigma`` 1.0, ``update_sigma`` 2.0) were chosen on
six training pairs of the synthetic cohort as the cheapest setting within 0.001 of the best mean Dice; the tuning
table is in ``benchmarks/RESULTS.md`` (section "Demons parameters"). Smoothing the update field (fluid-like) as well
as the total field helps; below ``field_sigma`` 1 voxel the fields start to fold. Histogram matching is off by
default: fixed and moving are two frames of one subject normalised together
(:func:`cvae.data.preprocess.normalise_intensities`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from cvae.data.grid import DEFAULT_SPACING
from cvae.methods import MethodResult

__all__ = ["DemonsParams", "DEFAULT_PARAMS", "DemonsMethod", "demons_register", "to_sitk", "field_to_voxels",
           "voxels_to_field"]


@dataclass(frozen=True)
class DemonsParams:
    """Multi-resolution diffeomorphic demons settings (coarse level first).

    ``shrink_factors``: per level, the block size (voxels along X, Y, Z) of the down-sampling (clipped so that
    every level keeps >= 4 voxels per axis); ``iterations``: demons iterations per level; ``field_sigma`` and
    ``update_sigma``: Gaussian smoothing (voxels of the level) of the displacement and of the update field (0 = no
    update smoothing); ``max_step``: ITK's ``MaximumUpdateStepLength`` (voxels; 0 = unlimited);
    ``histogram_matching``: match the moving histogram to the fixed one first.
    """

    shrink_factors: tuple[tuple[int, int, int], ...] = ((4, 4, 2), (2, 2, 1), (1, 1, 1))
    iterations: tuple[int, ...] = (60, 40, 20)
    field_sigma: float = 1.0
    update_sigma: float = 2.0
    max_step: float = 2.0
    histogram_matching: bool = False

    def __post_init__(self) -> None:
        if len(self.shrink_factors) != len(self.iterations) or not self.iterations:
            raise ValueError("give one shrink factor triple per level and one iteration count per level")
        if any(len(f) != 3 or min(f) < 1 for f in self.shrink_factors) or min(self.iterations) < 0:
            raise ValueError("shrink factors must be triples of integers >= 1 and iterations >= 0")
        if self.field_sigma <= 0 or self.update_sigma < 0 or self.max_step < 0:
            raise ValueError("need field_sigma > 0, update_sigma >= 0 and max_step >= 0")


#: Chosen by the tuning in the module docstring.
DEFAULT_PARAMS = DemonsParams()


def to_sitk(volume: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """A float32 SimpleITK image of ``volume`` ``(X, Y, Z)``: ``spacing`` mm, zero origin, identity direction.

    (SimpleITK arrays are ``(Z, Y, X)``; the transpose here keeps image index (i, j, k) = ``volume[i, j, k]``.)
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    return image


def field_to_voxels(field: sitk.Image) -> np.ndarray:
    """A SimpleITK displacement field (mm along the axes of an identity-direction image) -> ``(3, X, Y, Z)`` voxels."""
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise ValueError("expected a 3-D displacement field with 3 components per voxel")
    if not np.allclose(field.GetDirection(), np.eye(3).ravel()):
        raise ValueError("the displacement field's image has a rotated direction: resample it to identity first")
    mm = sitk.GetArrayFromImage(field).transpose(3, 2, 1, 0)  # (Z, Y, X, 3) -> (3, X, Y, Z)
    return (mm / np.asarray(field.GetSpacing()).reshape(3, 1, 1, 1)).astype(np.float32)


def voxels_to_field(displacement: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """``(3, X, Y, Z)`` voxels -> SimpleITK vector image (float64, mm), ``spacing`` mm, zero origin, identity."""
    u = np.asarray(displacement, dtype=np.float64)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"displacement must be (3, X, Y, Z) in voxels, got shape {u.shape}")
    mm = u * np.asarray(spacing, dtype=np.float64).reshape(3, 1, 1, 1)
    field = sitk.GetImageFromArray(np.ascontiguousarray(mm.transpose(3, 2, 1, 0)), isVector=True)
    field.SetSpacing([float(s) for s in spacing])
    return field


def _level_factors(factors: Sequence[int], size: Sequence[int]) -> list[int]:
    return [int(max(1, min(f, n // 4))) for f, n in zip(factors, size)]


def demons_register(fixed: np.ndarray, moving: np.ndarray, spacing: Sequence[float] = DEFAULT_SPACING,
                    params: DemonsParams = DEFAULT_PARAMS, threads: int | None = None) -> np.ndarray:
    """Register ``moving`` to ``fixed`` (both ``(X, Y, Z)``, same shape, voxel size ``spacing`` mm).

    Returns the displacement ``(3, X, Y, Z)`` in voxels with ``moving o (id + u) ~ fixed``. ``threads`` limits
    SimpleITK's threads (default: its global default).
    """
    fixed, moving = np.asarray(fixed, dtype=np.float32), np.asarray(moving, dtype=np.float32)
    if fixed.ndim != 3 or fixed.shape != moving.shape:
        raise ValueError(f"fixed and moving must be 3-D volumes of one shape, got {fixed.shape} and {moving.shape}")
    if not (np.isfinite(fixed).all() and np.isfinite(moving).all()):
        raise ValueError("fixed or moving contains NaN or infinite values")
    fixed_image, moving_image = to_sitk(fixed, spacing), to_sitk(moving, spacing)
    if params.histogram_matching:
        moving_image = sitk.HistogramMatching(moving_image, fixed_image, 256, 7, True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetStandardDeviations(params.field_sigma)
    demons.SetSmoothDisplacementField(True)
    demons.SetSmoothUpdateField(params.update_sigma > 0)
    if params.update_sigma > 0:
        demons.SetUpdateFieldStandardDeviations(params.update_sigma)
    demons.SetMaximumUpdateStepLength(params.max_step)
    if threads is not None:
        demons.SetNumberOfThreads(int(threads))
    field = None
    for factors, iterations in zip(params.shrink_factors, params.iterations):
        level = _level_factors(factors, fixed.shape)
        level_fixed = sitk.BinShrink(fixed_image, level) if max(level) > 1 else fixed_image
        level_moving = sitk.BinShrink(moving_image, level) if max(level) > 1 else moving_image
        if field is None:
            field = sitk.Image(level_fixed.GetSize(), sitk.sitkVectorFloat64, 3)
            field.CopyInformation(level_fixed)
        else:
            field = sitk.Resample(field, level_fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        if iterations > 0:
            demons.SetNumberOfIterations(int(iterations))
            field = demons.Execute(level_fixed, level_moving, field)
    if field.GetSize() != fixed_image.GetSize():
        field = sitk.Resample(field, fixed_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    return field_to_voxels(field)


class DemonsMethod:
    """Diffeomorphic demons as an evaluation method (:mod:`cvae.methods` interface); runs on any grid."""

    name = "demons"
    image_size = None
    spacing = None

    def __init__(self, params: DemonsParams = DEFAULT_PARAMS, threads: int | None = None) -> None:
        self.params, self.threads = params, threads

    def register(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]) -> MethodResult:
        start = time.perf_counter()
        u = demons_register(fixed[0, 0].cpu().numpy(), moving[0, 0].cpu().numpy(), spacing, self.params,
                            self.threads)
        return MethodResult(torch.from_numpy(u)[None], time.perf_counter() - start)
