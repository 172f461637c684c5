"""Subjects of the foreign phantom (:mod:`cvae.data.foreign`): drawn per ACDC group, then fitted to their targets.

A subject is drawn in this order: body size (sex, height, weight: Mosteller BSA), the group's targets (indexed
volumes, ejection fractions, wall thickness, long-axis descent, twist), the heart's shape, the voxel grid and where
the heart sits on it (:mod:`cvae.data.foreign_scan`), the motion. Two fits then make the group hold by construction:

* **ED volumes**: the cavity scales with ``R0^2``, so ``R0`` is solved exactly from a quadrature of the contours at
  the slice centres; the RV volume is quadratic in its width ``W0``; for HCM the thickness of the non-hypertrophied
  segments is bisected for the mass. Counting the labels of every fourth voxel then corrects the pixel and tilt
  errors before the label maps are made.
* **ES volumes**: the LV and RV gains of the radial motion are solved by the secant method on the ejection fractions
  counted on the ES labels (every fourth voxel first, then all).

The result is measured with :func:`cvae.evaluation.clinical.clinical_measures` on the very label maps that are
written, and checked against ACDC's definition of the group with a margin (:func:`meets_definition`); a subject that
misses is drawn again from the same random stream (rare), so a subject stays a function of its seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cvae.data.foreign_anatomy import Body, Contours, Frame, Heart, contours, labels_at, tabulate
from cvae.data.foreign_motion import MAX_LV_FRACTION, MAX_RV_FRACTION, Motion, carry_labels, es_points
from cvae.data.foreign_scan import draw_body, draw_grid, local_frame, place_heart, random_rotation
from cvae.evaluation.clinical import MYOCARDIAL_DENSITY_G_PER_ML, body_surface_area, clinical_measures

__all__ = ["TARGETS", "Design", "draw_design", "meets_definition"]

#: Uniform ranges drawn per group: indexed volumes (mL/m^2), ejection fractions (%), wall thickness (mm), base
#: descent (mm), apical twist (deg). HCM adds hypertrophied segments and an LV mass index target (g/m^2).
TARGETS: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": dict(lvedvi=(62, 92), lvef=(57, 70), rvedvi=(62, 92), rvef=(50, 64), wall=(6.5, 9.0), descent=(10, 16),
                twist=(8, 16)),
    "DCM": dict(lvedvi=(115, 165), lvef=(14, 34), rvedvi=(70, 98), rvef=(30, 50), wall=(5.0, 7.5), descent=(4, 8),
                twist=(2, 6)),
    "HCM": dict(lvedvi=(55, 85), lvef=(62, 76), rvedvi=(55, 85), rvef=(50, 66), wall=(9.0, 12.0), descent=(6, 12),
                twist=(10, 18), lvmi=(118, 165), hypertrophy=(17, 25)),
    "MINF": dict(lvedvi=(85, 130), lvef=(26, 37), rvedvi=(60, 95), rvef=(38, 55), wall=(7.0, 10.0), descent=(5, 10),
                 twist=(3, 8)),
    "RV": dict(lvedvi=(60, 92), lvef=(53, 65), rvedvi=(120, 170), rvef=(22, 42), wall=(6.5, 9.0), descent=(8, 14),
               twist=(6, 14)),
}
_LENGTH_MM = {"NOR": (68, 85), "DCM": (85, 105), "HCM": (62, 78), "MINF": (78, 95), "RV": (70, 86)}
_ATTEMPTS = 40
#: The fits first count every ``_COARSE``-th voxel of the window.
_COARSE = 4


@dataclass(frozen=True)
class Design:
    """Everything a subject is made of, except its contrast and noise.

    ``frame`` places the heart on the full ``shape`` grid of ``spacing`` mm; ``affine`` (4, 4) maps its voxels to
    world mm. ``ed_labels``/``es_labels`` (uint8, ``(W, W, Z)``) are the label maps of the window of the grid that
    starts at pixel ``corner`` (the heart lies inside it); they meet the group's definition.
    """

    group: str
    height: float
    weight: float
    nb_frame: int
    es_frame: int
    heart: Heart
    motion: Motion
    body: Body
    frame: Frame
    shape: tuple[int, int, int]
    affine: np.ndarray
    corner: tuple[int, int]
    ed_labels: np.ndarray
    es_labels: np.ndarray


def meets_definition(group: str, m: dict[str, float]) -> bool:
    """Whether clinical measures ``m`` satisfy ACDC's definition of ``group`` with a safety margin."""
    normal_rv = m["RVEDVi"] < 100 and m["RVEF"] > 40
    rules = {
        "NOR": m["LVEF"] > 52 and m["MaxWT"] < 11.5 and m["LVEDVi"] < 100 and normal_rv,
        "DCM": m["LVEDVi"] > 104 and m["LVEF"] < 38,
        "HCM": m["LVMi"] > 114 and m["MaxWT"] > 15.5 and m["LVEF"] > 58 and m["LVEDVi"] < 100,
        "MINF": m["LVEF"] < 38,
        "RV": m["RVEDVi"] > 113 and m["RVEF"] < 45 and m["LVEF"] > 50 and m["LVEDVi"] < 100,
    }
    return rules[group]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A uniform draw in ``bounds`` as a Python float."""
    return float(rng.uniform(*bounds))


def _body_size(rng: np.random.Generator) -> tuple[float, float]:
    """(height cm, weight kg), rounded as Info.cfg holds them."""
    male = rng.random() < 0.5
    height = rng.uniform(165, 192) if male else rng.uniform(152, 178)
    bmi = rng.uniform(20, 31) if male else rng.uniform(19, 31)
    return float(round(height)), float(round(bmi * (height / 100) ** 2))


def _wall_table(rng: np.random.Generator, group: str,
                goal: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(3, 6) wall thickness (mm) and a mask of the hypertrophied (HCM) segments, which the mass fit leaves alone."""
    base = _uniform(rng, goal["wall"])
    table = base * rng.uniform(0.9, 1.1, (3, 6)) * np.array([[1.0], [rng.uniform(0.92, 1.0)], [rng.uniform(0.75, 0.9)]])
    hypertrophy = np.zeros((3, 6), bool)
    if group == "HCM":
        first, count = int(rng.integers(-1, 2)) % 6, int(rng.integers(1, 4))
        sectors = [(first + k) % 6 for k in range(count)]
        levels = [0, 1] if rng.random() < 0.7 else [0, 1, 2]
        hypertrophy[np.ix_(levels, sectors)] = True
        table[hypertrophy] = rng.uniform(*goal["hypertrophy"], size=int(hypertrophy.sum()))
    return table, hypertrophy


def _draw_heart(rng: np.random.Generator, group: str, bsa: float) -> tuple[Heart, np.ndarray]:
    """A heart of ``group`` before its volumes are solved (R0 and W0 provisional) and its hypertrophy mask."""
    goal = TARGETS[group]
    wall, hypertrophy = _wall_table(rng, group, goal)
    length = _uniform(rng, _LENGTH_MM[group]) * math.sqrt(bsa / 1.85)
    top = rng.uniform(0.25, 0.45) * length
    papillary = np.array([[rng.uniform(2.4, 2.8), rng.uniform(3.0, 5.0), top, top + rng.uniform(0.35, 0.5) * length],
                          [rng.uniform(3.6, 4.0), rng.uniform(3.0, 5.0), top, top + rng.uniform(0.35, 0.5) * length]])
    heart = Heart(
        radius=25.0, length=length, taper=(rng.uniform(1.8, 3.2), rng.uniform(0.35, 0.6)),
        shape_base=rng.normal(0, 1, (3, 2)) * np.array([[0.035], [0.02], [0.012]]),
        shape_apex=rng.normal(0, 1, (3, 2)) * np.array([[0.05], [0.025], [0.015]]),
        wall=wall, apex_wall=float(wall[2].mean() * rng.uniform(0.6, 0.9)), rv_width=20.0,
        rv_span=(math.radians(rng.uniform(55, 95)), math.radians(rng.uniform(55, 95))),
        rv_power=rng.uniform(0.6, 1.4), rv_length=rng.uniform(0.65, 0.85) * length, rv_wall=rng.uniform(2.5, 4.0),
        fat=rng.uniform(3.0, 8.0), fat_angle=rng.uniform(-math.pi, math.pi), papillary=papillary,
    )
    return heart, hypertrophy


def _infarct(rng: np.random.Generator, heart: Heart) -> tuple[Heart, tuple[float, float, float, float]]:
    """An infarct territory (angle, half-width, first c, residual motion) and the thinned ED wall over it."""
    centre, half = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(60, 90))
    first = rng.uniform(0.0, 0.25) * heart.length
    sectors = np.abs(np.angle(np.exp(1j * (np.arange(6) * math.pi / 3 - centre)))) < half
    levels = np.array([0.15, 0.5, 0.85]) * heart.length > first - 10
    wall = heart.wall.copy()
    wall[np.ix_(levels, sectors)] *= rng.uniform(0.5, 0.7)
    return replace(heart, wall=wall), (centre, half, first, rng.uniform(0.0, 0.08))


def _slice_levels(step: float, apex: float) -> np.ndarray:
    """w (mm) of the slice centres from one slice above the base to the apex."""
    return np.arange(-0.5 * step, apex, step)


def _sections(heart: Heart, levels: np.ndarray) -> tuple[Contours, np.ndarray, float]:
    """The contours at 96 angles x the slice centres ``levels``, the heights (96, n) and the weight (mm^2 per
    sample) that turns a sum of ``r^2`` into the area of a section (``sum r^2 dtheta / 2``)."""
    theta, c = np.meshgrid(np.linspace(-math.pi, math.pi, 96, endpoint=False), levels, indexing="ij")
    return contours(heart, np.cos(theta), np.sin(theta), c), c, math.pi / theta.shape[0]


def _quadrature(heart: Heart, levels: np.ndarray, step: float) -> dict[str, float]:
    """Approximate ED volumes (mL) of the LV cavity and myocardium from the sections at the slice centres
    ``levels`` (tilt and pixels ignored)."""
    s, c, weight = _sections(heart, levels)
    below = c > 0
    return {"lv": float((s.endo ** 2)[below].sum()) * weight * step / 1000.0,
            "myo": float((s.epi ** 2 - s.endo ** 2)[below].sum()) * weight * step / 1000.0}


def _rv_width(heart: Heart, levels: np.ndarray, step: float, rv_cut: float, volume: float) -> float:
    """W0 giving the RV cavity ``volume`` (mL) in the quadrature: with ``r_RV = r_epi + W0 f`` the volume is the
    quadratic ``A W0^2 + B W0``."""
    s, c, weight = _sections(replace(heart, rv_width=1.0), levels)
    f, inside = s.rv - s.epi, c > rv_cut
    scale = weight * step / 1000.0
    a, b = float((f * f)[inside].sum()) * scale, float((2 * s.epi * f)[inside].sum()) * scale
    return (-b + math.sqrt(b * b + 4 * a * volume)) / (2 * a)


def _bisect(value: Callable[[float], float], target: float, low: float, high: float) -> float:
    """x in [low, high] with value(x) = target for an increasing ``value`` (20 halvings)."""
    for _ in range(20):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if value(middle) < target else (low, middle)
    return 0.5 * (low + high)


def _scale_walls(heart: Heart, hypertrophy: np.ndarray, factor: float) -> Heart:
    """``heart`` with the segments outside ``hypertrophy`` (3, 6) thickened by ``factor``."""
    return replace(heart, wall=np.where(hypertrophy, heart.wall, heart.wall * factor))


def _solve_volumes(heart: Heart, hypertrophy: np.ndarray, goal: dict[str, float], levels: np.ndarray, step: float,
                   rv_cut: float) -> Heart:
    """R0, W0 (and HCM walls) from the quadrature: the LV cavity scales with R0^2, the RV is quadratic in W0, the
    HCM mass is solved by bisection."""
    heart = replace(heart, radius=heart.radius * math.sqrt(goal["lv"] / _quadrature(heart, levels, step)["lv"]))
    if "myo" in goal:
        factor = _bisect(lambda f: _quadrature(_scale_walls(heart, hypertrophy, f), levels, step)["myo"],
                         goal["myo"], 0.8, 1.8)
        heart = _scale_walls(heart, hypertrophy, factor)
    return replace(heart, rv_width=_rv_width(heart, levels, step, rv_cut, goal["rv"]))


def _counts(labels: np.ndarray, voxel_ml: float) -> np.ndarray:
    """mL of labels 0-3."""
    return np.bincount(labels.ravel(), minlength=4)[:4] * voxel_ml


def _fit_ed(heart: Heart, hypertrophy: np.ndarray, goal: dict[str, float], frame: Frame, voxels: np.ndarray,
            voxel_ml: float) -> tuple[Heart, np.ndarray]:
    """Correct R0, W0 (and HCM walls) on ED labels counted at every ``_COARSE``-th voxel, then label all
    ``voxels`` (3, N), the voxels that can hold the heart; returns the heart and those labels."""
    for _ in range(3):
        volume = _counts(labels_at(tabulate(heart), frame, voxels[:, ::_COARSE]), voxel_ml * _COARSE)
        ratio = {"lv": goal["lv"] / float(volume[3]), "rv": goal["rv"] / float(volume[1])}
        if "myo" in goal:
            ratio["myo"] = goal["myo"] / float(volume[2])
        if all(abs(r - 1) < 0.02 for r in ratio.values()):
            break
        heart = replace(heart, radius=heart.radius * math.sqrt(ratio["lv"]), rv_width=heart.rv_width * ratio["rv"])
        if "myo" in goal:
            heart = _scale_walls(heart, hypertrophy, ratio["myo"])
    return heart, labels_at(tabulate(heart), frame, voxels)


def _fit_es(heart: Heart, motion: Motion, frame: Frame, voxels: np.ndarray, ed_window: np.ndarray,
            goal: np.ndarray) -> tuple[Motion, np.ndarray]:
    """Secant on (LV gain, RV gain) for the ejection fractions ``goal`` (2,) in %, on every ``_COARSE``-th voxel
    until close, then on all ``voxels`` (3, N) of the window (ES hearts lie within the ED heart's radius: the
    motion only pulls inward). ``ed_window`` (W, W, Z) is the ED label map of the window, whose pixel (0, 0) is
    voxel (-(W - 1) / 2, -(W - 1) / 2); returns the motion and the ES labels at ``voxels``."""
    atlas, stride = tabulate(heart), _COARSE
    offset = ((ed_window.shape[0] - 1) // 2, (ed_window.shape[1] - 1) // 2, 0)
    gains = np.clip((goal / 100.0 - np.array([0.1, 0.05])) / 0.9, 0.05, 0.85)
    slope, last = np.array([85.0, 90.0]), None

    def carried(points: np.ndarray) -> np.ndarray:
        return carry_labels(ed_window, es_points(atlas, motion, frame, points), offset)

    for attempt in range(8):
        motion = replace(motion, lv_gain=float(gains[0]), rv_gain=float(gains[1]))
        labels = carried(voxels[:, ::stride])
        ed = np.bincount(carry_labels(ed_window, voxels[:, ::stride], offset), minlength=4)[[3, 1]]
        ef = 100.0 * (1.0 - np.bincount(labels, minlength=4)[[3, 1]] / ed)
        error = goal - ef
        if stride == 1 and (attempt == 7 or np.all(np.abs(error) < [2.0, 3.0])):
            return motion, labels
        if np.all(np.abs(error) < [0.8, 1.5]):
            stride = 1
            continue
        if last is not None:
            secant = (ef - last[1]) / np.where(np.abs(gains - last[0]) > 1e-6, gains - last[0], np.inf)
            slope = np.where(secant > 10.0, secant, slope)
        last = (gains, ef)
        gains = np.clip(gains + error / slope, 0.0, [MAX_LV_FRACTION, MAX_RV_FRACTION])
    motion = replace(motion, lv_gain=float(gains[0]), rv_gain=float(gains[1]))
    return motion, carried(voxels)


def _survey(heart: Heart) -> Contours:
    """The contours on a grid of 72 angles x 48 levels from 30 mm above the base to the apex."""
    theta, c = np.meshgrid(np.linspace(-math.pi, math.pi, 72), np.linspace(-30, heart.apex, 48), indexing="ij")
    return contours(heart, np.cos(theta), np.sin(theta), c)


def _extent(heart: Heart) -> dict[str, float]:
    """Largest radii (mm) of the labelled heart and of the heart zone."""
    s = _survey(heart)
    return {"labels": float(s.rv_wall.max()), "outer": float(s.outer.max())}


def _draw_motion(rng: np.random.Generator, group: str, heart: Heart, extent: dict[str, float],
                 infarct: tuple[float, float, float, float]) -> Motion:
    """The group's motion with provisional gains (``_fit_es`` solves them, :func:`_fade` sets the fade after)."""
    goal = TARGETS[group]
    descent = _uniform(rng, goal["descent"])
    return Motion(lv_gain=0.5, rv_gain=0.5, descent=descent,
                  descent_slope=(rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25)),
                  twist=(-math.radians(rng.uniform(2, 6)), math.radians(_uniform(rng, goal["twist"]))),
                  infarct=infarct, reach=extent["labels"] + 2.0, fade=20.0, atrial_fade=2.5 * 1.3 * descent + 15.0)


def _fade(heart: Heart, motion: Motion) -> Motion:
    """The narrowest fade (>= 20 mm) that keeps ``r^2 + K g(r)`` increasing: ``fade > 0.75 K_max / reach`` (the
    smoothstep's slope is at most 1.5 / fade). It acts beyond ``reach``, where no label lies, so the fitted labels
    stay exact."""
    s = _survey(heart)
    k = (min(motion.lv_gain, MAX_LV_FRACTION) * s.endo ** 2 + min(motion.rv_gain, MAX_RV_FRACTION)
         * (s.rv ** 2 - s.epi ** 2))
    return replace(motion, fade=max(20.0, 0.8 * float(k.max()) / motion.reach))


def _targets(rng: np.random.Generator, group: str, bsa: float) -> tuple[dict[str, float], np.ndarray]:
    """ED volumes (mL: LV cavity, RV cavity, HCM myocardium) and the (LVEF, RVEF) goal (%) of a subject."""
    goal = TARGETS[group]
    volumes = {"lv": _uniform(rng, goal["lvedvi"]) * bsa, "rv": _uniform(rng, goal["rvedvi"]) * bsa}
    if "lvmi" in goal:
        volumes["myo"] = _uniform(rng, goal["lvmi"]) * bsa / MYOCARDIAL_DENSITY_G_PER_ML
    return volumes, np.array([_uniform(rng, goal["lvef"]), _uniform(rng, goal["rvef"])])


def _window(frame: Frame, heart: Heart, radius: float, nz: int) -> tuple[np.ndarray, np.ndarray]:
    """The label window around the heart's axis: voxel coordinates (3, W, W, Z) relative to the axis pixel and the
    mask of those within ``radius`` (mm) of the axis, in the heart frame."""
    half = math.ceil((radius + heart.apex * frame.lean + 1.0) / float(frame.spacing[0]))
    window = np.indices((2 * half + 1, 2 * half + 1, nz), dtype=np.float32)
    window[:2] -= half
    axis = frame.to_heart(window)[:2]
    return window, (axis ** 2).sum(axis=0) < radius ** 2


def _attempt(rng: np.random.Generator, group: str) -> Design | None:
    """One draw of a subject of ``group``; ``None`` when it misses the group's definition."""
    height, weight = _body_size(rng)
    bsa = body_surface_area(height, weight)
    heart, hypertrophy = _draw_heart(rng, group, bsa)
    infarct = (0.0, 0.0, 0.0, 1.0)
    if group == "MINF":
        heart, infarct = _infarct(rng, heart)
    volumes, ef_goal = _targets(rng, group, bsa)
    grid = draw_grid(rng, heart)
    heart = _solve_volumes(heart, hypertrophy, volumes, _slice_levels(grid.step, heart.apex), grid.step,
                           grid.rv_cut)
    local = local_frame(rng, grid)
    radius = 1.1 * _extent(heart)["labels"] + 3.0          # room for the label fit's corrections
    window, near = _window(local, heart, radius, grid.shape[2])
    voxel_ml = grid.pixel ** 2 * grid.step / 1000.0
    heart, ed_near = _fit_ed(heart, hypertrophy, volumes, local, window[:, near], voxel_ml)
    extent = _extent(heart)
    if extent["labels"] + 1.0 > radius:
        return None
    ed_labels, es_labels = np.zeros(near.shape, np.uint8), np.zeros(near.shape, np.uint8)
    ed_labels[near] = ed_near
    motion, es_labels[near] = _fit_es(heart, _draw_motion(rng, group, heart, extent, infarct), local,
                                      window[:, near], ed_labels, ef_goal)
    spacing = (grid.pixel, grid.pixel, grid.step)
    measures = clinical_measures(ed_labels, es_labels, spacing, height, weight)
    body = draw_body(rng, extent["outer"], heart.apex)
    half = (near.shape[0] - 1) // 2
    centre = place_heart(rng, local, body, grid.shape, half)
    if centre is None or not meets_definition(group, measures):
        return None
    affine = np.eye(4)
    affine[:3, :3] = random_rotation(rng) * np.asarray(spacing)
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    nb_frame = int(rng.integers(20, 36))
    return Design(group=group, height=height, weight=weight, nb_frame=nb_frame,
                  es_frame=int(round(nb_frame * rng.uniform(0.32, 0.45))) + 1, heart=heart,
                  motion=_fade(heart, motion), body=body,
                  frame=replace(local, origin=local.origin + np.array([*centre, 0], np.float32) * local.spacing),
                  shape=grid.shape, affine=affine, corner=(centre[0] - half, centre[1] - half),
                  ed_labels=ed_labels, es_labels=es_labels)


def draw_design(rng: np.random.Generator, group: str) -> Design:
    """A subject of ``group`` (one of ``cvae.data.labels.GROUPS``) that meets its ACDC definition."""
    for _ in range(_ATTEMPTS):
        design = _attempt(rng, group)
        if design is not None:
            return design
    raise RuntimeError(f"no {group} subject met its definition in {_ATTEMPTS} draws")
