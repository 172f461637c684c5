"""Figures of volumes: the registration viewer, a decoded deformation, a latent walk, uncertainty, transport.

Plain functions of numpy arrays that return Plotly figures (the app and the notebooks show them; tests check them
without a browser). Views, slices and traces come from :mod:`cvae.figures.slices`; volumes are ``(X, Y, Z)`` on the
model grid, fields ``(3, X, Y, Z)`` in voxels, ``spacing`` in mm.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from cvae.figures.slices import (contour_traces, displacement_magnitude_mm, extract_slice, folding_trace, grid_trace,
                                 image_trace, in_plane_displacement, jacobian_trace, view_aspect)

__all__ = ["RegistrationVolumes", "registration_figure", "deformation_figure", "walk_animation", "uncertainty_figure",
           "transport_figure"]


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
# panel grids


def _unit_interval(low: float, high: float) -> list[float]:
    """``[low, high]`` clipped to [0, 1] (paper coordinates; sums of spacings may round to -1e-17)."""
    return [max(0.0, round(low, 6)), min(1.0, round(high, 6))]


@dataclass
class Panels:
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
    p = Panels(2, 3, titles, view_aspect(view, v.spacing), cut["fixed"].shape, hspace=0.07,
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
    p = Panels(1, 4, titles, view_aspect(view, spacing), jac.shape, hspace=0.06)
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
    p = Panels(1, 2, ("ED image", f"posterior std of the displacement ({unit})"), aspect, np.shape(image2d),
                hspace=0.08)
    return p.figure([p.place(image_trace(image2d, "ED"), 1),
                     p.place(image_trace(std2d, "std", colorscale="Magma", zmax=None, unit=unit, showscale=True,
                                         colorbar=p.colorbar(2, unit)), 2)], height)


def transport_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]], view: str, index: int,
                     spacing: Sequence[float], height: int | None = None) -> go.Figure:
    """One panel per ``(title, image (X, Y, Z), label (X, Y, Z) or None)``, same slice, with label contours."""
    shape = extract_slice(panels[0][1], view, index).shape
    p = Panels(1, len(panels), [title for title, _, _ in panels], view_aspect(view, spacing), shape, hspace=0.03)
    traces = []
    for panel, (title, image, label) in enumerate(panels, start=1):
        traces.append(p.place(image_trace(extract_slice(image, view, index), title), panel))
        if label is not None:
            traces += [p.place(t, panel) for t in contour_traces(extract_slice(label, view, index),
                                                                 legend=panel == 1)]
    return p.figure(traces, height)
