"""Plotly figure builders for the app and the notebooks: plain functions of numpy arrays, no Streamlit.

Volumes are ``(X, Y, Z)`` on the model grid (nibabel order, see ``DESIGN.md``); fields are ``(3, X, Y, Z)`` in voxels;
``spacing`` is the voxel size in mm along (X, Y, Z). A *view* cuts the volume at one index of one axis:

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cvae.data.labels import GROUPS, LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

__all__ = [
    "VIEWS", "LABEL_STYLE", "GROUP_COLOURS", "RegistrationVolumes", "view_axes", "view_aspect", "n_slices",
    "extract_slice",
    "in_plane_displacement", "displacement_magnitude_mm", "deformed_grid_lines", "jacobian_range", "JACOBIAN_COLOURS",
    "image_trace", "contour_traces", "grid_trace", "jacobian_trace", "folding_trace", "registration_figure",
    "deformation_figure", "walk_animation", "uncertainty_figure", "transport_figure", "embedding_figure",
    "confusion_figure", "transport_matrix_figure", "timing_figure", "method_figure",
]

#: View name -> (axis cut, horizontal axis, vertical axis).
_VIEW_AXES: dict[str, tuple[int, int, int]] = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
VIEWS: tuple[str, ...] = tuple(_VIEW_AXES)

#: Contour colour and name of each ACDC label value.
LABEL_STYLE: dict[int, tuple[str, str]] = {
    RV_CAVITY: ("RV cavity", "#29b6f6"),
    LV_MYOCARDIUM: ("LV myocardium", "#ffa726"),
    LV_CAVITY: ("LV cavity", "#ef5350"),
}

#: One colour per disease group, used by every figure that colours by group.
GROUP_COLOURS: dict[str, str] = dict(zip(GROUPS, ("#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#1565c0")))

#: Diverging colour scale of the Jacobian determinant: blue = compression (< 1), white = 1, red = expansion (> 1).
JACOBIAN_COLOURS = "RdBu_r"
_FOLD_COLOUR = "#ffd600"
_GRID_COLOUR = "rgba(255, 214, 0, 0.85)"


@dataclass
class RegistrationVolumes:
    """Everything the registration viewer shows, on one ``(X, Y, Z)`` grid.

    ``fixed``/``moving``/``warped`` images in [0, 1]; ``displacement`` ``(3, X, Y, Z)`` in voxels (``warped(x) =
    moving(x + u(x))``); ``jacobian`` ``(X, Y, Z)``; labels ``(X, Y, Z)`` integer or ``None``; ``spacing`` mm.
    """

    fixed: np.ndarray
    moving: np.ndarray
    warped: np.ndarray
    displacement: np.ndarray
    jacobian: np.ndarray
    spacing: tuple[float, float, float]
    fixed_label: np.ndarray | None = None
    moving_label: np.ndarray | None = None
    warped_label: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------------------------
# slicing


def view_axes(view: str) -> tuple[int, int, int]:
    """``(axis cut, horizontal axis, vertical axis)`` of a view name; ``ValueError`` for an unknown view."""
    if view not in _VIEW_AXES:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return _VIEW_AXES[view]


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


def contour_traces(label2d: np.ndarray, dash: str = "solid", legend: bool = False) -> list[dict]:
    """One contour line (level 0.5 of the mask) per ACDC label value present in the 2-D label slice."""
    label2d = np.asarray(label2d)
    traces = []
    for value, (name, colour) in LABEL_STYLE.items():
        mask = label2d == value
        if mask.any():
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


# ---------------------------------------------------------------------------------------------------------------
# panel grids


def _unit_interval(low: float, high: float) -> list[float]:
    """``[low, high]`` clipped to [0, 1] (paper coordinates; sums of spacings may round to -1e-17)."""
    return [max(0.0, round(low, 6)), min(1.0, round(high, 6))]


@dataclass
class _Panels:
    """A rows x cols grid of image panels showing slices of ``shape`` (rows, cols): axis domains and ranges, titles,
    and where each panel's traces go. Axis ranges are fixed to the slice, so a grid line leaving it is clipped."""

    rows: int
    cols: int
    titles: Sequence[str]
    aspect: float
    shape: tuple[int, int]
    hspace: float = 0.06
    vspace: float = 0.1

    def domain(self, panel: int) -> tuple[list[float], list[float]]:
        """``(x domain, y domain)`` of panel ``panel`` (1-based, row-major) in paper coordinates."""
        row, col = divmod(panel - 1, self.cols)
        width = (1.0 - self.hspace * (self.cols - 1)) / self.cols
        height = (1.0 - self.vspace * (self.rows - 1)) / self.rows
        x0 = col * (width + self.hspace)
        y1 = 1.0 - row * (height + self.vspace)
        return _unit_interval(x0, x0 + width), _unit_interval(y1 - height, y1)

    @staticmethod
    def axes(panel: int) -> tuple[str, str]:
        suffix = "" if panel == 1 else str(panel)
        return f"x{suffix}", f"y{suffix}"

    def place(self, trace: dict, panel: int) -> dict:
        x, y = self.axes(panel)
        return {**trace, "xaxis": x, "yaxis": y}

    def colorbar(self, panel: int, title: str) -> dict:
        """Colour bar just right of ``panel``."""
        xd, yd = self.domain(panel)
        return dict(x=xd[1] + 0.005, xanchor="left", y=(yd[0] + yd[1]) / 2, len=(yd[1] - yd[0]) * 0.9,
                    thickness=10, title=dict(text=title, side="right"), tickfont=dict(size=10))

    def fitted_height(self, width_px: float = 880.0, title_px: float = 24.0) -> int:
        """Figure height (px) at which the images fill their panels when the figure is ``width_px`` wide, so that
        thin views (coronal, sagittal: 32 slices) do not leave gaps between the rows."""
        (x0, x1), (y0, y1) = self.domain(1)
        image_px = (x1 - x0) * width_px * self.shape[0] / self.shape[1] * self.aspect
        plot_px = self.rows * (image_px + title_px) / (self.rows * (y1 - y0))
        return int(min(900, max(200, plot_px + 40 + 40)))  # + top margin + the legend below

    def layout(self, height: int) -> dict:
        """Image axes with the pixel aspect in mm (row 0 at the top, no ticks) and panel titles."""
        layout: dict = dict(height=height, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="rgba(0,0,0,0)",
                            legend=dict(orientation="h", y=-0.02, yanchor="top", x=0.0), uirevision="keep",
                            annotations=[])
        axis = dict(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
        for panel, title in enumerate(self.titles, start=1):
            xd, yd = self.domain(panel)
            x, y = self.axes(panel)
            layout["xaxis" + x[1:]] = dict(axis, domain=xd, anchor=y, range=[-0.5, self.shape[1] - 0.5])
            layout["yaxis" + y[1:]] = dict(axis, domain=yd, anchor=x, range=[self.shape[0] - 0.5, -0.5],
                                           scaleanchor=x, scaleratio=self.aspect, constraintoward="top")
            # "<axis> domain" coordinates follow the image once its aspect ratio has shrunk the panel
            layout["annotations"].append(dict(text=title, x=0.5, y=1.0, xref=f"{x} domain", yref=f"{y} domain",
                                              xanchor="center", yanchor="bottom", yshift=2, showarrow=False,
                                              font=dict(size=13)))
        return layout

    def figure(self, traces: list[dict], height: int | None) -> go.Figure:
        """The figure; ``height`` ``None`` fits it to the images (:meth:`fitted_height`)."""
        return go.Figure(dict(data=traces, layout=self.layout(height or self.fitted_height())))


def _magnitude_trace(plane: np.ndarray, spacing: Sequence[float], colorbar: dict) -> dict:
    """|u| in mm of a field slice ``(3, rows, cols)``; the colour range spans at least 1 mm, so that a near-identity
    transform does not look like a large one."""
    magnitude = displacement_magnitude_mm(plane, spacing)
    return image_trace(magnitude, "|u|", colorscale="Viridis", zmin=0.0, zmax=max(1.0, float(magnitude.max())),
                       unit="mm", showscale=True, colorbar=colorbar)


def view_aspect(view: str, spacing: Sequence[float]) -> float:
    """Height / width of a pixel of ``view`` in mm."""
    _, horizontal, vertical = view_axes(view)
    return float(spacing[vertical]) / float(spacing[horizontal])


# ---------------------------------------------------------------------------------------------------------------
# registration viewer


def registration_figure(volumes: RegistrationVolumes, view: str, index: int, grid_step: int = 8,
                        height: int | None = None) -> go.Figure:
    """Six panels of one slice: fixed, moving + deformed grid, warped, difference, |u| (mm), det J.

    Segmentation contours are drawn when the labels exist (on the warped panel the fixed labels are dotted, for
    comparison); pixels with det J <= 0 are marked on the Jacobian panel.
    """
    v = volumes
    cut = {name: extract_slice(getattr(v, name), view, index) for name in ("fixed", "moving", "warped", "jacobian")}
    labels = {name: extract_slice(lab, view, index) for name, lab in
              (("fixed", v.fixed_label), ("moving", v.moving_label), ("warped", v.warped_label)) if lab is not None}
    titles = ("fixed (ES)", "moving (ED) + deformed grid", "warped: moving ∘ φ", "difference fixed − warped",
              "displacement |u| (mm)", "Jacobian det J")
    p = _Panels(2, 3, titles, view_aspect(view, v.spacing), cut["fixed"].shape, hspace=0.07,
                vspace=0.07)
    traces = [p.place(image_trace(cut["fixed"], "fixed"), 1), p.place(image_trace(cut["moving"], "moving"), 2),
              p.place(grid_trace(in_plane_displacement(v.displacement, view, index), grid_step), 2),
              p.place(image_trace(cut["warped"], "warped"), 3)]
    for panel, name in ((1, "fixed"), (2, "moving"), (3, "warped")):
        if name in labels:
            traces += [p.place(t, panel) for t in contour_traces(labels[name], legend=panel == 1)]
    if "fixed" in labels and "warped" in labels:
        traces += [p.place(t, 3) for t in contour_traces(labels["fixed"], dash="dot")]
    traces += [
        p.place(image_trace(cut["fixed"] - cut["warped"], "difference", colorscale="RdBu", zmin=-1.0, zmax=1.0,
                            zmid=0.0, showscale=True, colorbar=p.colorbar(4, "F − M∘φ")), 4),
        p.place(_magnitude_trace(extract_slice(v.displacement, view, index), v.spacing, p.colorbar(5, "mm")), 5),
        p.place(jacobian_trace(cut["jacobian"], colorbar=p.colorbar(6, "det J")), 6),
        p.place(folding_trace(cut["jacobian"]), 6)]
    return p.figure(traces, height)


def deformation_figure(moving: np.ndarray, warped: np.ndarray, displacement: np.ndarray, jacobian: np.ndarray,
                       spacing: Sequence[float], view: str, index: int, grid_step: int = 8,
                       titles: Sequence[str] = ("ED image + deformed grid", "deformed ED", "|u| (mm)", "det J"),
                       moving_label: np.ndarray | None = None, warped_label: np.ndarray | None = None,
                       height: int | None = None) -> go.Figure:
    """Four panels of a decoded deformation of ``moving``: image + grid, warped image, |u| in mm, det J."""
    jac = extract_slice(jacobian, view, index)
    p = _Panels(1, 4, titles, view_aspect(view, spacing), jac.shape, hspace=0.06)
    traces = [p.place(image_trace(extract_slice(moving, view, index), "ED"), 1),
              p.place(grid_trace(in_plane_displacement(displacement, view, index), grid_step), 1),
              p.place(image_trace(extract_slice(warped, view, index), "deformed"), 2)]
    for panel, label in ((1, moving_label), (2, warped_label)):
        if label is not None:
            traces += [p.place(t, panel) for t in contour_traces(extract_slice(label, view, index),
                                                                 legend=panel == 1)]
    traces += [p.place(_magnitude_trace(extract_slice(displacement, view, index), spacing, p.colorbar(3, "mm")), 3),
               p.place(jacobian_trace(jac, colorbar=p.colorbar(4, "det J")), 4),
               p.place(folding_trace(jac), 4)]
    return p.figure(traces, height)


def walk_animation(slices: Sequence[np.ndarray], values: Sequence[float], label: str, aspect: float = 1.0,
                   height: int = 460) -> go.Figure:
    """Animated heatmap of 2-D slices (one Plotly frame per value of a latent coordinate) with play and a slider."""
    if len(slices) == 0 or len(slices) != len(values):
        raise ValueError(f"need one slice per value, got {len(slices)} slices and {len(values)} values")
    names = [f"{value:+.2f}" for value in values]
    rows, cols = np.shape(slices[0])
    step_args = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    play_args = dict(mode="immediate", fromcurrent=True, transition=dict(duration=0),
                     frame=dict(duration=300, redraw=True))
    axis = dict(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    layout = dict(
        height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(axis, range=[-0.5, cols - 0.5]),
        yaxis=dict(axis, range=[rows - 0.5, -0.5], scaleanchor="x", scaleratio=aspect),
        sliders=[dict(active=0, x=0.18, len=0.82, y=0, yanchor="top", pad=dict(t=10),
                      currentvalue=dict(prefix=f"{label} = "),
                      steps=[dict(method="animate", label=name, args=[[name], step_args]) for name in names])],
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=0, xanchor="left", yanchor="top",
                          pad=dict(t=45), showactive=False,
                          buttons=[dict(label="▶ play", method="animate", args=[None, play_args]),
                                   dict(label="❚❚ pause", method="animate", args=[[None], step_args])])])
    frames = [dict(data=[image_trace(s, "deformed ED")], name=name) for s, name in zip(slices, names)]
    return go.Figure(dict(data=[image_trace(slices[0], "deformed ED")], layout=layout, frames=frames))


def uncertainty_figure(image2d: np.ndarray, std2d: np.ndarray, aspect: float = 1.0, unit: str = "mm",
                       height: int = 360) -> go.Figure:
    """Two panels: the image, and the posterior standard deviation of the displacement (``unit``)."""
    p = _Panels(1, 2, ("ED image", f"posterior std of the displacement ({unit})"), aspect, np.shape(image2d),
                hspace=0.08)
    return p.figure([p.place(image_trace(image2d, "ED"), 1),
                     p.place(image_trace(std2d, "std", colorscale="Magma", zmax=None, unit=unit, showscale=True,
                                         colorbar=p.colorbar(2, unit)), 2)], height)


def transport_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]], view: str, index: int,
                     spacing: Sequence[float], height: int | None = None) -> go.Figure:
    """One panel per ``(title, image (X, Y, Z), label (X, Y, Z) or None)``, same slice, with label contours."""
    shape = extract_slice(panels[0][1], view, index).shape
    p = _Panels(1, len(panels), [title for title, _, _ in panels], view_aspect(view, spacing), shape, hspace=0.03)
    traces = []
    for panel, (title, image, label) in enumerate(panels, start=1):
        traces.append(p.place(image_trace(extract_slice(image, view, index), title), panel))
        if label is not None:
            traces += [p.place(t, panel) for t in contour_traces(extract_slice(label, view, index),
                                                                 legend=panel == 1)]
    return p.figure(traces, height)


# ---------------------------------------------------------------------------------------------------------------
# cohort-level figures


def embedding_figure(x: Sequence[float], y: Sequence[float], groups: Sequence[str], subjects: Sequence[str],
                     hover: Mapping[str, Sequence[float]] | None = None, axis_titles: tuple[str, str] = ("1", "2"),
                     height: int = 520) -> go.Figure:
    """Scatter of a 2-D projection, one trace (colour) per group; ``customdata[0]`` is the subject id, and the
    hover lists the ``hover`` measures (name -> one value per point)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    groups, subjects = np.asarray(groups, dtype=object), np.asarray(subjects, dtype=object)
    if not len(x) == len(y) == len(groups) == len(subjects):
        raise ValueError("x, y, groups and subjects must have one entry per point")
    hover = dict(hover or {})
    names = list(hover)
    custom = np.empty((len(x), 1 + len(names)), dtype=object)
    custom[:, 0] = subjects
    for i, name in enumerate(names, start=1):
        custom[:, i] = np.round(np.asarray(hover[name], dtype=float), 2)
    lines = "".join(f"<br>{n}: %{{customdata[{i}]}}" for i, n in enumerate(names, start=1))
    order = [g for g in GROUPS if g in set(groups)] + sorted(set(groups) - set(GROUPS))
    traces = [dict(type="scatter", x=x[groups == g], y=y[groups == g], mode="markers", name=g,
                   customdata=custom[groups == g].tolist(),
                   marker=dict(size=11, color=GROUP_COLOURS.get(g), line=dict(width=1, color="white")),
                   hovertemplate=f"<b>%{{customdata[0]}}</b> ({g}){lines}<extra></extra>") for g in order]
    layout = dict(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=axis_titles[0],
                  yaxis_title=axis_titles[1], legend_title="group", clickmode="event+select", dragmode="pan")
    return go.Figure(dict(data=traces, layout=layout))


def _annotated_heatmap(z: np.ndarray, x: Sequence[str], y: Sequence[str], text: np.ndarray, hover: str,
                       axis_titles: tuple[str, str], title: str, height: int, **trace: Any) -> go.Figure:
    """A heatmap with its values written in the cells; rows top to bottom in the order of ``y``."""
    cells = dict(type="heatmap", z=z, x=list(x), y=list(y), text=text, texttemplate="%{text}",
                 hovertemplate=hover + "<extra></extra>", **trace)
    layout = dict(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                  xaxis_title=axis_titles[0], yaxis_title=axis_titles[1], yaxis_autorange="reversed")
    return go.Figure(dict(data=[cells], layout=layout))


def confusion_figure(matrix: np.ndarray, labels: Sequence[str], title: str = "", height: int = 360) -> go.Figure:
    """Annotated confusion matrix (rows = true group, columns = predicted)."""
    matrix = np.asarray(matrix)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix {matrix.shape} does not match {len(labels)} labels")
    return _annotated_heatmap(matrix, labels, labels, matrix, "true %{y}, predicted %{x}: %{z}",
                              ("predicted", "true"), title, height, colorscale="Blues", showscale=False)


def transport_matrix_figure(matrix: pd.DataFrame, title: str = "", height: int = 360) -> go.Figure:
    """Mean simulated LVEF (%) per source group (rows) and target group (columns), as
    :func:`cvae.transport_study.group_matrix` gives it; empty cells (no pair) stay blank."""
    z = matrix.to_numpy(dtype=float)
    text = np.where(np.isfinite(z), np.char.mod("%.0f", np.nan_to_num(z)), "")
    return _annotated_heatmap(z, matrix.columns.astype(str), matrix.index.astype(str), text,
                              "motion of %{y} on %{x} anatomy: LVEF %{z:.1f} %", ("target group (anatomy)",
                              "source group (motion)"), title, height, name="LVEF", colorscale="RdYlGn", zmin=10, zmax=70,
                              colorbar=dict(title=dict(text="LVEF (%)")))


def timing_figure(seconds: Mapping[str, float], height: int = 300) -> go.Figure:
    """Horizontal bars of seconds per registration, log scale (methods differ by orders of magnitude)."""
    names, values = list(seconds), [float(v) for v in seconds.values()]
    trace = dict(type="bar", x=values, y=names, orientation="h", text=[f"{v:.3g} s" for v in values],
                 textposition="auto", marker_color="#5c6bc0")
    layout = dict(height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis_type="log",
                  xaxis_title="seconds per registration (log scale)", yaxis_autorange="reversed")
    return go.Figure(dict(data=[trace], layout=layout))


def method_figure(height: int = 240) -> go.Figure:
    """Schematic of the method: (F, M) -> encoder -> z -> decoder (+ M) -> v -> smoothing -> exp -> warp M."""
    boxes = [("F, M<br>(ES, ED)", "#eceff1"), ("encoder<br>(3-D convs)", "#bbdefb"),
             ("code z<br>~ N(μ, σ²), d = 16", "#fff9c4"), ("decoder<br>(+ M at every scale)", "#bbdefb"),
             ("velocity v<br>Gaussian smoothing", "#c8e6c9"), ("φ = exp(v)<br>scaling & squaring", "#c8e6c9"),
             ("warp: M ∘ φ ≈ F", "#ffe0b2")]
    n, width = len(boxes), 0.118
    centres = [(i + 0.5) / n for i in range(n)]
    shapes = [dict(type="rect", x0=cx - width / 2, x1=cx + width / 2, y0=0.4, y1=0.8, fillcolor=colour,
                   line=dict(color="#546e7a", width=1.5), layer="below") for (_, colour), cx in zip(boxes, centres)]
    annotations = [dict(x=cx, y=0.6, text=text, showarrow=False, font=dict(size=12, color="#263238"))
                   for (text, _), cx in zip(boxes, centres)]
    annotations += [dict(x=b - width / 2, y=0.6, ax=a + width / 2, ay=0.6, axref="x", ayref="y", text="",
                         showarrow=True, arrowhead=2, arrowwidth=1.5, arrowcolor="#546e7a")
                    for a, b in zip(centres[:-1], centres[1:])]
    notes = [(centres[1], 0.2, "registration is one<br>forward pass (z = μ)"),
             (centres[2], 0.93, "the prior N(0, I) makes the codes a space<br>to sample, walk and transport"),
             (centres[5], 0.2, "a diffeomorphism: smooth,<br>invertible (exp(−v)), no folding")]
    annotations += [dict(x=cx, y=y, text=text, showarrow=False, font=dict(size=11, color="#455a64"))
                    for cx, y, text in notes]
    layout = dict(height=height, margin=dict(l=0, r=0, t=0, b=0), plot_bgcolor="white", paper_bgcolor="white",
                  showlegend=False, shapes=shapes, annotations=annotations,
                  xaxis=dict(visible=False, range=[0, 1], fixedrange=True),
                  yaxis=dict(visible=False, range=[0.05, 1.02], fixedrange=True))
    return go.Figure(dict(data=[], layout=layout))
