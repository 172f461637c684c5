"""Anatomy of the foreign phantom (:mod:`cvae.data.foreign`): the end-diastolic heart and the body around it.

Two frames, both in mm. The **scene frame** ``(u, v, w)``: ``(u, v)`` the short-axis image plane turned by a random
angle (and possibly mirrored), ``w`` the distance along the slice axis below the LV base plane (a plane between two
slices). The **heart frame** ``(a, b, c)`` is the scene frame tilted by a few degrees: ``c`` is the LV long axis
(0 at the base, growing toward the apex), ``theta = atan2(b, a)`` the polar angle about it, ``theta = 0`` pointing
at the right ventricle. Every surface is a star-shaped polar contour ``r(theta, c)`` about the LV axis:

* LV endocardium ``R(c) rho(theta, c)``: a bullet profile ``R(c) = R0 (1 - (c / L)^n)^m`` modulated by Fourier
  harmonics 2-4 whose coefficients drift from base to apex;
* LV epicardium: the endocardium pushed out by a wall thickness ``T(theta, c)`` measured along the contour's normal
  (first-order signed distance: ``T |grad r|``); ``T`` is a 3 levels x 6 sectors table blended by von Mises
  weights in angle (kept to its harmonics 0-4) and linearly between levels, so single segments can be thick (HCM)
  or thin (scar); a rounded apical cap closes it;
* RV cavity: a layer on the LV epicardium of width ``W0 rho_RV(c) B(theta)``, ``B`` a skewed raised-cosine bump
  (the crescent, its horns are the insertion points), then a thin free wall, then epicardial fat;
* two papillary muscles (label 3, myocardial intensity) hang from the lateral wall into the cavity.

The analytic contours are tabulated once per heart on a (theta, c) grid of 2 degrees x 1 mm (:class:`Atlas`); the
anatomy *is* that table, read bilinearly, for the ED and the ES frame alike (and the motion reads it too), which makes
classifying a point a few table reads.

The labels are cut by grid planes: the LV exists below the base plane ``w = 0``, the RV below ``w = w_RV`` (the
same plane or one slice higher); above them the cavities are atrial or outflow blood with a thin wall (label 0).
The body is a prism along the slice axis: a super-elliptic torso with subcutaneous fat and muscle, lungs, a
mediastinal band, spine, descending aorta and a liver under a paraboloid dome.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["TISSUES", "LABEL_OF", "NONE", "Heart", "Body", "Frame", "Contours", "contours", "Atlas", "tabulate",
           "heart_tissue", "labels_at", "body_tissue"]

#: Tissue classes of the scene; the index is the tissue id.
TISSUES: tuple[str, ...] = (
    "air", "subcutaneous fat", "muscle", "lung", "liver", "spine", "aorta", "mediastinum", "epicardial fat",
    "LV myocardium", "LV blood", "papillary muscle", "RV blood", "RV wall", "atrial blood", "atrial wall",
    "outflow blood",
)
(AIR, SUBCUT_FAT, MUSCLE, LUNG, LIVER, SPINE, AORTA, MEDIASTINUM, EPI_FAT, LV_MYO, LV_BLOOD, PAPILLARY, RV_BLOOD,
 RV_WALL, ATRIAL_BLOOD, ATRIAL_WALL, OUTFLOW_BLOOD) = range(len(TISSUES))
#: ``heart_tissue`` marks points outside the heart zone with this id.
NONE = -1
#: ACDC label of each tissue id (1 RV cavity, 2 LV myocardium, 3 LV cavity with the papillary muscles).
LABEL_OF = np.zeros(len(TISSUES), np.uint8)
LABEL_OF[[RV_BLOOD, LV_MYO, LV_BLOOD, PAPILLARY]] = (1, 2, 3, 3)

ATRIAL_WALL_MM = 2.5
_SECTORS = np.arange(6) * np.pi / 3
_LEVELS = np.array([0.15, 0.5, 0.85])
_VON_MISES = 2.5


@dataclass(frozen=True)
class Heart:
    """The ED heart in the heart frame (lengths in mm, angles in rad)."""

    radius: float                     # R0, basal endocardial radius
    length: float                     # L, base plane to the apex of the cavity
    taper: tuple[float, float]        # (n, m) of the bullet profile
    shape_base: np.ndarray            # (3, 2) relative Fourier coefficients (cos, sin) of harmonics 2, 3, 4 at c = 0
    shape_apex: np.ndarray            # (3, 2) the same at c = L
    wall: np.ndarray                  # (3, 6) normal wall thickness: levels c/L = 0.15, 0.5, 0.85 x sectors k pi/3
    apex_wall: float                  # thickness of the apical cap
    rv_width: float                   # W0, largest RV cavity width
    rv_span: tuple[float, float]      # angular half-widths of the crescent on the sides theta < 0 and theta > 0
    rv_power: float                   # exponent of the raised cosine (< 1 blunt, > 1 pointed horns)
    rv_length: float                  # the RV cavity ends at c = rv_length
    rv_wall: float                    # RV free wall thickness
    fat: float                        # epicardial fat thickness (varies by +-90 % with angle)
    fat_angle: float                  # where the fat is thickest
    papillary: np.ndarray             # (2, 4): angle, radius, c of top, c of bottom

    @property
    def apex(self) -> float:
        """c of the epicardial apex (mm)."""
        return self.length + self.apex_wall


@dataclass(frozen=True)
class Body:
    """Extracardiac anatomy in the scene frame's (u, v) plane (mm); a prism along w except the liver's dome."""

    centre: tuple[float, ...]         # torso centre u, v
    axes: tuple[float, ...]           # semi-axes along the torso's own axes
    angle: float                      # direction of the first axis
    power: float                      # super-ellipse exponent
    ripple: tuple[float, ...]         # cos 2, sin 2, cos 3, sin 3 harmonics of the torso outline (relative)
    subcut: float                     # subcutaneous fat thickness
    muscle: float                     # chest-wall muscle thickness
    spine: tuple[float, ...]          # u, v, radius
    aorta: tuple[float, ...]          # u, v, radius
    mediastinum: tuple[float, ...]    # spine u, v; unit direction to the front; distances (mm) of the heart and of the
    #                                   front along it; half-widths at the spine, the heart and the front
    liver: tuple[float, ...]          # dome centre u, v, dome depth w (mm below the base), curvature radius


@dataclass(frozen=True)
class Frame:
    """Where the heart sits on the voxel grid: grid mm ``P = spacing * index`` and the two frames.

    ``scene`` (3, 3) has the scene axes u, v, w as columns in grid mm (in-plane rotation, optional mirror, w along
    the slice axis); ``tilt`` (3, 3) rotates scene coordinates into heart coordinates; ``origin`` (3,) is the grid
    mm of the heart frame's origin, on the base plane; ``rv_cut`` the w (mm) above which the RV is unlabelled.
    """

    spacing: np.ndarray
    origin: np.ndarray
    scene: np.ndarray
    tilt: np.ndarray
    rv_cut: float

    @property
    def lean(self) -> float:
        """sin of the LV axis' tilt: how far (mm) the axis moves in plane per mm along the slice axis."""
        return float(np.hypot(self.tilt[2, 0], self.tilt[2, 1]))

    def to_scene(self, voxels: np.ndarray) -> np.ndarray:
        """Voxel coordinates (3, ...) -> scene coordinates (3, ...) in mm."""
        return _apply(self.scene.T, voxels * _column(self.spacing, voxels) - _column(self.origin, voxels))

    def to_voxels(self, scene: np.ndarray) -> np.ndarray:
        """Scene coordinates (3, ...) in mm -> voxel coordinates (3, ...)."""
        return (_apply(self.scene, scene) + _column(self.origin, scene)) / _column(self.spacing, scene)

    def depth(self, voxels: np.ndarray) -> np.ndarray:
        """w (mm below the base plane) of voxel coordinates (3, ...)."""
        return self.scene[2, 2] * (voxels[2] * self.spacing[2] - self.origin[2])

    def to_heart(self, voxels: np.ndarray) -> np.ndarray:
        """Voxel coordinates (3, ...) -> heart coordinates (3, ...) in mm."""
        matrix = self.tilt @ self.scene.T
        return _apply(matrix * self.spacing, voxels) - _column(matrix @ self.origin, voxels)

    def heart_steps(self, vectors: np.ndarray) -> np.ndarray:
        """Heart-frame displacement vectors (3, ...) in mm -> voxel steps (3, ...)."""
        return _apply((self.scene @ self.tilt.T) / self.spacing[:, None], vectors)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix`` (3, 3) times every point of ``points`` (3, ...)."""
    return (matrix @ points.reshape(3, -1)).reshape(points.shape)


def _column(vector: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``vector`` (3,) shaped to broadcast against ``points`` (3, ...)."""
    return vector.reshape((3,) + (1,) * (points.ndim - 1))


class Contours(NamedTuple):
    """Radii (mm) of the heart's surfaces at given (theta, c): arrays of one shape."""

    endo: np.ndarray
    epi: np.ndarray
    rv: np.ndarray
    rv_wall: np.ndarray
    outer: np.ndarray


def _profile(heart: Heart, c: np.ndarray) -> np.ndarray:
    """R(c): bullet profile of the endocardium (mm); narrowing atrium above the base, 0 below the cavity's apex."""
    n, m = heart.taper
    s = np.clip(c / heart.length, 0.0, 1.0)
    body = heart.radius * (1.0 - s ** n) ** m
    atrium = heart.radius * np.clip(1.0 + c / 80.0, 0.5, 1.0)
    return np.where(c < 0, atrium, body)


def _angular(coefficients: np.ndarray, powers: list[np.ndarray]) -> np.ndarray:
    """Re sum_k C_k z^k over the given powers z^k (complex arrays); ``coefficients`` complex, one per power."""
    total = np.zeros(powers[0].shape)
    for coefficient, power in zip(coefficients, powers):
        total += (coefficient * power).real
    return total


def _shape_terms(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 2) cos/sin coefficients of harmonics 2-4 -> complex C_k of the value and of its theta-derivative."""
    value = coefficients[:, 0] - 1j * coefficients[:, 1]
    return value, 1j * np.arange(2, 5) * value


def _wall_terms(heart: Heart) -> np.ndarray:
    """(3, 5) complex Fourier coefficients (harmonics 0-4) of the wall table blended by von Mises weights."""
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    weights = np.exp(_VON_MISES * np.cos(theta[None, :] - _SECTORS[:, None]))
    per_level = heart.wall @ (weights / weights.sum(axis=0))          # (3, 72)
    spectrum = np.fft.rfft(per_level, axis=1)[:, :5] / theta.size
    spectrum[:, 1:] *= 2
    return spectrum


def _level_weights(heart: Heart, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piecewise-linear weights of the basal, mid and apical levels at heights ``c``."""
    s = np.clip(c / heart.length, _LEVELS[0], _LEVELS[-1])
    base = np.clip((_LEVELS[1] - s) / (_LEVELS[1] - _LEVELS[0]), 0.0, 1.0)
    apex = np.clip((s - _LEVELS[1]) / (_LEVELS[2] - _LEVELS[1]), 0.0, 1.0)
    return base, 1.0 - base - apex, apex


def _crescent(heart: Heart, theta: np.ndarray) -> np.ndarray:
    """B(theta) in [0, 1]: the RV's angular width profile, a skewed raised cosine centred on theta = 0."""
    span = np.where(theta < 0, heart.rv_span[0], heart.rv_span[1])
    x = np.minimum(np.abs(theta) / span, 1.0)
    return np.cos(0.5 * np.pi * x) ** heart.rv_power


def _endocardium(heart: Heart, powers: list[np.ndarray], c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r_endo, |grad| factor of the normal) at angles given by ``powers`` = [z, z^2, z^3, z^4], heights ``c``."""
    s = np.clip(c / heart.length, 0.0, 1.0)
    base, base_slope = _shape_terms(heart.shape_base)
    apex, apex_slope = _shape_terms(heart.shape_apex)
    ripple = (1 - s) * _angular(base, powers[1:]) + s * _angular(apex, powers[1:])
    slope = (1 - s) * _angular(base_slope, powers[1:]) + s * _angular(apex_slope, powers[1:])
    return _profile(heart, c) * (1.0 + ripple), np.sqrt(1.0 + (slope / (1.0 + ripple)) ** 2)


def _powers(cos_t: np.ndarray, sin_t: np.ndarray) -> list[np.ndarray]:
    """[z, z^2, z^3, z^4] with z = exp(i theta)."""
    z = cos_t + 1j * sin_t
    powers = [z]
    for _ in range(3):
        powers.append(powers[-1] * z)
    return powers


def contours(heart: Heart, cos_t: np.ndarray, sin_t: np.ndarray, c: np.ndarray) -> Contours:
    """The ED surfaces' radii (mm) at polar angle ``(cos_t, sin_t)`` and height ``c`` (arrays of one shape)."""
    powers = _powers(cos_t, sin_t)
    endo, normal = _endocardium(heart, powers, c)
    terms = _wall_terms(heart)
    weights = _level_weights(heart, c)
    wall = sum(w * (terms[level, 0].real + _angular(terms[level, 1:], powers)) for level, w in enumerate(weights))
    beyond = np.clip((c - heart.length) / heart.apex_wall, 0.0, 1.0)
    epi = (endo + wall * normal) * np.sqrt(1.0 - beyond ** 2)
    rv_extent = np.clip(c / heart.rv_length, 0.0, 1.0)
    width = heart.rv_width * (1.0 - rv_extent ** 2.5) ** 0.6 * _crescent(heart, np.arctan2(sin_t, cos_t))
    rv = epi + width
    rv_wall = rv + heart.rv_wall * np.clip(width / 2.0, 0.0, 1.0)
    fat = heart.fat * (1.0 + 0.9 * (cos_t * np.cos(heart.fat_angle) + sin_t * np.sin(heart.fat_angle)))
    cap = np.clip((c - heart.apex) / heart.fat, 0.0, 1.0)
    outer = np.where(c > heart.apex, heart.fat * np.sqrt(1.0 - cap ** 2), rv_wall + fat)
    return Contours(endo, epi, rv, rv_wall, outer)


THETA_BINS = 180
_ATLAS_TOP_MM = -90.0


@dataclass(frozen=True)
class Atlas:
    """``heart``'s surfaces (:class:`Contours` order) tabulated: ``radii`` (5, THETA_BINS + 1, n_c) mm at angles
    ``-pi + 2 pi i / THETA_BINS`` (the last repeats the first) and heights ``c0 + j`` mm; ``bound`` (n_c,) the
    largest outer radius at each height."""

    heart: Heart
    c0: float
    radii: np.ndarray
    bound: np.ndarray

    def surfaces(self, theta: np.ndarray, c: np.ndarray, which: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[np.ndarray]:
        """Radii (mm, float32) of the surfaces ``which`` at 1-D angles ``theta`` (rad, in [-pi, pi]) and heights
        ``c``, read bilinearly (heights beyond the table take its edge values)."""
        f = ((theta + np.pi) * (THETA_BINS / (2 * np.pi))).astype(np.float32)
        i = np.minimum(f.astype(np.int64), THETA_BINS - 1)
        n_c = self.radii.shape[2]
        g = np.clip(c - self.c0, 0.0, n_c - 1.001).astype(np.float32)
        j = g.astype(np.int64)
        s, t = f - i, g - j
        index = i * n_c + j
        corners = ((index, (1 - s) * (1 - t)), (index + 1, (1 - s) * t), (index + n_c, s * (1 - t)),
                   (index + n_c + 1, s * t))
        flat = self.radii.reshape(len(self.radii), -1)
        return [sum(flat[k].take(at) * weight for at, weight in corners) for k in which]

    def reach(self, c: np.ndarray) -> np.ndarray:
        """A bound (mm, float32) on the radius of the heart zone at heights ``c``: the larger of the two table rows
        around each height."""
        row = np.clip(c - self.c0, 0, self.bound.size - 2).astype(np.intp)
        return np.maximum(self.bound.take(row), self.bound.take(row + 1))


def tabulate(heart: Heart) -> Atlas:
    """The :class:`Atlas` of ``heart`` from 90 mm above the base to below the fat over its apex."""
    theta, c = np.meshgrid(np.linspace(-np.pi, np.pi, THETA_BINS + 1), np.arange(_ATLAS_TOP_MM,
                           heart.apex + heart.fat + 3.0), indexing="ij")
    radii = np.stack(contours(heart, np.cos(theta), np.sin(theta), c)).astype(np.float32)
    return Atlas(heart=heart, c0=_ATLAS_TOP_MM, radii=radii, bound=radii[4].max(axis=0) + np.float32(0.5))


def _polar(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, theta) of in-plane heart coordinates."""
    return np.sqrt(a * a + b * b), np.arctan2(b, a)


def _papillary(atlas: Atlas, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Whether heart points (a, b, c) lie in a papillary muscle: a disc hanging from the wall, round in c."""
    inside = np.zeros(a.shape, bool)
    for angle, radius, top, bottom in atlas.heart.papillary.tolist():
        wall = atlas.surfaces(np.full(a.shape, math.remainder(angle, 2 * math.pi), np.float32), c, which=(0,))[0]
        reach = np.sin(np.pi * np.clip((c - top) / (bottom - top), 0.0, 1.0))
        centre = wall - 0.8 * radius
        inside |= (a - centre * math.cos(angle)) ** 2 + (b - centre * math.sin(angle)) ** 2 < (radius * reach) ** 2
    return inside


def _classify(atlas: Atlas, rv_cut: float, a: np.ndarray, b: np.ndarray, c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Tissue ids of heart-frame points (1-D arrays) near the heart; ``w`` their depth below the base plane. The
    inner surfaces are read only for the points inside the outer one."""
    r, theta = _polar(a, b)
    tissue = np.full(a.shape, NONE, np.int8)
    inside = np.flatnonzero(r < atlas.surfaces(theta, c, which=(4,))[0])
    a, b, c, w, r = a[inside], b[inside], c[inside], w[inside], r[inside]
    endo, epi, rv, rv_wall = atlas.surfaces(theta[inside], c, which=(0, 1, 2, 3))
    ventricle = w > 0
    zone = np.full(inside.size, EPI_FAT, np.int8)
    zone[r < rv_wall] = RV_WALL
    inside_rv = r < rv
    zone[inside_rv] = np.where(w[inside_rv] > rv_cut, RV_BLOOD, OUTFLOW_BLOOD)
    myo = r < epi
    zone[myo & ventricle] = LV_MYO
    atrial = myo & ~ventricle
    zone[atrial] = np.where(r[atrial] < endo[atrial] + ATRIAL_WALL_MM, ATRIAL_WALL, EPI_FAT)
    cavity = r < endo
    zone[cavity & ~ventricle] = ATRIAL_BLOOD
    lv = cavity & ventricle
    zone[lv] = np.where(_papillary(atlas, a[lv], b[lv], c[lv]), PAPILLARY, LV_BLOOD)
    tissue[inside] = zone
    return tissue


def heart_tissue(atlas: Atlas, frame: Frame, voxels: np.ndarray) -> np.ndarray:
    """Tissue ids (int8, shape of ``voxels[0]``) of the heart zone at voxel positions (3, ...); ``NONE`` outside.

    Points with ``w > 0`` lie below the LV base plane (ventricle, labelled), ``w > frame.rv_cut`` below the RV's.
    """
    a, b, c = frame.to_heart(voxels)
    near = a * a + b * b < atlas.reach(c) ** 2
    tissue = np.full(a.shape, NONE, np.int8)
    tissue[near] = _classify(atlas, frame.rv_cut, a[near], b[near], c[near], frame.depth(voxels)[near])
    return tissue


def labels_at(atlas: Atlas, frame: Frame, voxels: np.ndarray) -> np.ndarray:
    """ACDC labels (uint8) of the ED anatomy at voxel positions (3, ...)."""
    tissue = heart_tissue(atlas, frame, voxels)
    return np.where(tissue >= 0, LABEL_OF[np.maximum(tissue, 0)], 0).astype(np.uint8)


def body_tissue(body: Body, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Tissue ids (int8) of the body at scene points; ``u, v, w`` (mm) broadcast together (e.g. a (X, Y, 1, 1)
    plane against (1, 1, Z, S) depths: the prism is then computed once per pixel)."""
    du, dv = u - body.centre[0], v - body.centre[1]
    along = du * math.cos(body.angle) + dv * math.sin(body.angle)
    across = -du * math.sin(body.angle) + dv * math.cos(body.angle)
    rho = np.sqrt(along * along + across * across)
    cos_t, sin_t = along / np.maximum(rho, 1e-9), across / np.maximum(rho, 1e-9)
    power = body.power
    outline = (np.abs(cos_t / body.axes[0]) ** power + np.abs(sin_t / body.axes[1]) ** power) ** (-1 / power)
    cos_2, sin_2 = cos_t * cos_t - sin_t * sin_t, 2 * cos_t * sin_t
    cos_3, sin_3 = cos_t * cos_2 - sin_t * sin_2, sin_t * cos_2 + cos_t * sin_2
    outline *= 1 + body.ripple[0] * cos_2 + body.ripple[1] * sin_2 + body.ripple[2] * cos_3 + body.ripple[3] * sin_3
    depth = outline - rho                                             # mm inside the skin, along the ray
    tissue = np.full(np.broadcast(u, v).shape, AIR, np.int8)
    tissue[depth > 0] = SUBCUT_FAT
    tissue[depth > body.subcut] = MUSCLE
    cavity = depth > body.subcut + body.muscle
    tissue[cavity] = LUNG
    x, y, dx, dy, heart, front, *half = body.mediastinum
    along = (u - x) * dx + (v - y) * dy
    off_axis = np.abs((u - x) * dy - (v - y) * dx)
    tissue[cavity & (along > -half[0]) & (off_axis < np.interp(along, (0.0, heart, front), half))] = MEDIASTINUM
    for tissue_id, (x, y, radius) in ((AORTA, body.aorta), (SPINE, body.spine)):
        tissue[cavity & ((u - x) ** 2 + (v - y) ** 2 < radius ** 2)] = tissue_id
    dome = body.liver[2] + ((u - body.liver[0]) ** 2 + (v - body.liver[1]) ** 2) / (2 * body.liver[3])
    liver = cavity & (w > dome) & (tissue == LUNG)
    tissue = np.broadcast_to(tissue, liver.shape).copy()
    tissue[liver] = LIVER
    return tissue

