"""The synthetic cohort's whole cardiac cycle: ACDC-like timing and the exact ground truth of every frame.

``cvae synth --cine`` writes, beside the ED and ES files of :mod:`cvae.data.synthetic`::

    patientNNN_4d.nii.gz                   cine, int16 (X, Y, Z, T), pixdim[4] = frame interval (ms)
    patientNNN_4d_gt.nii.gz                exact labels of every frame, uint8 (X, Y, Z, T)          (not in ACDC)
    patientNNN_4d_gt_displacement.nii.gz   exact ED -> frame maps, (X, Y, Z, T, 3) voxels:          (not in ACDC)
                                           frame_t(x) ~ ED(x + u_t(x)); int16 with scl_slope 0.01, so
                                           nibabel's ``get_fdata()`` gives voxels to within 0.005

**Timing** (:func:`cycle_phase`): every motion amount of the ED -> ES map is scaled by a contraction phase ``alpha``
(0 at ED, 1 at ES) and the frame is rendered exactly for that phase, as the ES frame is. Systole is a cosine from
ED (frame 1) to ES; diastole follows the shape of a real volume curve: rapid filling restores 75 % of the stroke
volume in the first 35 % of diastole, diastasis holds it until 75 %, and the atrial kick fills the rest, so the last
frame leads smoothly back into the next cycle's ED.

The side files' format and reader are :mod:`cvae.data.cycle_truth`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["cycle_phase", "render_cycle"]

#: Diastole: fraction of it taken by rapid filling, start of the atrial kick, volume restored by rapid filling.
RAPID_FILLING, ATRIAL_KICK, RAPID_SHARE = 0.35, 0.75, 0.75


def _ease(x: float) -> float:
    """Cosine ease from 0 (x <= 0) to 1 (x >= 1)."""
    return 0.5 * (1.0 - math.cos(math.pi * min(max(x, 0.0), 1.0)))


def cycle_phase(frame: int, nb_frame: int, es_frame: int) -> float:
    """Contraction phase in [0, 1] of 1-based ``frame`` of ``nb_frame`` (0 at ED = frame 1, 1 at ``es_frame``): a
    cosine ejection, then rapid filling, diastasis and the atrial kick (module docstring)."""
    if frame <= es_frame:
        return _ease((frame - 1) / (es_frame - 1))
    s = (frame - es_frame) / (nb_frame + 1 - es_frame)  # diastole, 0 at ES, 1 at the next cycle's ED
    refilled = RAPID_SHARE * _ease(s / RAPID_FILLING) + (1 - RAPID_SHARE) * _ease((s - ATRIAL_KICK) / (1 - ATRIAL_KICK))
    return 1.0 - refilled


def render_cycle(frame: Callable[[float], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                 image: Callable[[np.ndarray, int], np.ndarray], nb_frame: int, es_frame: int,
                 known: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame of the cycle: ``(cine int16 (X, Y, Z, T), labels uint8 (X, Y, Z, T), displacement float32
    (X, Y, Z, T, 3) in voxels)``. ``frame(alpha)`` renders ``(relative intensity, labels, displacement or None at
    ED)``, ``image(relative, t)`` acquires frame ``t``; ``known`` maps frame numbers already acquired to ``(image,
    labels, displacement)`` (ED and ES, so that they are the same arrays as the frame files)."""
    images, labels, fields = [], [], []
    for t in range(1, nb_frame + 1):
        if t in known:
            acquired, label, field = known[t]
        else:
            relative, label, field = frame(cycle_phase(t, nb_frame, es_frame))
            acquired = image(relative, t)
        images.append(acquired)
        labels.append(label)
        fields.append(np.zeros((*label.shape, 3), np.float32) if field is None else field)
    return np.stack(images, axis=-1), np.stack(labels, axis=-1), np.stack(fields, axis=3)
