"""Scanning the foreign phantom (:mod:`cvae.data.foreign`): the native grid, the orientation of the short-axis
stack, the body around the heart and where the heart sits in the field of view.

* :func:`draw_grid`: an ACDC-like native grid (pixels of 1.3-1.9 mm, 200-260 per axis; 6-18 slices of 5-10 mm from
  one or two slices above the base to one beyond the apex), which end of the stack holds the base, the RV's cut;
* :func:`local_frame`: the in-plane turn (and mirror) of the stack, its tilt against the LV axis (0-8 degrees);
* :func:`draw_body`: torso, lungs, spine, aorta, mediastinum and liver;
* :func:`place_heart`: the pixel of the heart's axis, so that the torso's centre lies within 10 % of the field of
  view's centre; :func:`random_rotation`: the voxel-to-world rotation of the affine.

The draws are consumed from the subject's one random stream in the order :mod:`cvae.data.foreign_params` calls
them, so a subject stays a function of its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvae.data.foreign_anatomy import Body, Frame, Heart

__all__ = ["Grid", "draw_grid", "local_frame", "random_tilt", "random_rotation", "draw_body", "place_heart"]


@dataclass(frozen=True)
class Grid:
    """A subject's native grid: in-plane ``pixel`` and slice ``step`` (mm), ``shape`` (X, Y, Z); ``direction`` +1
    when the base lies at the low slice indices, else -1; ``base`` the slice coordinate of the base plane (between
    two slices); ``rv_cut`` the depth w (mm, <= 0) above which the RV is unlabelled."""

    pixel: float
    step: float
    shape: tuple[int, int, int]
    direction: int
    base: float
    rv_cut: float


def draw_grid(rng: np.random.Generator, heart: Heart) -> Grid:
    """ACDC-like native grid: pixel 1.3-1.9 mm, 200-260 pixels, slices 5-10 mm, 6-18 of them: 1-2 slices above
    the base, the heart, one slice beyond the apex (the outer slices hold no label, so labels carried beyond the
    stack by a nearest-neighbour warp that clamps to it are right); which end of the stack holds the base; the RV's
    label cut (one slice above the LV's when there are two slices above the base)."""
    above = int(rng.integers(1, 3))
    step = rng.uniform(max(5.0, heart.apex / (18 - above - 1.5)), 10.0)
    nz = above + math.ceil(heart.apex / step) + 1
    direction = 1 if rng.random() < 0.5 else -1
    base = above - 0.5 if direction > 0 else nz - above - 0.5
    pixel = float(rng.uniform(1.3, 1.9))
    shape = (int(rng.integers(200, 261)), int(rng.integers(200, 261)), nz)
    rv_cut = -step if above == 2 and rng.random() < 0.6 else 0.0
    return Grid(pixel=pixel, step=float(step), shape=shape, direction=direction, base=base, rv_cut=float(rv_cut))


def local_frame(rng: np.random.Generator, grid: Grid) -> Frame:
    """The frame of the heart's window: the heart's axis at a random sub-pixel position near pixel (0, 0)."""
    angle = rng.uniform(0, 2 * math.pi)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    scene = np.array([[math.cos(angle), -mirror * math.sin(angle), 0.0],
                      [math.sin(angle), mirror * math.cos(angle), 0.0],
                      [0.0, 0.0, float(grid.direction)]])
    spacing = np.array([grid.pixel, grid.pixel, grid.step])
    origin = np.array([*rng.uniform(0, 1, 2), grid.base]) * spacing
    return Frame(spacing=spacing.astype(np.float32), origin=origin.astype(np.float32),
                 scene=scene.astype(np.float32), tilt=random_tilt(rng).astype(np.float32), rv_cut=grid.rv_cut)


def random_tilt(rng: np.random.Generator) -> np.ndarray:
    """Rotation by 0-8 degrees about a random in-plane axis (scene -> heart coordinates)."""
    angle, axis_angle = math.radians(rng.uniform(0, 8)), rng.uniform(0, 2 * math.pi)
    k = np.array([[0, 0, math.sin(axis_angle)], [0, 0, -math.cos(axis_angle)],
                  [-math.sin(axis_angle), math.cos(axis_angle), 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def draw_body(rng: np.random.Generator, outer: float, apex: float) -> Body:
    """Torso, lungs, spine, aorta, mediastinum and liver in scene (u, v) around the heart (at the origin); ``outer``
    (mm) is the heart zone's radius, ``apex`` its length: the liver's dome lies 40-90 % of the way down."""
    front_angle = math.radians(rng.uniform(30, 70))
    front = np.array([math.cos(front_angle), math.sin(front_angle)])
    right = np.array([front[1], -front[0]])
    back, side = rng.uniform(30, 55), rng.uniform(20, 45)
    centre = -back * front + side * right
    subcut, muscle = rng.uniform(6, 25), rng.uniform(6, 15)
    axes = np.array([max(rng.uniform(140, 185), side + outer + 30), max(rng.uniform(95, 130), back + outer + 8)])
    axes += subcut + muscle
    spine_r = rng.uniform(14, 20)
    spine = centre - (axes[1] - subcut - muscle - 0.6 * spine_r) * front
    aorta_r = rng.uniform(9, 14)
    aorta = spine + (spine_r + aorta_r + 3) * front - rng.uniform(5, 25) * right
    dome = centre + rng.uniform(30, 80) * right + rng.uniform(-30, 10) * front
    heart_along = float(-spine @ front)                   # the heart's distance from the spine toward the front
    return Body(centre=(*centre.tolist(),), axes=(*axes.tolist(),), angle=math.atan2(right[1], right[0]),
                power=rng.uniform(2.0, 2.8), ripple=(*rng.normal(0, 0.025, 4).tolist(),), subcut=subcut,
                muscle=muscle, spine=(*spine.tolist(), spine_r), aorta=(*aorta.tolist(), aorta_r),
                mediastinum=(*spine.tolist(), *front.tolist(), heart_along, heart_along + outer + 30,
                             spine_r + rng.uniform(5, 12), rng.uniform(25, 45), rng.uniform(6, 15)),
                liver=(*dome.tolist(), rng.uniform(0.4, 0.9) * apex, rng.uniform(80, 160)))


def place_heart(rng: np.random.Generator, frame: Frame, body: Body, shape: tuple[int, int, int],
           half: int) -> tuple[int, int] | None:
    """The pixel of the heart's axis: the torso's centre near the middle of the field of view (+-10 %), the label
    window inside it; ``None`` when the grid is too small for the window."""
    size = np.array(shape[:2])
    torso = frame.scene[:2, :2] @ np.array(body.centre, np.float32) / frame.spacing[:2]
    wanted = size / 2 + rng.uniform(-0.1, 0.1, 2) * size - torso
    if np.any(size < 2 * half + 5):
        return None
    return tuple(int(np.clip(round(float(p)), half + 2, n - half - 3)) for p, n in zip(wanted, size))

