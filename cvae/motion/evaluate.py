"""Measuring tracking and the motion model against the synthetic cohort's exact cycle (``benchmarks/motion_eval.py``).

Per subject with a cine and its truth (:func:`cvae.data.cycle_truth.load_cycle_truth`), on the registration
model's crop grid, over the heart (the ED labels > 0, where the truth is defined by the anatomy):

- **tracking** (ED -> every frame, batched, :func:`cvae.motion.track.track_cine`) and **smoothed tracking** (each
  frame's code averaged with the motion model's prediction of it from all other frames, :func:`smooth_codes`):
  end-point error (mm) over all frames but ED, the ES frame detected from the LV cavity curve, LVEF, and the
  temporal roughness of the LV cavity curve (mean absolute second difference over the cycle, circular, mL);
- **interpolation** with every second frame hidden (ED observed): the motion model's codes decoded, against linear
  and cubic (periodic spline) interpolation in time of the observed frames' tracked displacements
  (:func:`interpolate_fields`): end-point error and image error (RMSE of the warped ED frame against the true frame
  over the dilated heart) on the hidden frames;
- **simulation** from the ED frame alone: the LVEF of ``samples`` simulated cycles.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.interpolate import CubicSpline

from cvae.data.preprocess import displacement_to_grid
from cvae.evaluation.clinical import label_volumes_ml
from cvae.fields import jacobian_determinant, warp
from cvae.model import CVAERegistration
from cvae.motion.cycle import cycle_volumes, decode_cycle, ejection_fraction, interpolate, simulate
from cvae.motion.model import MotionModel
from cvae.motion.track import Tracking

__all__ = ["interpolate_fields", "smooth_codes", "roughness", "endpoint_error_mm", "evaluate_cycle"]


def interpolate_fields(fields: np.ndarray, observed: np.ndarray, kind: str = "linear") -> np.ndarray:
    """Displacements ``(T, 3, X, Y, Z)`` with the frames not ``observed`` ``(T,)`` replaced by ``kind`` ("linear"
    or "cubic", a periodic spline) interpolation in time of the observed ones; the cycle is periodic (period T)."""
    frames = len(fields)
    known = np.flatnonzero(observed)
    if len(known) < 2:
        raise ValueError("interpolation in time needs at least 2 observed frames")
    t = np.append(known, known[0] + frames).astype(np.float64)
    values = np.concatenate([fields[known], fields[known[:1]]])
    hidden = np.flatnonzero(~np.asarray(observed))
    query = np.where(hidden < known[0], hidden + frames, hidden).astype(np.float64)
    out = np.array(fields, dtype=np.float32, copy=True)
    if kind == "linear":
        right = np.searchsorted(t, query)
        w = ((query - t[right - 1]) / (t[right] - t[right - 1])).reshape(-1, 1, 1, 1, 1)
        out[hidden] = (1 - w) * values[right - 1] + w * values[right]
    elif kind == "cubic":
        out[hidden] = CubicSpline(t, values, axis=0, bc_type="periodic")(query)
    else:
        raise ValueError(f"kind must be 'linear' or 'cubic', got {kind!r}")
    return out


def smooth_codes(motion: MotionModel, codes: np.ndarray, ed: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``(T, d)``: each frame's code (but ED's) moved ``weight`` of the way to the motion model's prediction of it
    from all the other frames (leave-one-out interpolation)."""
    out = np.array(codes, dtype=np.float32, copy=True)
    for t in range(1, len(codes)):
        observed = np.ones(len(codes), bool)
        observed[t] = False
        out[t] = (1 - weight) * codes[t] + weight * interpolate(motion, codes, observed, ed)[t]
    return out


def roughness(volumes: np.ndarray) -> float:
    """Mean absolute second difference of a periodic curve ``(T,)`` (its units): spurious oscillation."""
    v = np.asarray(volumes, dtype=np.float64)
    return float(np.abs(np.roll(v, -1) - 2 * v + np.roll(v, 1)).mean())


def endpoint_error_mm(fields: np.ndarray, truth: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(T,)``: mean over ``mask`` ``(X, Y, Z)`` of the distance (mm) between displacements ``(T, 3, X, Y, Z)``
    (voxels of ``spacing`` mm)."""
    diff = (fields - truth)[:, :, mask] * np.asarray(spacing, dtype=np.float32).reshape(1, 3, 1)
    return np.linalg.norm(diff, axis=1).mean(axis=1)


def _image_error(ed: np.ndarray, fields: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(T,)``: RMSE over ``mask`` of the ED crop warped by each field against each true frame (crop grid)."""
    warped = warp(torch.from_numpy(ed)[None, None], torch.from_numpy(fields))[:, 0].numpy()
    return np.sqrt(((warped - frames)[:, mask] ** 2).mean(axis=1))


def evaluate_cycle(registration: CVAERegistration, motion: MotionModel, tracking: Tracking, cine_affine: np.ndarray,
                   ed_label: np.ndarray, truth_labels: np.ndarray, truth_fields: np.ndarray, es_frame: int,
                   spacing: tuple[float, float, float], samples: int = 3, seed: int = 0) -> dict[str, float]:
    """One subject's row (module docstring). ``tracking`` was made with ``keep_fields``; ``ed_label`` ``(X, Y, Z)``,
    ``truth_labels`` ``(X, Y, Z, T)`` and ``truth_fields`` ``(X, Y, Z, T, 3)`` (voxels) are on the cine's grid."""
    frames, shape = tracking.frames, tracking.ed_crop.shape
    crop_label = tracking.crop_labels(ed_label, cine_affine)
    heart = crop_label > 0
    near = ndimage.binary_dilation(heart, iterations=3)
    truth = np.stack([displacement_to_grid(truth_fields[..., t, :], cine_affine, tracking.crop_affine, shape)
                      for t in range(frames)])
    native = np.sqrt((np.asarray(cine_affine)[:3, :3] ** 2).sum(axis=0))
    true_lv = np.array([label_volumes_ml(truth_labels[..., t], native)["LV cavity"] for t in range(frames)])
    row: dict[str, float] = {"frames": frames, "true_LVEF": ejection_fraction(true_lv),
                             "true_roughness_ml": roughness(true_lv),  # the best a crop-grid measure can do:
                             "ceiling_LVEF": ejection_fraction(cycle_volumes(truth, crop_label, spacing)["LV cavity"])}
    smoothed = smooth_codes(motion, tracking.codes, tracking.ed_crop)
    smoothed_fields = decode_cycle(registration, smoothed, tracking.ed_crop)
    for name, fields in (("track", tracking.fields), ("smooth", smoothed_fields)):
        lv = cycle_volumes(fields, crop_label, spacing)["LV cavity"]
        es = int(np.argmin(lv)) + 1
        row[f"{name}_EPE_mm"] = float(endpoint_error_mm(fields, truth, heart, spacing)[1:].mean())
        row[f"{name}_ES_off"] = float(min(abs(es - es_frame), frames - abs(es - es_frame)))
        row[f"{name}_LVEF"] = ejection_fraction(lv)
        row[f"{name}_roughness_ml"] = roughness(lv)
        row[f"{name}_folding_percent"] = float(100 * max((_jacobian_folds(f) for f in fields), default=0))
    observed = np.arange(frames) % 2 == 0
    hidden = ~observed
    model_fields = decode_cycle(registration, interpolate(motion, tracking.codes, observed, tracking.ed_crop),
                                tracking.ed_crop)
    candidates = {"model": model_fields, "linear": interpolate_fields(tracking.fields, observed, "linear"),
                  "cubic": interpolate_fields(tracking.fields, observed, "cubic"), "pairwise": tracking.fields}
    for name, fields in candidates.items():
        row[f"interp_{name}_EPE_mm"] = float(endpoint_error_mm(fields, truth, heart, spacing)[hidden].mean())
        row[f"interp_{name}_image_rmse"] = float(_image_error(tracking.ed_crop, fields[hidden],
                                                              tracking.crop_frames[hidden], near).mean())
    simulated = simulate(motion, registration, tracking.ed_crop, frames, samples, seed)
    sim_ef = [ejection_fraction(cycle_volumes(decode_cycle(registration, codes, tracking.ed_crop), crop_label,
                                              spacing)["LV cavity"]) for codes in simulated]
    row.update(simulated_LVEF=float(np.mean(sim_ef)), simulated_LVEF_min=float(np.min(sim_ef)),
               simulated_LVEF_max=float(np.max(sim_ef)))
    return row


def _jacobian_folds(field: np.ndarray) -> float:
    """Fraction of voxels with det J <= 0 of one displacement ``(3, X, Y, Z)``."""
    return float((jacobian_determinant(torch.from_numpy(field)[None]) <= 0).float().mean())
