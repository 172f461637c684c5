"""Analytic ED anatomy of the synthetic cohort (model: :mod:`cvae.data.synthetic`; its motion:
:mod:`cvae.data.synthetic_motion`).

Everything here is a vectorised function of **heart coordinates** in mm: origin on the LV long axis in the ED base
plane, ``Z`` along the long axis (base 0, apex negative), ``(X, Y)`` in the short-axis plane with the polar angle
``TH`` measured from the direction of the RV (septum at 0, anterior wall at +90 deg, lateral wall at 180 deg,
inferior wall at -90 deg). Arrays only need to broadcast against each other; ``float32`` in gives ``float32`` out.

* :func:`ed_scene` evaluates the ED anatomy at any points: tissue codes (:func:`intensity_table` turns them into
  relative bSSFP intensities, blood = 1) and ACDC labels.
* the shape helpers (:func:`radii`, :func:`territory`, ...) that the motion map evaluates as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvae.data.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

#: Width (rad) of the smooth edges of angular windows (territories, hypertrophy).
WINDOW_SOFTNESS = np.deg2rad(30.0)


@dataclass(frozen=True)
class Heart:
    """ED heart shape. Lengths in mm, angles in rad (heart polar angle, 0 = towards the RV).

    LV cavity radius ``Rc(Z, TH) = a(TH) * prof(-Z / c)``, epicardium ``Re = (a + t) * prof(-Z / (c + t_apex))`` with
    ``prof(u) = (1 - u^p)^(1/p)`` (p = 2 is a half prolate ellipsoid, larger p is blunter) and
    ``a(TH) = a0 (1 + ecc cos 2(TH - ecc_angle))``. Wall thickness ``t(TH, zeta)`` (zeta = 0 base, 1 apex) is
    ``t0 * (1 + harmonics) * (1 - taper zeta^2)``, plus an HCM bump ``t0 * hyp_amp`` over an angular window, times
    ``1 - inf_thin`` in an infarct territory. The RV cavity is the gap ``Re <= R < Re + G`` with
    ``G = rv_w0 * prof(-Z / rv_c) * h(TH)``, ``h`` a crescent window ``cos(pi/2 * phi / half)^rv_q`` around
    ``rv_angle`` (``rv_half_pos`` towards anterior, ``rv_half_neg`` towards inferior); its free wall (``rv_wall``) is
    unlabelled myocardium. Epicardial fat of thickness ``fat_t (1 + fat_var cos(TH - fat_angle))`` wraps the heart.
    """

    a0: float
    ecc: float
    ecc_angle: float
    c: float
    p: float
    t0: float
    harmonics: tuple[float, float, float, float]
    taper: float
    t_apex: float
    hyp_amp: float
    hyp_angle: float
    hyp_half: float
    hyp_zeta: float
    inf_angle: float
    inf_half: float
    inf_zeta: tuple[float, float]
    inf_apex: bool
    inf_thin: float
    rv_w0: float
    rv_angle: float
    rv_half_pos: float
    rv_half_neg: float
    rv_q: float
    rv_c: float
    rv_wall: float
    pap_angles: tuple[float, float]
    pap_radius: float
    pap_zeta: tuple[float, float]
    fat_t: float
    fat_var: float
    fat_angle: float
    la: tuple[float, float, float, float, float, float]
    ra: tuple[float, float, float, float, float, float]
    aorta: tuple[float, float, float]

    @property
    def c_epi(self) -> float:
        """Long semi-axis of the epicardium (base to epicardial apex, mm)."""
        return self.c + self.t_apex


@dataclass(frozen=True)
class Body:
    """Thorax around the heart, in body coordinates ``(ap, lr)`` (mm, anterior and patient-left positive).

    Heart point ``(X, Y)`` maps to ``(ap, lr) = heart_pos + M(gamma) (X, Y)``, so the RV points anterior-right and
    the lateral LV wall posterior-left. The body is an ellipse with semi-axes ``(b_ap, b_lr)``: skin and
    subcutaneous fat (``fat``), chest-wall muscle (``muscle``), then the thoracic cavity with mediastinal tissue,
    two lungs (ellipses ``(ap, lr, r_ap, r_lr)``), spine, spinal canal and descending aorta. The liver lies beyond
    the diaphragm: heart-frame points with ``n . q > liver_d + liver_slope (Z + c_epi) + liver_curv (t . q)^2``,
    ``n`` the unit vector at heart angle ``liver_angle``, so it shows in the apical slices and below.
    """

    gamma: float
    heart_pos: tuple[float, float]
    b_ap: float
    b_lr: float
    fat: float
    muscle: float
    lung_left: tuple[float, float, float, float]
    lung_right: tuple[float, float, float, float]
    spine: tuple[float, float, float]
    aorta: tuple[float, float, float]
    liver_angle: float
    liver_d: float
    liver_slope: float
    liver_curv: float


@dataclass(frozen=True)
class Contrast:
    """Relative bSSFP intensities (blood = 1) of the tissue classes."""

    myo: float
    fat: float
    lung: float
    liver: float
    muscle: float
    tissue: float
    marrow: float
    csf: float


# small shape helpers


def smoothstep(t: np.ndarray) -> np.ndarray:
    """``3t^2 - 2t^3`` on ``t`` clipped to [0, 1]: 0 below 0, 1 above 1, C1 in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def wrap(angle: np.ndarray) -> np.ndarray:
    """Angle in [-3 pi, 3 pi) wrapped to [-pi, pi) (differences of two angles in [-pi, pi) are in range)."""
    return np.where(angle >= np.pi, angle - 2.0 * np.pi, np.where(angle < -np.pi, angle + 2.0 * np.pi, angle))


def window(x: np.ndarray, half: float, soft: float) -> np.ndarray:
    """Smooth box: 1 for ``|x| < half - soft/2``, 0 for ``|x| > half + soft/2``."""
    return smoothstep((half + 0.5 * soft - np.abs(x)) / soft)


def profile(u: np.ndarray, p: float) -> np.ndarray:
    """Long-axis radius profile ``(1 - u^p)^(1/p)`` for ``u`` clipped to [0, 1] (1 at the base, 0 at the apex)."""
    return (1.0 - np.clip(u, 0.0, 1.0) ** p) ** (1.0 / p)


def territory(th: np.ndarray, zeta: np.ndarray, h: Heart) -> np.ndarray:
    """Weight in [0, 1] of the infarcted coronary territory (0 everywhere when ``inf_half == 0``)."""
    if h.inf_half <= 0:
        return np.zeros(np.broadcast_shapes(np.shape(th), np.shape(zeta)), dtype=np.result_type(th, np.float32))
    z0, z1 = h.inf_zeta
    weight = window(wrap(th - h.inf_angle), h.inf_half, WINDOW_SOFTNESS) * window(
        zeta - 0.5 * (z0 + z1), 0.5 * (z1 - z0), 0.2
    )
    if h.inf_apex:
        weight = np.maximum(weight, smoothstep((zeta - 0.72) / 0.15))
    return weight


def wall_thickness(
    th: np.ndarray, zeta: np.ndarray, h: Heart, cos_sin: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """ED wall thickness (mm) at heart angle ``th`` and normalised long-axis position ``zeta`` (0 base, 1 apex).

    ``cos_sin`` may pass ``(cos th, sin th)``; the double-angle harmonics are built from them without more trig.
    """
    c, s = cos_sin if cos_sin is not None else (np.cos(th), np.sin(th))
    c1, s1, c2, s2 = h.harmonics
    t = h.t0 * (1.0 + c1 * c + s1 * s + c2 * (2.0 * c * c - 1.0) + s2 * (2.0 * s * c))
    t = t * (1.0 - h.taper * zeta * zeta)
    if h.hyp_amp > 0:
        along = 1.0 - smoothstep((zeta - h.hyp_zeta) / 0.2)
        t = t + h.t0 * h.hyp_amp * window(wrap(th - h.hyp_angle), h.hyp_half, WINDOW_SOFTNESS) * along
    if h.inf_thin > 0:
        t = t * (1.0 - h.inf_thin * territory(th, zeta, h))
    return t


def rv_crescent(th: np.ndarray, h: Heart) -> np.ndarray:
    """Angular profile ``h(TH)`` in [0, 1] of the RV gap: 1 at ``rv_angle``, 0 beyond the insertion points."""
    phi = wrap(th - h.rv_angle)
    half = np.where(phi > 0, h.rv_half_pos, h.rv_half_neg)
    x = np.clip(np.abs(phi) / half, 0.0, 1.0)
    return np.cos(0.5 * np.pi * x) ** h.rv_q


def radii(
    z: np.ndarray, th: np.ndarray, h: Heart, cos_sin: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ED radii (mm) at long-axis ``z`` and angle ``th``: LV cavity ``Rc``, epicardium ``Re`` and RV gap ``G``.

    Above the base plane (``z > 0``) they keep their basal values; callers mask ``z <= 0`` for the anatomy.
    ``cos_sin`` may pass ``(cos th, sin th)`` when the caller has them already.
    """
    c, s = cos_sin if cos_sin is not None else (np.cos(th), np.sin(th))
    u = -z / h.c
    ce, se = np.cos(2.0 * h.ecc_angle), np.sin(2.0 * h.ecc_angle)
    a = h.a0 * (1.0 + h.ecc * ((2.0 * c * c - 1.0) * ce + 2.0 * s * c * se))
    rc = a * profile(u, h.p)
    re = (a + wall_thickness(th, np.clip(u, 0.0, 1.0), h, (c, s))) * profile(-z / h.c_epi, h.p)
    gap = h.rv_w0 * profile(-z / h.rv_c, h.p) * rv_crescent(th, h)
    return rc, re, gap


# ---------------------------------------------------------------------------------------------------------------
# ED scene

#: Tissue codes of the scene; :func:`intensity_table` gives their relative intensities.
AIR, FAT, MUSCLE, TISSUE, LUNG, LIVER, MARROW, CORTEX, CSF, BLOOD, MYO = range(11)
#: Code of "no heart tissue here" in :func:`heart_classes` (the thorax shows through).
NO_TISSUE = np.uint8(255)


def intensity_table(con: Contrast) -> np.ndarray:
    """Relative intensity of every tissue code, float32 (indexed by the codes ``AIR`` ... ``MYO``)."""
    return np.array(
        [0.0, con.fat, con.muscle, con.tissue, con.lung, con.liver, con.marrow, con.lung, con.csf, 1.0, con.myo],
        dtype=np.float32,
    )


def _in_ellipse(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """``(a / ra)^2 + (b / rb)^2 < 1``."""
    return (a / ra) ** 2 + (b / rb) ** 2 < 1.0


def body_classes(x: np.ndarray, y: np.ndarray, z: np.ndarray, h: Heart, body: Body) -> np.ndarray:
    """Tissue codes (uint8) of the thorax (everything but the heart) at heart-frame points ``(x, y, z)`` mm.

    Only the liver depends on ``z``: with ``(x, y)`` and ``z`` on separate axes all other work stays 2-D.
    """
    cg, sg = np.cos(body.gamma), np.sin(body.gamma)
    ap = body.heart_pos[0] + cg * x + sg * y
    lr = body.heart_pos[1] - sg * x + cg * y
    inner = body.fat + body.muscle
    cavity = _in_ellipse(ap, lr, body.b_ap - inner, body.b_lr - inner)
    muscle = _in_ellipse(ap, lr, body.b_ap - body.fat, body.b_lr - body.fat)
    cls = np.where(cavity, TISSUE, np.where(muscle, MUSCLE, np.where(_in_ellipse(ap, lr, body.b_ap, body.b_lr),
                                                                       FAT, AIR))).astype(np.uint8)
    for lap, llr, rap, rlr in (body.lung_left, body.lung_right):
        cls[cavity & _in_ellipse(ap - lap, lr - llr, rap, rlr)] = LUNG
    sap, slr, sr = body.spine
    aap, alr, ar = body.aorta
    d_spine = np.hypot(ap - sap, lr - slr)
    d_canal = np.hypot(ap - (sap - sr - 8.0), lr - slr)
    d_aorta = np.hypot(ap - aap, lr - alr)
    cls[d_spine < sr + 2.0] = CORTEX
    cls[d_spine < sr] = MARROW
    cls[d_canal < 6.0] = CSF
    cls[d_aorta < ar + 2.0] = MUSCLE
    cls[d_aorta < ar] = BLOOD
    n_c, n_s = np.cos(body.liver_angle), np.sin(body.liver_angle)
    tangent = -n_s * x + n_c * y
    depth = n_c * x + n_s * y - body.liver_curv * tangent * tangent - body.liver_slope * h.c_epi - body.liver_d
    depth = np.where(cavity & (d_spine > sr + 6.0) & (d_aorta > ar + 6.0), depth, -np.inf)
    return np.where(depth > body.liver_slope * z, LIVER, cls).astype(np.uint8)


def heart_classes(x: np.ndarray, y: np.ndarray, z: np.ndarray, h: Heart) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes (255 where the heart is absent) and ACDC labels of the heart at broadcastable points (mm)."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    c, s = x / np.maximum(r, 1e-6), y / np.maximum(r, 1e-6)
    rc, re, gap = radii(z, th, h, (c, s))
    below = z <= 0.0
    r_out = re + gap + h.rv_wall * np.minimum(gap / 2.0, 1.0)
    fat_dir = c * np.cos(h.fat_angle) + s * np.sin(h.fat_angle)
    fat_t = h.fat_t * (1.0 + h.fat_var * fat_dir) * profile(-z / (h.c_epi + h.fat_t), h.p)
    cav = below & (r < rc)
    myo = below & ~cav & (r < re)
    rv = below & (r >= re) & (r < re + gap)
    cls = np.full(shape, NO_TISSUE, dtype=np.uint8)
    cls[below & (r < r_out + fat_t)] = FAT
    cls[below & (r < r_out)] = MYO
    cls[cav | rv] = BLOOD
    label = np.zeros(shape, dtype=np.uint8)
    label[rv], label[myo], label[cav] = RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY
    zeta = np.clip(-z / h.c, 0.0, 1.0)
    z0, z1 = h.pap_zeta
    pap_r = h.pap_radius * h.a0 * np.sin(np.pi * np.clip((zeta - z0) / (z1 - z0), 0.0, 1.0))
    cavity_profile = profile(zeta, h.p)
    for angle in h.pap_angles:
        a = h.a0 * (1.0 + h.ecc * math.cos(2.0 * (angle - h.ecc_angle)))
        rho = np.maximum(a * cavity_profile - 0.8 * pap_r, 0.0)
        cls[cav & (np.hypot(x - rho * math.cos(angle), y - rho * math.sin(angle)) < pap_r)] = MYO
    above = z > 0.0
    for cx, cy, cz, rx, ry, rz in (h.la, h.ra):
        e_in = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2
        e_wall = ((x - cx) / (rx + 2.5)) ** 2 + ((y - cy) / (ry + 2.5)) ** 2 + ((z - cz) / (rz + 2.5)) ** 2
        cls[above & (e_wall < 1.0)] = MYO
        cls[above & (e_in < 1.0)] = BLOOD
    ax, ay, ar = h.aorta
    d_ao = np.hypot(x - ax, y - ay)
    cls[above & (z < 45.0) & (d_ao < ar + 2.0)] = MYO
    cls[above & (z < 45.0) & (d_ao < ar)] = BLOOD
    return cls, label


def ed_scene(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, h: Heart, body: Body, reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """ED anatomy at heart-frame points ``(x, y, z)`` (mm, broadcastable): tissue codes and ACDC labels (uint8).

    Labels: 3 LV cavity (papillary muscles included, though they image dark like myocardium), 2 LV myocardium,
    1 RV cavity, 0 elsewhere (RV free wall, atria, fat and thorax are unlabelled). ``reach`` (mm) bounds the heart's
    in-plane distance from the LV axis: farther points are only thorax, which saves evaluating the heart there.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    cls = np.broadcast_to(body_classes(x, y, z, h, body), shape).copy()
    label = np.zeros(shape, dtype=np.uint8)
    near = np.broadcast_to(np.hypot(x, y) < reach, shape)
    if near.any():
        heart_cls, label[near] = heart_classes(*(np.broadcast_to(a, shape)[near] for a in (x, y, z)), h)
        cls[near] = np.where(heart_cls == NO_TISSUE, cls[near], heart_cls)
    return cls, label
