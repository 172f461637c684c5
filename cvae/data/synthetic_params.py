"""Random subject parameters of the synthetic cohort, calibrated so each subject meets its ACDC group definition.

:func:`sample_subject` draws a sex, height, weight, heart rate and clinical *targets* (indexed volumes, ejection
fractions, LV mass for HCM) from the group's ranges in :data:`GROUP_PRIORS`, then solves the geometry for them with a
fine polar quadrature of the analytic shapes of :mod:`cvae.data.synthetic_anatomy`: the cavity size from LVEDV, the
ejected area fraction from LVEF (exact: the ES cavity area of each slice is ``1 - e`` of ED over a height scaled by
``s``), the HCM wall thickness from LV mass, the RV gap width from RVEDV (a quadratic) and the RV shortening from
RVEF (a quadratic in ``1 - f``). The labels then reproduce the targets up to slice discretisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from cvae.data.labels import GROUPS
from cvae.data.synthetic_anatomy import Body, Contrast, Heart, radii
from cvae.data.synthetic_motion import LongitudinalMap, Motion, ejection

Range = tuple[float, float]

#: Uniform ranges per group. lvedvi/rvedvi mL/m^2, lvef/rvef %, wall mm (t0: the mean wall thickness scale),
#: sphericity = cavity length / radius, descent mm of base descent, twist = scale of the normal twist,
#: hr beats/min, systole s; HCM adds lvmi g/m^2 and maxwt mm; MINF adds the akinetic territory.
GROUP_PRIORS: dict[str, dict[str, Range]] = {
    "NOR": dict(lvedvi=(62, 88), lvef=(56, 70), wall=(6.5, 8.5), sphericity=(3.0, 3.6), rvedvi=(60, 86),
                rvef=(50, 64), descent=(10, 15), twist=(0.8, 1.2), hr=(55, 85), systole=(0.30, 0.36)),
    "DCM": dict(lvedvi=(118, 170), lvef=(14, 34), wall=(5.5, 7.5), sphericity=(2.2, 2.8), rvedvi=(60, 100),
                rvef=(30, 50), descent=(3, 7), twist=(0.2, 0.5), hr=(65, 100), systole=(0.34, 0.42)),
    "HCM": dict(lvedvi=(48, 72), lvef=(64, 80), lvmi=(120, 175), maxwt=(17.5, 26), sphericity=(3.0, 3.6),
                rvedvi=(55, 85), rvef=(50, 65), descent=(6, 10), twist=(0.9, 1.3), hr=(55, 80),
                systole=(0.30, 0.36)),
    "MINF": dict(lvedvi=(85, 125), lvef=(18, 36), wall=(7.0, 9.0), thin=(0.4, 0.6), sphericity=(2.6, 3.2),
                 rvedvi=(60, 95), rvef=(40, 58), descent=(3, 7), twist=(0.3, 0.6), hr=(60, 95),
                 systole=(0.33, 0.40)),
    "RV": dict(lvedvi=(58, 85), lvef=(54, 66), wall=(6.5, 8.5), sphericity=(3.0, 3.6), rvedvi=(125, 185),
               rvef=(20, 38), descent=(8, 13), twist=(0.7, 1.1), hr=(60, 90), systole=(0.31, 0.38)),
}

#: Coronary territories for MINF: (centre angle deg, half width deg, zeta range, includes the apex).
TERRITORIES: dict[str, tuple[float, float, tuple[float, float], bool]] = {
    "LAD": (55.0, 65.0, (0.25, 1.0), True),
    "RCA": (-70.0, 50.0, (0.0, 0.8), False),
    "LCx": (175.0, 55.0, (0.0, 0.8), False),
}

_P_MALE = {"NOR": 0.5, "DCM": 0.7, "HCM": 0.65, "MINF": 0.75, "RV": 0.55}
_N_Z, _N_TH = 160, 180


@dataclass(frozen=True)
class Acquisition:
    """Scanner geometry and image formation of one subject.

    ``shape`` (X, Y, Z) voxels with ``spacing`` mm (in-plane isotropic, Z = slice spacing); each slice integrates the
    scene over ``thickness`` mm (sub-slice samples). The heart frame sits at grid-mm ``centre`` (X, Y), rotated by
    ``psi`` rad in-plane, with heart long-axis coordinate ``z_top`` at the centre of slice 0 (slices run base ->
    apex). ``blood`` is the integer blood signal, ``snr`` blood / noise sigma (Rician), ``bias`` the coefficients of
    ``exp(b0 x + b1 y + b2 x^2 + b3 y^2 + b4 x y + b5 z)`` on coordinates normalised to [-1, 1], ``psf`` the in-plane
    Gaussian sigma in pixels, ``affine`` the voxel-to-world matrix written to the NIfTI files.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thickness: float
    centre: tuple[float, float]
    psi: float
    z_top: float
    blood: float
    snr: float
    bias: tuple[float, ...]
    psf: float
    affine: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SubjectParams:
    """Everything that defines one synthetic subject.

    ``reach`` (mm) is the largest in-plane distance of any heart structure from the LV axis; the motion fades from
    ``taper[0]`` to ``taper[1]`` mm. ``targets`` are the sampled clinical values the geometry was solved for.
    """

    group: str
    sex: str
    height_cm: float
    weight_kg: float
    heart_rate: float
    nb_frame: int
    es_frame: int
    heart: Heart
    motion: Motion
    body: Body
    contrast: Contrast
    acquisition: Acquisition
    reach: float
    taper: tuple[float, float]
    targets: dict[str, float]


def _u(rng: np.random.Generator, bounds: Range) -> float:
    """One uniform draw in ``bounds``."""
    return float(rng.uniform(*bounds))


class _Quadrature:
    """Midpoint grid over ED heart coordinates: ``Z`` in (-c_epi, 0) and ``TH`` in (-pi, pi)."""

    def __init__(self, c_epi: float) -> None:
        self.dz = c_epi / _N_Z
        self.dth = 2.0 * np.pi / _N_TH
        self.z = (-(np.arange(_N_Z) + 0.5) * self.dz)[:, None]
        self.th = (-np.pi + (np.arange(_N_TH) + 0.5) * self.dth)[None, :]

    def integral(self, f: np.ndarray) -> float:
        """``sum f dZ dTH`` (mm^3 for an area density ``R^2 / 2``)."""
        return float(np.sum(f) * self.dz * self.dth)


def _lv_volumes(heart: Heart) -> tuple[float, float]:
    """ED LV cavity and myocardium volumes (mL) of ``heart``."""
    q = _Quadrature(heart.c_epi)
    rc, re, _ = radii(q.z, q.th, heart)
    return q.integral(0.5 * rc * rc) / 1000.0, q.integral(0.5 * (re * re - rc * rc)) / 1000.0


def _solve_cavity(heart: Heart, lvedv_ml: float, sphericity: float) -> Heart:
    """Scale the cavity (a0, c = sphericity * a0) so its ED volume is ``lvedv_ml``; the apex cap keeps its size."""
    unit = replace(heart, a0=1.0, c=sphericity, t0=0.0, t_apex=0.0)
    q = _Quadrature(unit.c_epi)
    rc = radii(q.z, q.th, unit)[0]
    a0 = (lvedv_ml * 1000.0 / q.integral(0.5 * rc * rc)) ** (1.0 / 3.0)
    return replace(heart, a0=a0, c=sphericity * a0, rv_c=heart.rv_c / heart.c * sphericity * a0)


def _solve_hcm_wall(heart: Heart, lvm_g: float, max_wt: float) -> Heart:
    """Bisect the base wall thickness ``t0`` (septal bump peak fixed at ``max_wt``) so the LV mass is ``lvm_g``."""
    lo, hi = 6.0, max_wt
    for _ in range(40):
        t0 = 0.5 * (lo + hi)
        trial = replace(heart, t0=t0, hyp_amp=max_wt / t0 - 1.0, t_apex=0.8 * t0)
        if _lv_volumes(trial)[1] * 1.05 < lvm_g:
            lo = t0
        else:
            hi = t0
    t0 = 0.5 * (lo + hi)
    return replace(heart, t0=t0, hyp_amp=max_wt / t0 - 1.0, t_apex=0.8 * t0)


def _solve_rv_width(heart: Heart, rvedv_ml: float) -> Heart:
    """RV gap width ``rv_w0`` (mm) giving an ED RV volume of ``rvedv_ml``: ``V = w A + w^2 B`` solved exactly."""
    q = _Quadrature(heart.c_epi)
    _, re, gap = radii(q.z, q.th, replace(heart, rv_w0=1.0))
    a, b = q.integral(re * gap), q.integral(0.5 * gap * gap)
    v = rvedv_ml * 1000.0
    return replace(heart, rv_w0=(-a + math.sqrt(a * a + 4.0 * b * v)) / (2.0 * b))


def _solve_ejection(heart: Heart, motion: Motion, lvef: float) -> Motion:
    """``e0`` such that the LV ejection fraction is ``lvef`` %: ``EF = e0 <m>`` weighted by the ED cavity area."""
    q = _Quadrature(heart.c_epi)
    rc = radii(q.z, q.th, heart)[0]
    zeta = np.clip(-q.z / heart.c, 0.0, 1.0)
    mean_m = q.integral(ejection(q.th, zeta, heart, replace(motion, e0=1.0)) * rc * rc) / q.integral(rc * rc)
    return replace(motion, e0=min(lvef / 100.0 / mean_m, 0.92))


def _solve_rv_shortening(heart: Heart, motion: Motion, rvef: float) -> Motion:
    """RV shortening ``f`` giving RVEF ``rvef`` %: the ES RV volume is quadratic in ``x = 1 - f``."""
    q = _Quadrature(heart.c_epi)
    rc, re, gap = radii(q.z, q.th, heart)
    zeta = np.clip(-q.z / heart.c, 0.0, 1.0)
    k = ejection(q.th, zeta, heart, motion) * rc * rc
    lmap = LongitudinalMap.build(motion.base_descent, heart.c_epi)
    s = 1.0 / (1.0 + lmap.slopes[1])
    r_epi = np.sqrt(np.maximum(re * re - k, 0.0) / s)
    w_int = np.sqrt(np.maximum((re + gap) ** 2 - k, 0.0) / s) - r_epi
    a, b = q.integral(s * r_epi * w_int), q.integral(0.5 * s * w_int * w_int)
    edv = q.integral(0.5 * ((re + gap) ** 2 - re * re))
    v = (1.0 - rvef / 100.0) * edv
    x = (-a + math.sqrt(a * a + 4.0 * b * v)) / (2.0 * b)
    return replace(motion, rv_shortening=float(np.clip(1.0 - x, 0.0, 0.85)))


def _anthropometry(group: str, rng: np.random.Generator) -> tuple[str, float, float]:
    """Sex, height (cm) and weight (kg), rounded to whole numbers as in ACDC's Info.cfg."""
    sex = "M" if rng.random() < _P_MALE[group] else "F"
    height = float(np.clip(rng.normal(176.0, 7.0) if sex == "M" else rng.normal(163.0, 6.0), 148.0, 198.0))
    bmi = float(np.clip(rng.normal(26.0, 3.5), 19.0, 36.0))
    return sex, float(round(height)), float(round(bmi * (height / 100.0) ** 2))


def _timing(prior: dict[str, Range], rng: np.random.Generator) -> tuple[float, int, int]:
    """Heart rate (bpm), number of cine frames (12-35) and the 1-based ES frame index."""
    hr = _u(rng, prior["hr"])
    rr = 60.0 / hr
    nb = int(np.clip(round(rr / _u(rng, (0.025, 0.055))), 12, 35))
    es = int(np.clip(1 + round(_u(rng, prior["systole"]) / rr * nb), 3, nb - 2))
    return hr, nb, es


def _heart_shape(group: str, prior: dict[str, Range], rng: np.random.Generator) -> Heart:
    """Uncalibrated heart: shape, wall pattern, RV crescent, papillary muscles, fat and atria (sizes set later)."""
    deg = np.deg2rad
    t0 = _u(rng, prior.get("wall", (10.0, 12.0)))
    inf = dict(inf_angle=0.0, inf_half=0.0, inf_zeta=(0.0, 1.0), inf_apex=False, inf_thin=0.0)
    if group == "MINF":
        centre, half, zrange, apex = TERRITORIES[str(rng.choice(list(TERRITORIES)))]
        inf = dict(inf_angle=deg(centre + _u(rng, (-15, 15))), inf_half=deg(half), inf_zeta=zrange, inf_apex=apex,
                   inf_thin=_u(rng, prior["thin"]))
    return Heart(
        a0=25.0, ecc=_u(rng, (0.0, 0.06)), ecc_angle=_u(rng, (-np.pi, np.pi)), c=80.0, p=_u(rng, (2.2, 2.8)),
        t0=t0, harmonics=tuple(_u(rng, (-0.04, 0.04)) for _ in range(4)), taper=_u(rng, (0.1, 0.25)),
        t_apex=0.8 * t0, hyp_amp=0.0, hyp_angle=deg(_u(rng, (-20, 35))), hyp_half=deg(_u(rng, (45, 75))),
        hyp_zeta=_u(rng, (0.55, 0.8)), **inf,
        rv_w0=25.0, rv_angle=deg(_u(rng, (-8, 12))), rv_half_pos=deg(_u(rng, (70, 88))),
        rv_half_neg=deg(_u(rng, (55, 72))), rv_q=_u(rng, (0.45, 0.7)), rv_c=80.0 * _u(rng, (0.75, 0.9)),
        rv_wall=_u(rng, (2.5, 3.5)),
        pap_angles=(deg(_u(rng, (120, 145))), deg(_u(rng, (-150, -120)))), pap_radius=_u(rng, (0.14, 0.2)),
        pap_zeta=(_u(rng, (0.2, 0.35)), _u(rng, (0.75, 0.9))), fat_t=_u(rng, (1.0, 3.0)),
        fat_var=_u(rng, (0.3, 0.7)), fat_angle=_u(rng, (-np.pi, np.pi)),
        la=(0.0,) * 6, ra=(0.0,) * 6, aorta=(0.0,) * 3,
    )


def _place_atria(heart: Heart, rng: np.random.Generator) -> Heart:
    """Left/right atria and aortic root above the base plane, sized with the ventricles."""
    deg = np.deg2rad
    size = heart.a0 + heart.t0
    la_ang, la_d = deg(_u(rng, (-160, -120))), _u(rng, (0.2, 0.5)) * size
    la_r = (_u(rng, (0.55, 0.75)) * size, _u(rng, (0.5, 0.7)) * size, _u(rng, (0.75, 0.95)) * size)
    ra_ang, ra_d = heart.rv_angle - deg(_u(rng, (15, 40))), size + 0.5 * heart.rv_w0
    ra_r = (_u(rng, (0.5, 0.7)) * size, _u(rng, (0.5, 0.7)) * size, _u(rng, (0.7, 0.9)) * size)
    ao_ang, ao_d = deg(_u(rng, (15, 45))), _u(rng, (0.5, 0.75)) * size
    return replace(
        heart,
        la=(la_d * math.cos(la_ang), la_d * math.sin(la_ang), 0.5 * la_r[2], *la_r),
        ra=(ra_d * math.cos(ra_ang), ra_d * math.sin(ra_ang), 0.5 * ra_r[2], *ra_r),
        aorta=(ao_d * math.cos(ao_ang), ao_d * math.sin(ao_ang), _u(rng, (10.0, 14.0))),
    )


def _heart_extent(heart: Heart) -> float:
    """Largest in-plane distance (mm) from the LV axis of any heart or atrial structure."""
    q = _Quadrature(heart.c_epi)
    _, re, gap = radii(q.z, q.th, heart)
    ventricles = float(np.max(re + gap)) + heart.rv_wall + heart.fat_t * (1.0 + heart.fat_var)
    atria = max(math.hypot(cx, cy) + max(rx, ry) + 2.5 for cx, cy, _, rx, ry, _ in (heart.la, heart.ra))
    return max(ventricles, atria, math.hypot(*heart.aorta[:2]) + heart.aorta[2] + 2.0)


def _body(reach: float, sex: str, height: float, weight: float, rng: np.random.Generator) -> Body:
    """Thorax sized by BSA and BMI, the heart (``reach`` mm around the LV axis) behind the chest wall, left of the
    midline."""
    deg = np.deg2rad
    size = math.sqrt(math.sqrt(height * weight / 3600.0) / 1.9)
    bmi = weight / (height / 100.0) ** 2
    b_lr = _u(rng, (150, 175)) * size * (1.05 if sex == "M" else 0.97)
    b_ap = _u(rng, (110, 135)) * size * (bmi / 25.0) ** 0.3
    fat = float(np.clip(_u(rng, (4, 9)) * (bmi / 24.0) ** 2, 3.0, 35.0))
    muscle = _u(rng, (8, 14))
    gamma = deg(_u(rng, (55, 75)))
    inner = fat + muscle
    heart_ap = max(b_ap - inner - reach - _u(rng, (0, 12)), 0.0)
    heart_lr = _u(rng, (20, 40))
    cav_ap = b_ap - inner
    spine_r = _u(rng, (14, 18))
    spine_ap = -cav_ap + spine_r + _u(rng, (4, 10))
    return Body(
        gamma=gamma, heart_pos=(heart_ap, heart_lr), b_ap=b_ap, b_lr=b_lr, fat=fat, muscle=muscle,
        lung_left=(-_u(rng, (0, 15)), 0.55 * b_lr, _u(rng, (0.75, 0.9)) * cav_ap, _u(rng, (0.38, 0.46)) * b_lr),
        lung_right=(-_u(rng, (0, 15)), -0.5 * b_lr, _u(rng, (0.75, 0.9)) * cav_ap, _u(rng, (0.36, 0.44)) * b_lr),
        spine=(spine_ap, _u(rng, (-5, 5)), spine_r),
        aorta=(spine_ap + spine_r + _u(rng, (5, 12)), _u(rng, (15, 28)), _u(rng, (10, 13))),
        liver_angle=deg(_u(rng, (-70, -35))), liver_d=_u(rng, (20, 40)), liver_slope=_u(rng, (1.5, 2.5)),
        liver_curv=1.0 / (2.0 * _u(rng, (80, 140))),
    )


def _contrast(rng: np.random.Generator) -> Contrast:
    """bSSFP-like relative intensities (blood = 1, myocardium about a third)."""
    return Contrast(
        myo=_u(rng, (0.27, 0.37)), fat=_u(rng, (0.75, 0.95)), lung=_u(rng, (0.03, 0.08)), liver=_u(rng, (0.35, 0.5)),
        muscle=_u(rng, (0.25, 0.35)), tissue=_u(rng, (0.28, 0.42)), marrow=_u(rng, (0.45, 0.65)),
        csf=_u(rng, (0.8, 1.0)),
    )


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A proper rotation with the short-axis plane oblique to the scanner axes (as real SA stacks are)."""
    a, b, c = (np.deg2rad(_u(rng, r)) for r in ((-180, 180), (-60, 60), (-45, 45)))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


def _acquisition(heart: Heart, body: Body, rng: np.random.Generator) -> Acquisition:
    """Matrix 216-256, in-plane 1.37-1.68 mm, 6-18 slices 5-10 mm apart covering base to apex, oblique affine."""
    pixel = round(_u(rng, (1.37, 1.68)), 4)
    nx, ny = int(rng.integers(216, 257)), int(rng.integers(216, 257))
    dz = _u(rng, (6.5, 10.0))
    top_frac, bottom = _u(rng, (-0.4, 0.5)), _u(rng, (2.0, 10.0))
    for _ in range(3):
        cover = top_frac * dz + heart.c_epi + bottom
        nz = math.ceil(cover / dz) + 1
        if nz > 18:
            dz = cover / 17.0
        elif nz < 6:
            dz = cover / 5.0
    dz = round(float(np.clip(dz, 5.0, 10.0)), 3)
    nz = int(np.clip(math.ceil((top_frac * dz + heart.c_epi + bottom) / dz) + 1, 6, 18))
    thickness = float(np.clip(dz * _u(rng, (0.7, 1.0)), 5.0, 10.0))
    psi = -0.5 * np.pi - body.gamma + np.deg2rad(_u(rng, (-20, 20)))
    centre = (0.5 * nx * pixel + _u(rng, (-25, 25)), 0.5 * ny * pixel + _u(rng, (-25, 25)))
    affine = np.eye(4)
    affine[:3, :3] = _rotation(rng) @ np.diag([pixel, pixel, dz])
    affine[:3, 3] = rng.uniform(-250.0, 250.0, 3).round(3)
    return Acquisition(
        shape=(nx, ny, nz), spacing=(pixel, pixel, dz), thickness=thickness, centre=centre, psi=float(psi),
        z_top=top_frac * dz, blood=_u(rng, (250.0, 900.0)), snr=_u(rng, (15.0, 60.0)),
        bias=tuple(_u(rng, (-0.2, 0.2)) for _ in range(6)), psf=_u(rng, (0.4, 0.7)), affine=affine,
    )


def sample_subject(group: str, rng: np.random.Generator) -> SubjectParams:
    """Draw one subject of ``group`` (one of ``GROUPS``) from ``rng`` and calibrate its heart to the group targets."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}: use one of {', '.join(GROUPS)}")
    prior = GROUP_PRIORS[group]
    sex, height, weight = _anthropometry(group, rng)
    bsa = math.sqrt(height * weight / 3600.0)
    hr, nb_frame, es_frame = _timing(prior, rng)
    targets = {k: _u(rng, prior[k]) for k in ("lvedvi", "lvef", "rvedvi", "rvef")}
    heart = _solve_cavity(_heart_shape(group, prior, rng), targets["lvedvi"] * bsa, _u(rng, prior["sphericity"]))
    if group == "HCM":
        targets.update(lvmi=_u(rng, prior["lvmi"]), maxwt=_u(rng, prior["maxwt"]))
        heart = _solve_hcm_wall(heart, targets["lvmi"] * bsa, targets["maxwt"])
    heart = _place_atria(_solve_rv_width(heart, targets["rvedvi"] * bsa), rng)
    scale = _u(rng, prior["twist"])
    motion = Motion(
        e0=0.5, inf_motion=_u(rng, (0.0, 0.08)), base_descent=_u(rng, prior["descent"]),
        twist_base=-np.deg2rad(_u(rng, (1.5, 4.0))) * scale, twist_apex=np.deg2rad(_u(rng, (4.0, 9.0))) * scale,
        rv_shortening=0.0,
    )
    motion = _solve_ejection(heart, motion, targets["lvef"])
    motion = _solve_rv_shortening(heart, motion, targets["rvef"])
    extent = _heart_extent(heart)
    body = _body(extent, sex, height, weight, rng)
    return SubjectParams(
        group=group, sex=sex, height_cm=height, weight_kg=weight, heart_rate=hr, nb_frame=nb_frame,
        es_frame=es_frame, heart=heart, motion=motion, body=body, contrast=_contrast(rng),
        acquisition=_acquisition(heart, body, rng), reach=extent, taper=(extent + 5.0, extent + 30.0),
        targets=targets,
    )
