"""Evaluation metrics of the paper's table, computed the same way for every method.

Overlap and surface distance per structure (Dice, HD95 in mm), intensity RMSE, and regularity of the transform
(fraction of non-positive Jacobian determinants, mean displacement in mm, mean displacement-gradient norm).

Inputs may be numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``); all arithmetic is done in
float64 numpy. Displacements are in **voxel units**, shape ``(3, X, Y, Z)`` or ``(B, 3, X, Y, Z)``, channel i =
component along axis i (see ``docs/DESIGN.md``); ``spacing`` is the voxel size in mm along (X, Y, Z).

Conventions chosen here (the same for every method):

* **Empty structures.** Dice is ``nan`` only when *both* masks are empty (0/0); a structure present in one mask and
  absent from the other gives Dice 0, a real failure that must count in the mean. HD95 is ``nan`` when *either*
  mask is empty (no surface to measure from). Each ``nan`` comes with an :class:`EmptyStructureWarning`.
* **Surface voxels** are the mask minus its erosion by the 3-D *face* (6-) connected structuring element, with the
  outside of the array counted as background: a voxel is on the surface when one of its six face neighbours is
  outside the mask. This is MedPy's default (``connectivity=1``).
* **HD95** pools the distances (mm) from every surface voxel of A to the nearest surface voxel of B and from every
  surface voxel of B to the nearest of A, and takes the 95th percentile with numpy's linear interpolation, as
  MedPy's ``hd95`` does.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from cvae.data.labels import STRUCTURES

__all__ = [
    "EmptyStructureWarning",
    "dice",
    "hd95",
    "structure_scores",
    "mean_scores",
    "mean_dice",
    "rmse",
    "negative_jacobian_fraction",
    "mean_displacement_mm",
    "mean_gradient_norm",
    "case_metrics",
]

class EmptyStructureWarning(UserWarning):
    """A metric is undefined because a structure (or mask) is empty; the metric returns ``nan``."""


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a boolean array; integer/float input must hold only 0 and 1."""
    arr = _to_numpy(x)
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} holds values other than 0/1: pass a boolean mask (structure_scores takes label maps)")
    return arr.astype(bool)


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}; pass arrays of the same shape")


def _spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """Validate a voxel spacing in mm: ``ndim`` finite positive numbers."""
    try:
        values = tuple(float(s) for s in np.ravel(_to_numpy(spacing)))
    except (TypeError, ValueError):
        values = ()
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} finite positive numbers in mm, got {spacing!r}")
    return values


def _field(u: Any, name: str) -> np.ndarray:
    """Return a displacement field as float64 of shape ``(B, 3, X, Y, Z)`` (a single field gets B = 1)."""
    arr = _to_numpy(u)
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (3, X, Y, Z) or (B, 3, X, Y, Z), got {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _squeeze_to_3d(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as an ``(X, Y, Z)`` array, dropping leading size-1 axes such as ``(1, 1, X, Y, Z)``."""
    arr = _to_numpy(x)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be one (X, Y, Z) volume, got shape {_to_numpy(x).shape}")
    return arr


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box of slices holding every ``True`` voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _nan_mean(values: list[float]) -> float:
    """Mean of the finite values, ``nan`` (silently) when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its face-connected erosion, the outside of the array counting as background."""
    face_connectivity = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_connectivity, border_value=0)


def dice(a: Any, b: Any, *, name: str = "mask") -> float:
    """Dice overlap ``2|A ∩ B| / (|A| + |B|)`` of two boolean masks of the same shape (any number of dimensions).

    Returns ``nan`` with an :class:`EmptyStructureWarning` when both masks are empty; 0 when only one is.
    ``name`` only labels the warning (e.g. the structure name).
    """
    a, b = _mask(a, "dice: first mask"), _mask(b, "dice: second mask")
    _same_shape(a, b, "dice")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        message = f"dice undefined: both {name} masks are empty; returning nan"
        warnings.warn(message, EmptyStructureWarning, stacklevel=2)
        return math.nan
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def hd95(a: Any, b: Any, spacing: Sequence[float], *, name: str = "mask") -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the surfaces of two masks.

    ``a`` and ``b`` are boolean masks of the same shape, normally ``(X, Y, Z)``; ``spacing`` gives the voxel size in
    mm along each axis (anisotropic allowed). Surfaces and pooling follow the module docstring (MedPy's convention).
    Returns ``nan`` with an :class:`EmptyStructureWarning` when either mask is empty.

    The distance transforms run only on the bounding box of ``A ∪ B``: every surface voxel of both masks lies in it
    and outside it both masks are background, so the result is exactly that of the full volume.
    """
    a, b = _mask(a, "hd95: first mask"), _mask(b, "hd95: second mask")
    _same_shape(a, b, "hd95")
    sampling = _spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        warnings.warn(f"hd95 undefined: a {name} mask is empty; returning nan", EmptyStructureWarning, stacklevel=2)
        return math.nan
    box = _bounding_box(a | b)
    surface_a, surface_b = _surface(a[box]), _surface(b[box])
    a_to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)[surface_a]
    b_to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)[surface_b]
    return float(np.percentile(np.concatenate([a_to_b, b_to_a]), 95))


def structure_scores(pred_label: Any, ref_label: Any, spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """Dice and HD95 (mm) of the five evaluated structures between a predicted and a reference label map.

    ``pred_label`` and ``ref_label`` are ACDC label maps of shape ``(X, Y, Z)`` (leading size-1 axes, e.g.
    ``(1, 1, X, Y, Z)``, are dropped); ``spacing`` is the voxel size in mm. Returns
    ``{structure: {"dice": float, "hd95": float}}`` with the keys and order of ``labels.STRUCTURES``;
    empty structures give ``nan`` as described in :func:`dice` and :func:`hd95`.
    """
    pred = _squeeze_to_3d(pred_label, "structure_scores: pred_label")
    ref = _squeeze_to_3d(ref_label, "structure_scores: ref_label")
    _same_shape(pred, ref, "structure_scores")
    sampling = _spacing(spacing, 3)
    scores = {}
    for structure, values in STRUCTURES.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        scores[structure] = {"dice": dice(p, r, name=structure), "hd95": hd95(p, r, sampling, name=structure)}
    return scores


def mean_scores(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """The mean over the structures of each metric of :func:`structure_scores` (``{"dice": ..., "hd95": ...}``),
    leaving out the structures where it is ``nan``; ``nan`` when it is ``nan`` for every structure."""
    metrics = dict.fromkeys(key for values in scores.values() for key in values)
    return {key: _nan_mean([values[key] for values in scores.values()]) for key in metrics}


def mean_dice(pred_label: Any, ref_label: Any) -> float:
    """Mean Dice (0-1) over the five structures of two label maps ``(X, Y, Z)``: the score of training's validation.

    As :func:`structure_scores` without the (slower) HD95: structures empty in both maps are left out, with an
    :class:`EmptyStructureWarning` each.
    """
    pred = _squeeze_to_3d(pred_label, "mean_dice: pred_label")
    ref = _squeeze_to_3d(ref_label, "mean_dice: ref_label")
    _same_shape(pred, ref, "mean_dice")
    return _nan_mean([dice(np.isin(pred, values), np.isin(ref, values), name=structure)
                      for structure, values in STRUCTURES.items()])


def rmse(a: Any, b: Any, mask: Any | None = None) -> float:
    """Root-mean-square intensity difference of two images of the same shape (any layout, e.g. ``(B, C, X, Y, Z)``).

    ``mask`` (boolean, broadcastable to the image shape, e.g. ``(X, Y, Z)``) restricts the mean to its voxels;
    an empty mask gives ``nan`` with an :class:`EmptyStructureWarning`.
    """
    a, b = _to_numpy(a).astype(np.float64), _to_numpy(b).astype(np.float64)
    _same_shape(a, b, "rmse")
    squared = (a - b) ** 2
    if mask is None:
        return float(np.sqrt(squared.mean()))
    m = _mask(mask, "rmse: mask")
    try:
        m = np.broadcast_to(m, squared.shape)
    except ValueError:
        raise ValueError(f"rmse: mask shape {m.shape} does not broadcast to image shape {squared.shape}") from None
    if not m.any():
        warnings.warn("rmse undefined: the mask is empty; returning nan", EmptyStructureWarning, stacklevel=2)
        return math.nan
    return float(np.sqrt(squared[m].mean()))


def negative_jacobian_fraction(jacdet: Any) -> float:
    """Fraction (0-1) of voxels whose Jacobian determinant is ``<= 0`` (folding or collapse; zero counts).

    ``jacdet`` has shape ``(X, Y, Z)`` or ``(B, X, Y, Z)``; a batch gives the fraction over all its voxels.
    Non-finite determinants are an error.
    """
    det = _to_numpy(jacdet)
    if det.ndim not in (3, 4):
        raise ValueError(f"jacdet must have shape (X, Y, Z) or (B, X, Y, Z), got {det.shape}")
    if det.size == 0 or not np.isfinite(det).all():
        raise ValueError("jacdet is empty or holds NaN/inf: check the displacement field it was computed from")
    return float(np.count_nonzero(det <= 0) / det.size)


def mean_displacement_mm(u: Any, spacing: Sequence[float]) -> float:
    """Mean Euclidean length in mm of a displacement field given in voxel units.

    ``u`` has shape ``(3, X, Y, Z)`` or ``(B, 3, X, Y, Z)``, channel i along axis i; component i is scaled by
    ``spacing[i]`` (mm) before taking the norm. The mean runs over all voxels (and batch items).
    """
    field = _field(u, "mean_displacement_mm: u")
    scale = np.asarray(_spacing(spacing, 3)).reshape(1, 3, 1, 1, 1)
    return float(np.sqrt(((field * scale) ** 2).sum(axis=1)).mean())


def mean_gradient_norm(u: Any, spacing: Sequence[float]) -> float:
    """Mean Frobenius norm of the displacement gradient ``∂u_i/∂x_j`` with both u and x in mm (dimensionless).

    ``u`` has shape ``(3, X, Y, Z)`` or ``(B, 3, X, Y, Z)`` in voxel units, channel i along axis i. Derivatives use
    ``np.gradient``: central differences inside, one-sided first-order differences on the border voxels, so every
    voxel counts and a linear field ``u(x) = A x`` gives exactly ``||A||_F``. Each spatial axis needs >= 2 voxels.
    """
    field = _field(u, "mean_gradient_norm: u")
    if min(field.shape[2:]) < 2:
        raise ValueError(f"mean_gradient_norm: every spatial axis needs >= 2 voxels, got shape {field.shape}")
    s = np.asarray(_spacing(spacing, 3))
    # np.gradient in voxel steps: grads[j][:, i] = d u_i / d idx_j (voxels per voxel).
    grads = np.gradient(field, axis=(2, 3, 4))
    squared = np.zeros((field.shape[0],) + field.shape[2:])
    for j, grad in enumerate(grads):
        for i in range(3):
            squared += (grad[:, i] * (s[i] / s[j])) ** 2  # d(u_i mm) / d(x_j mm)
    return float(np.sqrt(squared).mean())


def case_metrics(
    *,
    spacing: Sequence[float],
    warped: Any | None = None,
    fixed: Any | None = None,
    warped_label: Any | None = None,
    fixed_label: Any | None = None,
    jacdet: Any | None = None,
    displacement: Any | None = None,
) -> dict[str, float]:
    """All metrics of one registered case as a flat dict (one CSV row); only the groups whose inputs are given.

    * ``warped``, ``fixed`` (images, same shape) -> ``"rmse"``.
    * ``warped_label``, ``fixed_label`` (label maps ``(X, Y, Z)``) -> ``"dice <structure>"``, ``"hd95 <structure>"``
      for each of the five structures, plus ``"dice mean"`` and ``"hd95 mean"`` (mean over the structures that are
      not ``nan``). Dice is a fraction (0-1), HD95 in mm.
    * ``jacdet`` (``(X, Y, Z)``) -> ``"negative jacobian fraction"`` (0-1).
    * ``displacement`` (voxel units, ``(3, X, Y, Z)``) -> ``"mean displacement mm"``, ``"mean gradient norm"``.

    Images and labels are given in pairs (both or neither).
    """
    pairs = ((warped, fixed, "warped/fixed"), (warped_label, fixed_label, "warped_label/fixed_label"))
    for first, second, names in pairs:
        if (first is None) != (second is None):
            raise ValueError(f"case_metrics: give both or neither of {names}")
    row: dict[str, float] = {}
    if warped is not None:
        row["rmse"] = rmse(warped, fixed)
    if warped_label is not None:
        scores = structure_scores(warped_label, fixed_label, spacing)
        means = mean_scores(scores)
        for metric in ("dice", "hd95"):
            for structure, values in scores.items():
                row[f"{metric} {structure}"] = values[metric]
            row[f"{metric} mean"] = means[metric]
    if jacdet is not None:
        row["negative jacobian fraction"] = negative_jacobian_fraction(jacdet)
    if displacement is not None:
        row["mean displacement mm"] = mean_displacement_mm(displacement, spacing)
        row["mean gradient norm"] = mean_gradient_norm(displacement, spacing)
    return row
