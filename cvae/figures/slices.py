"""Slices of volumes for the figures: views, 2-D cuts of volumes and fields, and the traces drawn on them.

Volumes are ``(X, Y, Z)`` on the model grid (nibabel order, see ``docs/DESIGN.md``); fields are ``(3, X, Y, Z)`` in
voxels; ``spacing`` is the voxel size in mm along (X, Y, Z). A *view* cuts the volume at one index of one axis:

=========  ===========  ====================  ==================
view       axis cut     horizontal axis       vertical axis
=========  ===========  ====================  ==================
axial      Z (slices)   X                     Y
coronal    Y            X                     Z
sagittal   X            Y                     Z
=========  ===========  ====================  ==================

For cardiac short-axis stacks the "axial" view is the acquisition plane (the short axis). Every 2-D slice is shown as
a heatmap in voxel coordinates (column = horizontal index, row = vertical index, row 0 at the top), with the aspect
ratio of the voxels in mm; only 2-D slices are sent to the browser, never volumes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvae.data.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

__all__ = ["VIEWS", "VIEW_TITLES", "LABEL_STYLE", "JACOBIAN_COLOURS", "view_axes", "view_aspect", "n_slices",
           "extract_slice", "in_plane_displacement", "displacement_magnitude_mm", "deformed_grid_lines",
           "jacobian_range", "image_trace", "contour_traces", "grid_trace", "jacobian_trace", "folding_trace"]

#: View name -> (axis cut, horizontal axis, vertical axis).
_VIEW_AXES: dict[str, tuple[int, int, int]] = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
VIEWS: tuple[str, ...] = tuple(_VIEW_AXES)

#: What the pages call each view.
VIEW_TITLES: dict[str, str] = {"axial": "axial (short axis)", "coronal": "coronal", "sagittal": "sagittal"}

#: Contour colour and name of each ACDC label value.
LABEL_STYLE: dict[int, tuple[str, str]] = {
    RV_CAVITY: ("RV cavity", "#29b6f6"),
    LV_MYOCARDIUM: ("LV myocardium", "#ffa726"),
    LV_CAVITY: ("LV cavity", "#ef5350"),
}

#: Diverging colour scale of the Jacobian determinant: blue = compression (< 1), white = 1, red = expansion (> 1).
JACOBIAN_COLOURS = "RdBu_r"
_FOLD_COLOUR = "#ffd600"
_GRID_COLOUR = "rgba(255, 214, 0, 0.85)"


# ---------------------------------------------------------------------------------------------------------------
# slicing


def view_axes(view: str) -> tuple[int, int, int]:
    """``(axis cut, horizontal axis, vertical axis)`` of a view name; ``ValueError`` for an unknown view."""
    if view not in _VIEW_AXES:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return _VIEW_AXES[view]


def view_aspect(view: str, spacing: Sequence[float]) -> float:
    """Height / width of a pixel of ``view`` in mm."""
    _, horizontal, vertical = view_axes(view)
    return float(spacing[vertical]) / float(spacing[horizontal])


def n_slices(shape: Sequence[int], view: str) -> int:
    """Number of slices of a volume of ``shape`` ``(X, Y, Z)`` (or ``(C, X, Y, Z)``) in ``view``."""
    return int(shape[-3:][view_axes(view)[0]])


def extract_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2-D slice ``index`` of ``volume`` in ``view``, rows along the vertical axis, columns along the horizontal.

    ``volume`` is ``(X, Y, Z)`` -> ``(rows, cols)``, or ``(C, X, Y, Z)`` -> ``(C, rows, cols)`` (e.g. a field).
    """
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must be (X, Y, Z) or (C, X, Y, Z), got shape {volume.shape}")
    cut, horizontal, vertical = view_axes(view)
    lead = volume.ndim - 3
    size = volume.shape[lead + cut]
    if not 0 <= int(index) < size:
        raise ValueError(f"slice {index} is outside the {view} view (0..{size - 1})")
    plane = np.take(volume, int(index), axis=lead + cut)
    # remaining spatial axes keep their order; put (vertical, horizontal) last
    remaining = [a for a in range(3) if a != cut]
    order = list(range(lead)) + [lead + remaining.index(vertical), lead + remaining.index(horizontal)]
    return np.ascontiguousarray(np.transpose(plane, order))


def in_plane_displacement(displacement: np.ndarray, view: str, index: int) -> np.ndarray:
    """Components of a ``(3, X, Y, Z)`` field along the (horizontal, vertical) axes of a slice: ``(2, rows, cols)``
    in voxels. The through-plane component is dropped."""
    displacement = np.asarray(displacement)
    if displacement.ndim != 4 or displacement.shape[0] != 3:
        raise ValueError(f"displacement must be (3, X, Y, Z), got shape {displacement.shape}")
    _, horizontal, vertical = view_axes(view)
    plane = extract_slice(displacement, view, index)
    return plane[[horizontal, vertical]]


def displacement_magnitude_mm(displacement: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per-voxel length in mm of a field in voxels: ``(3, ...)`` -> ``(...)``, component i scaled by ``spacing[i]``.

    Works on a volume ``(3, X, Y, Z)`` or on a slice of it ``(3, rows, cols)`` (all three components kept).
    """
    displacement = np.asarray(displacement, dtype=np.float32)
    if displacement.ndim < 2 or displacement.shape[0] != 3:
        raise ValueError(f"displacement must be (3, ...) with one channel per axis, got shape {displacement.shape}")
    scale = np.asarray(spacing, dtype=np.float32).reshape((3,) + (1,) * (displacement.ndim - 1))
    return np.sqrt(((displacement * scale) ** 2).sum(axis=0))


def deformed_grid_lines(u_plane: np.ndarray, step: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Lines of a regular grid (every ``step`` voxels) moved by a 2-D displacement, as one NaN-separated polyline.

    ``u_plane`` is ``(2, rows, cols)`` (horizontal, vertical components in voxels, as :func:`in_plane_displacement`
    gives). Grid point ``(c, r)`` is drawn at ``(c + u_h, r + u_v)``: where the transform takes that point of the fixed
    image in the moving image. Returns ``(xs, ys)``; the number of lines is ``ceil(cols / step) + ceil(rows / step)``
    (vertical lines first), each followed by one NaN.
    """
    u_plane = np.asarray(u_plane, dtype=np.float32)
    if u_plane.ndim != 3 or u_plane.shape[0] != 2:
        raise ValueError(f"u_plane must be (2, rows, cols), got shape {u_plane.shape}")
    if step < 1:
        raise ValueError(f"grid step must be >= 1 voxel, got {step}")
    rows, cols = u_plane.shape[1:]
    r, c = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    x, y = c + u_plane[0], r + u_plane[1]
    gap = np.full((1,), np.nan, dtype=np.float32)
    xs, ys = [], []
    for col in range(0, cols, step):  # vertical lines: fixed column, all rows
        xs += [x[:, col], gap]
        ys += [y[:, col], gap]
    for row in range(0, rows, step):  # horizontal lines: fixed row, all columns
        xs += [x[row, :], gap]
        ys += [y[row, :], gap]
    return np.concatenate(xs), np.concatenate(ys)


def jacobian_range(jacobian: np.ndarray, minimum: float = 0.25, maximum: float = 2.0) -> tuple[float, float]:
    """Colour range ``(1 - r, 1 + r)`` symmetric about 1, ``r = max |J - 1|`` clipped to ``[minimum, maximum]``."""
    values = np.asarray(jacobian, dtype=np.float64)
    spread = float(np.abs(values[np.isfinite(values)] - 1.0).max(initial=0.0))
    r = min(max(spread, minimum), maximum)
    return 1.0 - r, 1.0 + r


# ---------------------------------------------------------------------------------------------------------------
# traces (plain dicts: one go.Figure(spec) validates them all at once, ~100x faster than incremental add_trace)


def image_trace(image2d: np.ndarray, name: str = "image", colorscale: str = "gray", zmin: float | None = 0.0,
                zmax: float | None = 1.0, unit: str = "", **kwargs) -> dict:
    """Heatmap of one 2-D slice (float32 to keep the figure light) with a hover label naming the value."""
    trace = dict(type="heatmap", z=np.asarray(image2d, dtype=np.float32), name=name, colorscale=colorscale,
                 showscale=False, hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}<br>%{{z:.3f}} {unit}<extra></extra>")
    if zmin is not None:
        trace["zmin"] = zmin
    if zmax is not None:
        trace["zmax"] = zmax
    return {**trace, **kwargs}


def contour_traces(label2d: np.ndarray, dash: str = "solid", legend: bool = False, every: bool = False
                   ) -> list[dict]:
    """One contour line (level 0.5 of the mask) per ACDC label value present in the 2-D label slice (with ``every``,
    per label value even when absent: the frames of an animation need the same traces)."""
    label2d = np.asarray(label2d)
    traces = []
    for value, (name, colour) in LABEL_STYLE.items():
        mask = label2d == value
        if mask.any() or every:
            traces.append(dict(
                type="contour", z=mask.astype(np.uint8), name=name, legendgroup=name, showlegend=legend,
                showscale=False, contours=dict(start=0.5, end=0.5, size=1.0, coloring="lines"),
                line=dict(color=colour, width=2, dash=dash), colorscale=[[0, colour], [1, colour]],
                hoverinfo="skip"))
    return traces


def grid_trace(u_plane: np.ndarray, step: int = 8) -> dict:
    """The deformed grid of :func:`deformed_grid_lines` as one thin line trace."""
    xs, ys = deformed_grid_lines(u_plane, step)
    return dict(type="scatter", x=xs, y=ys, mode="lines", name="deformed grid", connectgaps=False,
                line=dict(color=_GRID_COLOUR, width=1), hoverinfo="skip", showlegend=False)


def jacobian_trace(jacobian2d: np.ndarray, **kwargs) -> dict:
    """Heatmap of det J on the diverging scale centred on 1 (``zmid = 1``, range symmetric about 1)."""
    low, high = jacobian_range(jacobian2d)
    return dict(type="heatmap", z=np.asarray(jacobian2d, dtype=np.float32), name="det J",
                colorscale=JACOBIAN_COLOURS, zmid=1.0, zmin=low, zmax=high,
                hovertemplate="det J<br>x %{x}, y %{y}<br>%{z:.3f}<extra></extra>", **kwargs)


def folding_trace(jacobian2d: np.ndarray) -> dict:
    """Markers on every pixel whose det J <= 0 (folding), so that they stand out whatever the colour range."""
    rows, cols = np.nonzero(np.asarray(jacobian2d) <= 0)
    return dict(type="scatter", x=cols, y=rows, mode="markers", name="det J ≤ 0 (folding)",
                marker=dict(symbol="x-thin", size=7, color=_FOLD_COLOUR, line=dict(width=2, color=_FOLD_COLOUR)),
                hovertemplate="folding at x %{x}, y %{y}<extra></extra>", showlegend=bool(rows.size))
