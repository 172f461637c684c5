"""Clinical measures of the heart computed from ACDC-style label maps.

Labels are integer arrays ``(X, Y, Z)`` with Z the short-axis slice axis and the ACDC values of
:mod:`cvae.data.labels` (1 RV cavity, 2 LV myocardium, 3 LV cavity with the papillary muscles). ``spacing`` is the
voxel size in mm along (X, Y, Z). Units: volumes mL, ejection fractions %, mass g, indexed values per m^2 of body
surface area, wall thickness mm.

Methods (the same for real ACDC labels and the synthetic cohort):

* **Volumes** count voxels times the voxel volume (the usual "sum of slice areas times slice spacing").
* **LV mass** is the ED myocardial volume times 1.05 g/mL.
* **BSA** is Mosteller's ``sqrt(height_cm * weight_kg / 3600)`` m^2.
* **Maximal wall thickness** is measured slice by slice in the short-axis (X, Y) plane, as a clinician does on the
  short-axis stack. In each slice, every myocardial pixel gets ``d_endo + d_epi - pixel``: the 2-D Euclidean distance
  (mm) to the nearest LV-cavity pixel plus the distance to the nearest pixel outside the epicardium (label not in
  {2, 3}). Both distances are measured to pixel *centres* beyond the border, so each overshoots the border by about
  half a pixel; subtracting one pixel size removes that bias. For a ring between two concentric circles the sum is the
  same for every pixel of the ring, the ring's thickness. The myocardium is split into 24 angular sectors about the
  cavity centroid; a sector's thickness is the mean over its pixels (at least 3), which averages away the pixel
  staircase. MaxWT is the largest sector thickness over the slices whose cavity area is at least
  ``min_cavity_fraction`` (default 0.3) of the largest cavity slice: the small apical sections cut the curved apex
  obliquely and would report the apical cap's in-plane extent, not the wall thickness (clinical practice excludes
  them too), and slices without a cavity have no endocardial border to measure from.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cvae.data.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

__all__ = [
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "label_volumes_ml",
    "body_surface_area",
    "max_wall_thickness_mm",
    "clinical_measures",
    "MEASURE_UNITS",
]

#: Density used to turn myocardial volume into LV mass (g/mL).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: Every key returned by :func:`clinical_measures` with its unit.
MEASURE_UNITS: dict[str, str] = {
    "LVEDV": "mL",
    "LVESV": "mL",
    "LVEF": "%",
    "RVEDV": "mL",
    "RVESV": "mL",
    "RVEF": "%",
    "LVM": "g",
    "BSA": "m^2",
    "LVEDVi": "mL/m^2",
    "RVEDVi": "mL/m^2",
    "LVMi": "g/m^2",
    "MaxWT": "mm",
}

_N_SECTORS = 24
_MIN_SECTOR_PIXELS = 3


def _check_label(label: np.ndarray, name: str) -> np.ndarray:
    """``label`` as an integer ``(X, Y, Z)`` array, else ``ValueError``."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (X, Y, Z) label array, got shape {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise ValueError(f"{name} must hold integer label values (0-3), got dtype {label.dtype} with fractions")
        label = label.astype(np.int64)
    return label


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as three positive floats (mm), else ``ValueError``."""
    values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive voxel sizes in mm (X, Y, Z), got {spacing!r}")
    return values  # type: ignore[return-value]


def label_volumes_ml(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes (mL) of the RV cavity (label 1), LV myocardium (2) and LV cavity (3) of one ``(X, Y, Z)`` label map.

    Returns ``{"RV": ..., "LV myocardium": ..., "LV cavity": ...}``; ``spacing`` is the voxel size in mm.
    """
    label = _check_label(label, "label")
    voxel_ml = float(np.prod(_check_spacing(spacing))) / 1000.0
    counts = np.bincount(np.clip(label.ravel(), 0, 4).astype(np.int64), minlength=5)
    return {
        "RV": float(counts[RV_CAVITY]) * voxel_ml,
        "LV myocardium": float(counts[LV_MYOCARDIUM]) * voxel_ml,
        "LV cavity": float(counts[LV_CAVITY]) * voxel_ml,
    }


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Mosteller body surface area ``sqrt(height_cm * weight_kg / 3600)`` in m^2."""
    height, weight = float(height_cm), float(weight_kg)
    if not (math.isfinite(height) and math.isfinite(weight) and height > 0 and weight > 0):
        raise ValueError(f"height and weight must be positive numbers (cm, kg), got {height_cm!r} and {weight_kg!r}")
    return math.sqrt(height * weight / 3600.0)


def _slice_sector_thickness(cavity: np.ndarray, epi: np.ndarray, spacing_xy: tuple[float, float]) -> float:
    """Largest sector-mean wall thickness (mm) of one slice; ``cavity``/``epi`` are 2-D masks, epi = myo or cavity."""
    myo = epi & ~cavity
    if not myo.any():
        return float("nan")
    d_endo = ndimage.distance_transform_edt(~cavity, sampling=spacing_xy)
    d_epi = ndimage.distance_transform_edt(epi, sampling=spacing_xy)
    thickness = (d_endo + d_epi)[myo] - 0.5 * (spacing_xy[0] + spacing_xy[1])
    cx, cy = (np.mean(idx * s) for idx, s in zip(np.nonzero(cavity), spacing_xy))
    px, py = (idx * s for idx, s in zip(np.nonzero(myo), spacing_xy))
    sector = ((np.arctan2(py - cy, px - cx) + np.pi) / (2 * np.pi) * _N_SECTORS).astype(np.int64) % _N_SECTORS
    counts = np.bincount(sector, minlength=_N_SECTORS)
    sums = np.bincount(sector, weights=thickness, minlength=_N_SECTORS)
    valid = counts >= _MIN_SECTOR_PIXELS
    return float(np.max(sums[valid] / counts[valid])) if valid.any() else float("nan")


def max_wall_thickness_mm(label: np.ndarray, spacing: Sequence[float], min_cavity_fraction: float = 0.3) -> float:
    """Maximal LV myocardial wall thickness (mm) of an ``(X, Y, Z)`` label map, measured slice by slice in (X, Y).

    See the module docstring for the method. Returns NaN when no slice has both a cavity and myocardium.
    """
    label = _check_label(label, "label")
    sx, sy, _ = _check_spacing(spacing)
    if not 0.0 <= min_cavity_fraction <= 1.0:
        raise ValueError(f"min_cavity_fraction must be in [0, 1], got {min_cavity_fraction}")
    cavity = label == LV_CAVITY
    epi = cavity | (label == LV_MYOCARDIUM)
    areas = cavity.sum(axis=(0, 1))
    if areas.max(initial=0) == 0:
        return float("nan")
    values = [
        _slice_sector_thickness(cavity[:, :, k], epi[:, :, k], (sx, sy))
        for k in np.flatnonzero(areas >= max(1.0, min_cavity_fraction * areas.max()))
    ]
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else float("nan")


def _ejection_fraction(edv: float, esv: float) -> float:
    """``100 (EDV - ESV) / EDV`` in %, NaN when EDV is not positive or a volume is NaN."""
    return 100.0 * (edv - esv) / edv if edv > 0 and math.isfinite(esv) else float("nan")


def clinical_measures(
    ed_label: np.ndarray | None,
    es_label: np.ndarray | None,
    spacing: Sequence[float],
    height_cm: float | None = None,
    weight_kg: float | None = None,
) -> dict[str, float]:
    """Clinical measures of one subject from its ED and ES label maps ``(X, Y, Z)`` (``spacing`` in mm).

    Returns every key of :data:`MEASURE_UNITS`: LVEDV, LVESV, RVEDV, RVESV (mL), LVEF, RVEF (%), LVM (ED myocardium
    x 1.05 g/mL, g), MaxWT (ED maximal wall thickness, mm) and, when both height (cm) and weight (kg) are given, BSA
    (m^2), LVEDVi, RVEDVi (mL/m^2) and LVMi (g/m^2). A missing label (``None``) or missing height/weight gives NaN for
    the measures that need it; it never raises.
    """
    spacing = _check_spacing(spacing)
    nan = float("nan")
    ed = label_volumes_ml(ed_label, spacing) if ed_label is not None else None
    es = label_volumes_ml(es_label, spacing) if es_label is not None else None
    out = dict.fromkeys(MEASURE_UNITS, nan)
    if ed is not None:
        out.update(LVEDV=ed["LV cavity"], RVEDV=ed["RV"], LVM=ed["LV myocardium"] * MYOCARDIAL_DENSITY_G_PER_ML)
        out["MaxWT"] = max_wall_thickness_mm(ed_label, spacing)
    if es is not None:
        out.update(LVESV=es["LV cavity"], RVESV=es["RV"])
    out["LVEF"] = _ejection_fraction(out["LVEDV"], out["LVESV"])
    out["RVEF"] = _ejection_fraction(out["RVEDV"], out["RVESV"])
    if height_cm is not None and weight_kg is not None:
        bsa = body_surface_area(height_cm, weight_kg)
        out.update(BSA=bsa, LVEDVi=out["LVEDV"] / bsa, RVEDVi=out["RVEDV"] / bsa, LVMi=out["LVM"] / bsa)
    return out
