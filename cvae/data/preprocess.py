"""The paper's preprocessing: resample to 1.5 x 1.5 x 3.15 mm, crop/pad 128 x 128 x 32 around the heart, intensities
to [0, 1].

The cropped grid is described by its own affine in the world (mm) coordinates of the input: same axis directions,
axes scaled to the new spacing, origin shifted so that the grid centre sits on the heart. Anything computed on the
crop grid maps back by composing affines (``to_original_grid``). ED and ES of one subject share one crop grid and one
intensity mapping.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cvae.data.acdc import Subject
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING

#: Robust intensity range (percentiles over both frames of a subject) mapped to [0, 1].
INTENSITY_PERCENTILES: tuple[float, float] = (1.0, 99.5)
#: Locating the heart from the images alone (no labels): in-plane smoothing (mm) of |ED - ES|, the fraction of its
#: peak that bounds the moving region, and the radius (mm) around the in-plane centre used along the slice axis.
MOTION_SMOOTHING_MM: float = 10.0
MOTION_THRESHOLD: float = 0.2
HEART_RADIUS_MM: float = 50.0
#: Bump when the output of this module changes, so that on-disk caches are rebuilt.
PREPROCESS_VERSION: str = "1"


@dataclass
class PreprocessedPair:
    """A (fixed = ES, moving = ED) pair on the crop grid.

    ``fixed``/``moving``: float32 ``(X, Y, Z)`` in [0, 1]; labels uint8 ``(X, Y, Z)`` or ``None``. ``affine`` (4, 4)
    maps crop-grid voxels to world mm, ``spacing`` (3,) mm; ``original_affine``/``original_shape`` describe the input
    grid. ``intensity_range`` is the (low, high) input intensity mapped to (0, 1).
    """

    fixed: np.ndarray
    moving: np.ndarray
    fixed_label: np.ndarray | None
    moving_label: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    intensity_range: tuple[float, float]
    subject: str = ""
    group: str = ""


def grid_affine(
    src_affine: np.ndarray, centre_mm: np.ndarray, size: Sequence[int], spacing: Sequence[float]
) -> np.ndarray:
    """Affine (4, 4) of a grid of ``size`` voxels of ``spacing`` mm, axes along ``src_affine``'s, centred on
    ``centre_mm`` (world mm): voxel ``(size - 1) / 2`` maps to ``centre_mm``."""
    src_affine = np.asarray(src_affine, dtype=np.float64)
    directions = src_affine[:3, :3] / np.sqrt((src_affine[:3, :3] ** 2).sum(axis=0))
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = np.asarray(centre_mm, dtype=np.float64) - affine[:3, :3] @ ((np.asarray(size) - 1) / 2.0)
    return affine


def resample_to_grid(
    volume: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    order: int,
    cval: float = 0.0,
) -> np.ndarray:
    """Sample ``volume`` (X, Y, Z) on the grid of voxels ``dst_affine`` (4, 4) x ``dst_shape``.

    Both affines map voxel indices to the same world mm. ``order`` 1 = trilinear (returns float32), 0 = nearest
    (keeps the dtype, for labels). Points outside ``volume`` get ``cval``.
    """
    return _sample(volume, _source_coordinates(src_affine, dst_affine, dst_shape), order, cval)


def _source_coordinates(src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int]) -> np.ndarray:
    """(3, X', Y', Z') voxel coordinates in the source grid of every voxel of the destination grid."""
    to_src = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    shape = tuple(int(n) for n in dst_shape)
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (to_src[:3, :3] @ index + to_src[:3, 3:4]).reshape((3, *shape))


def _sample(volume: np.ndarray, coords: np.ndarray, order: int, cval: float = 0.0) -> np.ndarray:
    """``volume`` (X, Y, Z) at voxel coordinates ``coords`` (3, ...): nearest (order 0) or trilinear (order 1)."""
    if volume.ndim != 3:
        raise ValueError(f"resampling needs a 3-D volume (X, Y, Z), got shape {volume.shape}")
    if order == 0:
        # Nearest by direct indexing: exact, and half-way points resolve the same way everywhere.
        index = np.floor(coords + 0.5).astype(np.int64).reshape(3, -1)
        inside = np.all((index >= 0) & (index < np.asarray(volume.shape)[:, None]), axis=0)
        out = np.full(index.shape[1], cval, dtype=volume.dtype)
        out[inside] = volume[tuple(index[:, inside])]
        return out.reshape(coords.shape[1:])
    if order == 1:
        source = volume.astype(np.float32, copy=False)
        out = ndimage.map_coordinates(source, coords, order=1, mode="constant", cval=cval)
        return out.astype(np.float32, copy=False)
    raise ValueError(f"order must be 0 (nearest, labels) or 1 (linear, images), got {order}")


def to_original_grid(volume: np.ndarray, pair: PreprocessedPair, order: int) -> np.ndarray:
    """Map ``volume`` (X, Y, Z) on ``pair``'s crop grid back to the input grid (``pair.original_shape``).

    ``order`` 1 for intensities, 0 for labels; outside the crop the result is 0.
    """
    if tuple(volume.shape) != tuple(pair.fixed.shape):
        raise ValueError(f"volume shape {tuple(volume.shape)} is not the crop grid's {tuple(pair.fixed.shape)}")
    return resample_to_grid(volume, pair.affine, pair.original_affine, pair.original_shape, order)


def displacement_to_crop_grid(displacement: np.ndarray, pair: PreprocessedPair) -> np.ndarray:
    """A transform given on the input grid, as a displacement on ``pair``'s crop grid.

    ``displacement`` is ``(X0, Y0, Z0, 3)`` in voxels of the input grid (``pair.original_shape``), channel ``i``
    along axis ``i``, with ``F(q) ~ M(q + u(q))`` (the synthetic cohort's exact ``*_gt_displacement.nii.gz``).
    Returns ``(3, X, Y, Z)`` float32 in crop-grid voxels, in the convention of :func:`cvae.fields.warp`: crop voxel
    ``p`` maps to the input point ``q``, which moves to ``q + u(q)`` (trilinear in ``u``, which is extended beyond
    the input grid by its edge values: thick slices leave half a slice of heart beyond the outer slice centres),
    which maps back to crop voxel ``p'``; the result is ``p' - p``.
    """
    shape = tuple(int(n) for n in pair.original_shape)
    if displacement.shape != (*shape, 3):
        raise ValueError(f"displacement must be {(*shape, 3)} (the input grid, 3 components), got "
                         f"{tuple(displacement.shape)}")
    return displacement_to_grid(displacement, pair.original_affine, pair.affine, pair.fixed.shape)


def displacement_to_grid(displacement: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                         dst_shape: Sequence[int]) -> np.ndarray:
    """:func:`displacement_to_crop_grid` for any grids: ``displacement`` ``(X0, Y0, Z0, 3)`` in voxels of the grid
    of ``src_affine`` -> ``(3, *dst_shape)`` float32 in voxels of the grid of ``dst_affine``."""
    shape = displacement.shape[:3]
    if displacement.ndim != 4 or displacement.shape[3] != 3:
        raise ValueError(f"displacement must be (X, Y, Z, 3) on the input grid, got {tuple(displacement.shape)}")
    crop = np.asarray(dst_shape)
    q = _source_coordinates(src_affine, dst_affine, crop)
    edge = np.clip(q, 0, np.asarray(shape, dtype=np.float64).reshape(3, 1, 1, 1) - 1)
    moved = (q + np.stack([_sample(displacement[..., i], edge, order=1) for i in range(3)])).reshape(3, -1)
    to_input = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ dst_affine
    back = np.linalg.solve(to_input[:3, :3], moved - to_input[:3, 3:4]).reshape(3, *crop)
    return (back - np.indices(crop, dtype=np.float64)).astype(np.float32)


def normalise_intensities(
    fixed: np.ndarray, moving: np.ndarray, percentiles: tuple[float, float] = INTENSITY_PERCENTILES
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Map both images with one linear map: the ``percentiles`` of their joint voxels -> 0 and 1, clipped to [0, 1].

    Returns ``(fixed, moving, (low, high))`` with float32 images. Raises ``ValueError`` if the range is empty.
    """
    values = np.concatenate([fixed.ravel(), moving.ravel()])
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        raise ValueError(f"images are constant (all voxels = {low:g}): nothing to register")
    scale = 1.0 / (high - low)

    def to_unit(image: np.ndarray) -> np.ndarray:
        return np.clip((image.astype(np.float32) - low) * scale, 0.0, 1.0).astype(np.float32)

    return to_unit(fixed), to_unit(moving), (low, high)


def heart_centre_voxel(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: Sequence[float],
    fixed_label: np.ndarray | None = None,
    moving_label: np.ndarray | None = None,
) -> np.ndarray:
    """Heart centre (3,) in voxel indices of the input grid; axis 2 is the slice (long) axis.

    With labels: centroid of the union of both frames' foreground. Without: the heart is what moves between the
    frames, so use the frame difference ``|fixed - moving|`` (see ``motion_centre_voxel``); the grid centre if the two
    frames are identical.
    """
    labels = [lab for lab in (fixed_label, moving_label) if lab is not None]
    if labels:
        mask = np.logical_or.reduce([lab > 0 for lab in labels])
        if mask.any():
            return np.argwhere(mask).mean(axis=0)
    return motion_centre_voxel(np.abs(fixed.astype(np.float32) - moving.astype(np.float32)), spacing)


def motion_centre_voxel(motion: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Centre (3,) in voxels of the moving region of ``motion`` (X, Y, Z) = |ED - ES|, slice axis 2.

    In plane: the slice-summed motion, smoothed by ``MOTION_SMOOTHING_MM``, weighted centroid of the connected
    region around its peak above ``MOTION_THRESHOLD`` of the peak. Through plane: the motion-weighted mean slice index,
    counting only motion within ``HEART_RADIUS_MM`` of that point so that vessels and other moving structures do not
    pull it. The grid centre if nothing moves.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    plane = ndimage.gaussian_filter(motion.sum(axis=2), MOTION_SMOOTHING_MM / spacing[:2], mode="constant")
    peak = np.unravel_index(int(np.argmax(plane)), plane.shape)
    if not plane[peak] > 0:
        return (np.asarray(motion.shape, dtype=np.float64) - 1) / 2.0
    regions, _ = ndimage.label(plane >= MOTION_THRESHOLD * plane[peak])
    weights = np.where(regions == regions[peak], plane, 0.0)
    centre_xy = np.argwhere(weights > 0).T @ weights[weights > 0] / weights.sum()
    x, y = np.indices(plane.shape)
    disc = ((x - centre_xy[0]) * spacing[0]) ** 2 + ((y - centre_xy[1]) * spacing[1]) ** 2 < HEART_RADIUS_MM**2
    profile = motion[disc].sum(axis=0)
    centre_z = profile @ np.arange(len(profile)) / profile.sum()
    return np.array([centre_xy[0], centre_xy[1], centre_z])


def preprocess_image_pair(
    fixed: np.ndarray,
    moving: np.ndarray,
    affine: np.ndarray,
    fixed_label: np.ndarray | None = None,
    moving_label: np.ndarray | None = None,
    size: Sequence[int] = DEFAULT_SIZE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    subject: str = "",
    group: str = "",
) -> PreprocessedPair:
    """Preprocess two frames (X, Y, Z) on one grid with voxel-to-world ``affine`` (4, 4).

    Intensities are normalised jointly to [0, 1], then both frames are resampled (linear; labels nearest) to
    ``size`` voxels of ``spacing`` mm centred on the heart (``heart_centre_voxel``), padding with 0.
    Raises ``ValueError`` (one line) for non-3-D or mismatched shapes, NaN/inf values, constant images or labels that
    are not small non-negative integers.
    """
    fixed, moving = np.asarray(fixed), np.asarray(moving)
    _check_inputs(fixed, moving, affine, fixed_label, moving_label, size, spacing)
    affine = np.asarray(affine, dtype=np.float64)
    labels = [None if lab is None else np.asarray(lab).astype(np.uint8) for lab in (fixed_label, moving_label)]
    fixed_n, moving_n, intensity_range = normalise_intensities(fixed, moving)
    in_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    centre_voxel = heart_centre_voxel(fixed_n, moving_n, in_spacing, labels[0], labels[1])
    centre_mm = affine[:3, :3] @ centre_voxel + affine[:3, 3]
    crop_affine = grid_affine(affine, centre_mm, size, spacing)
    coords = _source_coordinates(affine, crop_affine, size)

    def to_crop(volume: np.ndarray | None, order: int) -> np.ndarray | None:
        return None if volume is None else _sample(volume, coords, order)

    return PreprocessedPair(
        fixed=to_crop(fixed_n, 1),  # type: ignore[arg-type]
        moving=to_crop(moving_n, 1),  # type: ignore[arg-type]
        fixed_label=to_crop(labels[0], 0),
        moving_label=to_crop(labels[1], 0),
        affine=crop_affine,
        spacing=np.asarray(spacing, dtype=np.float64),
        original_affine=affine,
        original_shape=tuple(int(n) for n in fixed.shape),  # type: ignore[arg-type]
        intensity_range=intensity_range,
        subject=subject,
        group=group,
    )


def _check_inputs(
    fixed: np.ndarray,
    moving: np.ndarray,
    affine: np.ndarray,
    fixed_label: np.ndarray | None,
    moving_label: np.ndarray | None,
    size: Sequence[int],
    spacing: Sequence[float],
) -> None:
    """One-line ``ValueError`` for anything ``preprocess_image_pair`` cannot work with."""
    if len(size) != 3 or any(int(n) < 1 for n in size):
        raise ValueError(f"size must be 3 positive voxel counts, got {tuple(size)}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive mm values, got {tuple(spacing)}")
    affine = np.asarray(affine)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine must be a finite, invertible 4x4 voxel-to-world matrix")
    for name, image in (("fixed", fixed), ("moving", moving)):
        if image.ndim != 3:
            raise ValueError(f"{name} image must be 3-D (X, Y, Z), got shape {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError(f"{name} image contains NaN or infinite values: clean or mask them first")
        if image.min() == image.max():
            raise ValueError(f"{name} image is constant (all voxels = {image.flat[0]:g}): it holds no image")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed shape {fixed.shape} and moving shape {moving.shape} differ: frames must share a grid")
    for name, label in (("fixed_label", fixed_label), ("moving_label", moving_label)):
        if label is None:
            continue
        label = np.asarray(label)
        if label.shape != fixed.shape:
            raise ValueError(f"{name} shape {label.shape} does not match the image shape {fixed.shape}")
        integral = np.issubdtype(label.dtype, np.integer)
        integral = integral or bool(np.isfinite(label).all() and (label == np.rint(label)).all())
        if not integral or label.min() < 0 or label.max() > 255:
            raise ValueError(f"{name} must hold integer label values in 0..255")


def preprocess_subject(
    subject: Subject, size: Sequence[int] = DEFAULT_SIZE, spacing: Sequence[float] = DEFAULT_SPACING
) -> PreprocessedPair:
    """Preprocess a loaded ACDC subject: fixed = ES frame, moving = ED frame (see ``preprocess_image_pair``)."""
    return preprocess_image_pair(
        subject.es_image,
        subject.ed_image,
        subject.affine,
        fixed_label=subject.es_label,
        moving_label=subject.ed_label,
        size=size,
        spacing=spacing,
        subject=subject.info.subject,
        group=subject.info.group,
    )
