"""The exact ES -> ED motion map of the synthetic cohort (model: :mod:`cvae.data.synthetic`).

Vectorised functions of **heart coordinates** in mm, as the anatomy of :mod:`cvae.data.synthetic_anatomy`:
:func:`es_to_ed` is the backward map ``phi``: an ES point goes to the ED point it came from. The ES frame is the ED
scene evaluated at ``phi(x)``, so labels, image and the ground-truth displacement ``phi(x) - x`` agree exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae.data.synthetic_anatomy import Heart, radii, smoothstep, territory

__all__ = ["FADE_ABOVE_BASE_MM", "FADE_BELOW_APEX_MM", "Motion", "LongitudinalMap", "twist", "ejection",
           "motion_taper", "es_to_ed"]

#: Longitudinal length (mm) over which the motion fades out above the ES base plane.
FADE_ABOVE_BASE_MM = 35.0
#: Length (mm) below the epicardial apex over which longitudinal strain fades to zero.
FADE_BELOW_APEX_MM = 20.0


@dataclass(frozen=True)
class Motion:
    """ED -> ES motion amounts (all scaled by the phase ``alpha`` in [0, 1]; 1 = end-systole).

    ``e0 * m(TH, zeta)`` is the fraction of each slice's ED cavity area that is ejected (``m`` = 1 except in the
    akinetic infarct territory, where ``m = inf_motion``), ``base_descent`` mm of base-to-apex shortening (the base
    plane moves this far towards the apex, the apex stays nearly still), ``twist_base``/``twist_apex`` rad of
    rotation about the long axis, ``rv_shortening`` the fraction of the RV free-wall-to-septum gap that closes.
    """

    e0: float
    inf_motion: float
    base_descent: float
    twist_base: float
    twist_apex: float
    rv_shortening: float



@dataclass(frozen=True)
class LongitudinalMap:
    """Piecewise-linear longitudinal strain ``g(z) = dDz/dz`` in ES heart coordinates and its integral ``Dz``.

    ``g`` is 0 below ``-c_epi - FADE_BELOW_APEX_MM``, ramps to ``kappa`` at the epicardial apex, stays ``kappa`` up to
    the ES base plane ``-d`` (so ``Dz(-d) = d``: the ED base plane), then turns negative above the base so that the
    shift fades back to 0 within ``FADE_ABOVE_BASE_MM``. ``Z = z + Dz(z)``; ``1 + g > 0`` keeps it invertible.
    """

    knots: np.ndarray
    slopes: np.ndarray
    table_z: np.ndarray
    table_dz: np.ndarray

    @classmethod
    def build(cls, descent: float, c_epi: float) -> LongitudinalMap:
        """Strain profile with the base descending ``descent`` mm towards an apex ``c_epi`` mm below the base."""
        d, lb, l1 = descent, FADE_BELOW_APEX_MM, 10.0
        l2 = FADE_ABOVE_BASE_MM - 2 * l1
        kappa = d / (c_epi - d + 0.5 * lb) if d > 0 else 0.0
        g_neg = (d + 0.5 * kappa * l1) / (l1 + l2) if d > 0 else 0.0
        knots = np.array([-c_epi - lb, -c_epi, -d, -d + l1, -d + l1 + l2, -d + 2 * l1 + l2])
        slopes = np.array([0.0, kappa, kappa, -g_neg, -g_neg, 0.0])
        table_z = np.linspace(knots[0] - 1.0, knots[-1] + 1.0, 2048)
        g = np.interp(table_z, knots, slopes)
        table_dz = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(table_z))])
        return cls(knots, slopes, table_z, table_dz)

    def shift(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Longitudinal shift ``Dz(z)`` (mm) and strain ``g(z)`` at ES long-axis positions ``z``."""
        dz = np.interp(z, self.table_z, self.table_dz, left=0.0, right=0.0)
        g = np.interp(z, self.knots, self.slopes)
        return dz.astype(z.dtype, copy=False), g.astype(z.dtype, copy=False)


def twist(z: np.ndarray, descent: float, c_epi: float, m: Motion, alpha: float) -> np.ndarray:
    """Rotation (rad) about the long axis of the ES slice at ``z``: ``twist_apex`` at the apex, ``twist_base`` at the
    base, fading to 0 beyond (piecewise linear)."""
    knots = [-c_epi - FADE_BELOW_APEX_MM, -c_epi, -descent, -descent + FADE_ABOVE_BASE_MM]
    values = [0.0, alpha * m.twist_apex, alpha * m.twist_base, 0.0]
    return np.interp(z, knots, values).astype(z.dtype, copy=False)


def ejection(th: np.ndarray, zeta: np.ndarray, h: Heart, m: Motion) -> np.ndarray:
    """Regional ejected area fraction ``e0 * m(TH, zeta)`` (dimensionless, in [0, 1))."""
    if h.inf_half <= 0:
        return np.full(np.broadcast_shapes(np.shape(th), np.shape(zeta)), m.e0, dtype=np.result_type(th, np.float32))
    return m.e0 * (1.0 - (1.0 - m.inf_motion) * territory(th, zeta, h))


def motion_taper(r: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Weight 1 inside radius ``r0`` (the heart), fading to 0 at ``r1``: tissue far from the heart does not move."""
    return 1.0 - smoothstep((r - r0) / (r1 - r0))


def es_to_ed(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, h: Heart, m: Motion, alpha: float, r0: float, r1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward map ``phi``: heart-frame points at phase ``alpha`` (1 = ES) -> the ED points they came from (mm).

    Composition, from the ES point outwards (all inside the heart, ``r < r0``; faded to identity at ``r1``):

    1. longitudinal: ``Z = z + Dz(z)`` (base descent, :class:`LongitudinalMap`), local strain ``s = 1 / (1 + g)``
       where the heart shortens (``g >= 0``); above the base, where the shift fades back (``g < 0``), ``s = 1`` so
       the atria are not inflated in-plane;
    2. twist: ``TH = th + twist(z)``;
    3. RV: outside the ES epicardium the radial gap to the RV free wall is stretched by ``1 / (1 - f)`` (f =
       ``rv_shortening``), the shift fading to 0 over ``L`` beyond the free wall;
    4. LV: incompressible radial map ``R^2 = s r^2 + K`` with ``K = e Rc(Z, TH)^2``: the endocardium moves inward
       (the ES cavity area is ``(1 - e)`` of ED over the slice's ``s``-scaled height) while the myocardium keeps its
       volume exactly (area ratio ``s`` in-plane times ``1/s`` along the axis). The ES cavity (blood, nothing to
       conserve) is a uniform scaling of the ED cavity, continuous at the endocardium: papillary muscles keep their
       shape instead of being drawn into radial spokes, and ``phi`` stays continuous at the centre.
    """
    dtype = np.result_type(x, z)
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    w = motion_taper(r, r0, r1)
    descent = alpha * m.base_descent
    lmap = LongitudinalMap.build(descent, h.c_epi)
    dz, g = lmap.shift(z)
    big_z = z + w * dz
    s = 1.0 / (1.0 + w * np.maximum(g, 0.0))
    big_th = th + w * twist(z, descent, h.c_epi, m, alpha)
    fade = 1.0 - smoothstep(big_z / FADE_ABOVE_BASE_MM)
    cos_th, sin_th = np.cos(big_th), np.sin(big_th)
    rc, re, gap = radii(big_z, big_th, h, (cos_th, sin_th))
    zeta = np.clip(-big_z / h.c, 0.0, 1.0)
    e = alpha * ejection(big_th, zeta, h, m) * fade
    k = e * rc * rc
    # RV: stretch of the gap between the ES epicardium and the ES RV free wall (radial, in ES coordinates)
    r_epi = np.sqrt(np.maximum(re * re - k, 0.0) / s)
    w_int = np.sqrt(np.maximum((re + gap) ** 2 - k, 0.0) / s) - r_epi
    delta = alpha * m.rv_shortening * w_int * fade
    w_es = w_int - delta
    length = max(25.0, 2.0 * m.rv_shortening * h.rv_w0 * 1.2)
    dd = r - r_epi
    b = np.where(dd < w_es, dd / np.maximum(w_es, 1e-6), 1.0 - smoothstep((dd - w_es) / length))
    r_mid = r + w * delta * np.where(dd > 0, b, 0.0)
    # LV: incompressible radial map in the wall and beyond, uniform scaling inside the ES cavity (blood)
    r_cav = np.sqrt(rc * rc * (1.0 - e) / s)
    big_r = np.where(r_mid >= r_cav, np.sqrt(s * r_mid * r_mid + k), r_mid * np.sqrt(s / (1.0 - e)))
    big_r = r_mid + w * (big_r - r_mid)
    return (big_r * cos_th).astype(dtype), (big_r * sin_th).astype(dtype), big_z.astype(dtype)
