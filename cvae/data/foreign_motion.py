"""Motion of the foreign phantom (:mod:`cvae.data.foreign`): the exact end-systole -> end-diastole pull-back.

The transform is built in the direction the files need, ES point -> ED point (``ES(x) = ED(phi(x))``), in the heart
frame of :mod:`cvae.data.foreign_anatomy`, as three maps applied one after the other. Each is invertible on its
own, so their composition is a diffeomorphism (no folding) by construction:

1. **untwist**: every short-axis level turns by ``-tau(c) g(r)`` about the LV axis (the ED -> ES twist ``tau``
   grows linearly from the base angle to the apex angle, in opposite directions). A rotation per level and radius
   keeps ``r`` and is undone by the opposite rotation.
2. **lift** (longitudinal shortening): ``c_ED = c - D(a, b) l(c) g(r)``; the base descends by ``D`` toward the
   still apex (``l`` falls linearly from 1 at the base to 0 at the apex, and smoothly to 0 above the base over more
   than 2.25 ``D``, so ``dc_ED / dc > 0`` on every column). ``D`` varies linearly across the ventricle (by at most
   +-50 %) and is reduced over an infarct.
3. **radial**: at the level ``c_ED``, ``r_ED^2 = r^2 + K(r, theta)`` with ``K`` non-decreasing inside the heart.
   Where ``K`` is constant the map preserves area: the LV wall keeps its cross-section and thickens as it moves in
   (``K = q_LV r_endo^2``, ``q_LV`` the local fraction of the cavity cross-section ejected, zero in akinetic
   segments); across the RV cavity ``K`` grows by ``q_RV (r_RV^2 - r_epi^2)`` so the free wall moves toward the
   septum. ``K`` rises from 0 on the axis as ``1 - exp(-2 r^2 / r_ES^2)`` (``r_ES`` the ES endocardial radius: a
   uniform scaling of the blood near the axis, 86 % of ``K`` at the endocardium) and fades to 0 beyond the heart
   over a width chosen so that ``r^2 + K`` keeps increasing.

``g(r)`` (1 inside the heart, smoothly 0 beyond ``reach + fade``) confines the motion: outside that cylinder and
beyond its levels ``phi`` is the identity, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae.data.foreign_anatomy import Atlas, Frame, Heart

__all__ = ["Motion", "MAX_LV_FRACTION", "MAX_RV_FRACTION", "pull_back", "support", "es_points", "carry_labels"]

MAX_LV_FRACTION = 0.93
MAX_RV_FRACTION = 0.9
_APEX_FADE_MM = 25.0


@dataclass(frozen=True)
class Motion:
    """Parameters of the ES -> ED pull-back (mm, rad)."""

    lv_gain: float                    # q_LV before regional factors: fraction of the cavity cross-section ejected
    rv_gain: float                    # q_RV: fraction of the RV cross-section ejected
    descent: float                    # D0: base descent toward the apex
    descent_slope: tuple[float, float]  # relative change of D per basal radius along a and b
    twist: tuple[float, float]        # ED -> ES rotation about +c at the base and at the apex
    infarct: tuple[float, float, float, float]  # centre angle, half-width (0: none), first c, residual motion
    reach: float                      # radius where the motion starts fading
    fade: float                       # width of the fading
    atrial_fade: float                # the motion fades above the base over this height


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, C1 cubic between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _radial_window(motion: Motion, r: np.ndarray) -> np.ndarray:
    """g(r): 1 inside ``reach``, 0 beyond ``reach + fade``."""
    return 1.0 - _smoothstep((r - motion.reach) / motion.fade)


def _level_window(heart: Heart, motion: Motion, c: np.ndarray) -> np.ndarray:
    """1 over the ventricle, fading to 0 above the base (``atrial_fade``) and below the apex."""
    return (1.0 - _smoothstep(-c / motion.atrial_fade)) * (1.0 - _smoothstep((c - heart.apex) / _APEX_FADE_MM))


def _infarct_angle(motion: Motion, theta: np.ndarray) -> np.ndarray:
    """Angular weight of the infarct territory in [0, 1]: 1 over the inner half of its half-width, a cos^2 fall to
    0 at its edge; 0 everywhere without an infarct."""
    centre, half, _, _ = motion.infarct
    if half <= 0:
        return np.zeros_like(theta)
    offset = np.abs((theta - centre + np.pi) % (2 * np.pi) - np.pi)
    return np.cos(0.5 * np.pi * np.clip(2.0 * offset / half - 1.0, 0.0, 1.0)) ** 2


def _untwist(heart: Heart, motion: Motion, a: np.ndarray, b: np.ndarray, c: np.ndarray,
             g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map 1: rotate each level by ``-tau(c) g(r)``."""
    base, apex = motion.twist
    tau = _level_window(heart, motion, c) * (base + (apex - base) * np.clip(c / heart.length, 0.0, 1.0)) * g
    cos_k, sin_k = np.cos(tau), np.sin(tau)
    return a * cos_k + b * sin_k, -a * sin_k + b * cos_k


def _lift(heart: Heart, motion: Motion, a: np.ndarray, b: np.ndarray, c: np.ndarray, r: np.ndarray,
          g: np.ndarray) -> np.ndarray:
    """Map 2: ``c_ED = c - D(a, b) l(c) g(r)``."""
    scar = _infarct_angle(motion, np.arctan2(b, a)) * _smoothstep((r - 0.3 * heart.radius) / (0.5 * heart.radius))
    slope_a, slope_b = motion.descent_slope
    tilt = np.clip(1.0 + (slope_a * a + slope_b * b) / heart.radius, 0.5, 1.5)
    descent = motion.descent * tilt * (1.0 - 0.7 * scar)
    above = 1.0 - _smoothstep(-c / motion.atrial_fade)
    along = np.where(c < 0, above, np.clip(1.0 - c / heart.apex, 0.0, 1.0))
    return c - descent * along * g


def _radial(atlas: Atlas, motion: Motion, a: np.ndarray, b: np.ndarray, c: np.ndarray, r: np.ndarray,
            g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map 3: ``r_ED^2 = r^2 + K`` at level ``c`` (already the ED level); 1-D arrays."""
    theta = np.arctan2(b, a)
    endo2, epi2, rv2 = (radius ** 2 for radius in atlas.surfaces(theta, c, which=(0, 1, 2)))
    _, _, first, residual = motion.infarct
    scar = _infarct_angle(motion, theta) * _smoothstep((c - first) / 10.0)
    k_lv = np.clip(motion.lv_gain * (1.0 - (1.0 - residual) * scar), 0.0, MAX_LV_FRACTION) * endo2
    k_rv = min(max(motion.rv_gain, 0.0), MAX_RV_FRACTION) * (rv2 - epi2)
    eps2 = 0.5 * np.maximum(endo2 - k_lv, 4.0)
    r1 = np.sqrt(np.maximum(epi2 - k_lv, 1.0))
    r2 = np.sqrt(np.maximum(rv2 - k_lv - k_rv, r1 ** 2 + 1.0))
    k = k_lv * (1.0 - np.exp(-r * r / eps2)) + k_rv * _smoothstep((r - r1) / (r2 - r1))
    k = k * _level_window(atlas.heart, motion, c) * g
    scale = np.where(r > 1e-9, np.sqrt(1.0 + k / np.maximum(r * r, 1e-12)), 1.0)
    return a * scale, b * scale


def support(heart: Heart, motion: Motion) -> tuple[float, float, float]:
    """The cylinder outside which ``pull_back`` is the identity: (radius, lowest c, highest c), mm."""
    return motion.reach + motion.fade, -motion.atrial_fade, heart.apex + _APEX_FADE_MM


def pull_back(atlas: Atlas, motion: Motion, points: np.ndarray) -> np.ndarray:
    """phi: ES heart-frame points (3, ...) in mm -> the ED points (3, ...) they come from (untwist, lift, radial).

    Points outside :func:`support` are returned unchanged without computation."""
    radius, low, high = support(atlas.heart, motion)
    out = points.copy()
    a, b, c = out.reshape(3, -1)
    r = np.sqrt(a * a + b * b)
    moving = (r < radius) & (c > low) & (c < high)
    a, b, c, r = a[moving], b[moving], c[moving], r[moving]
    g = _radial_window(motion, r)
    a, b = _untwist(atlas.heart, motion, a, b, c, g)
    c = _lift(atlas.heart, motion, a, b, c, r, g)
    a, b = _radial(atlas, motion, a, b, c, r, g)
    out.reshape(3, -1)[:, moving] = np.stack([a, b, c])
    return out


def es_points(atlas: Atlas, motion: Motion, frame: Frame, voxels: np.ndarray) -> np.ndarray:
    """phi in voxel coordinates: ES voxel positions (3, ...) -> the ED voxel positions (3, ...) they come from."""
    heart_points = frame.to_heart(voxels)
    moved = pull_back(atlas, motion, heart_points) - heart_points          # exactly 0 where phi is the identity
    return voxels + frame.heart_steps(moved)


def carry_labels(labels: np.ndarray, points: np.ndarray, offset: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """``labels`` (X, Y, Z) at voxel positions ``points + offset`` (3, ...) by nearest neighbour (``np.rint``),
    indices clamped to the volume: the ES labels are the ED label map carried by ``phi``."""
    index = tuple(np.clip(np.rint(p) + o, 0, n - 1).astype(np.intp) for p, o, n in zip(points, offset, labels.shape))
    return labels[index]
