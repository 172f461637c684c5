"""Figures of a cohort and of the method: the embedding, the confusion and transport matrices, timings, the method.

Plain functions returning Plotly figures; one colour per disease group (:data:`GROUP_COLOURS`) in all of them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cvae.data.labels import GROUPS

__all__ = ["GROUP_COLOURS", "embedding_figure", "confusion_figure", "transport_matrix_figure", "timing_figure",
           "method_figure"]

#: One colour per disease group, used by every figure that colours by group.
GROUP_COLOURS: dict[str, str] = dict(zip(GROUPS, ("#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#1565c0")))


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
    :func:`cvae.latent.transport_study.group_matrix` gives it; empty cells (no pair) stay blank."""
    z = matrix.to_numpy(dtype=float)
    text = np.where(np.isfinite(z), np.char.mod("%.0f", np.nan_to_num(z)), "")
    return _annotated_heatmap(z, matrix.columns.astype(str), matrix.index.astype(str), text,
                              "motion of %{y} on %{x} anatomy: LVEF %{z:.1f} %", ("target group (anatomy)",
                              "source group (motion)"), title, height, name="LVEF", colorscale="RdYlGn", zmin=10,
                              zmax=70, colorbar=dict(title=dict(text="LVEF (%)")))


def timing_figure(seconds: Mapping[str, float], height: int = 300) -> go.Figure:
    """Horizontal bars of seconds per registration, log scale (methods differ by orders of magnitude)."""
    names, values = list(seconds), [float(v) for v in seconds.values()]
    trace = dict(type="bar", x=values, y=names, orientation="h", text=[f"{v:.3g} s" for v in values],
                 textposition="auto", marker_color="#5c6bc0")
    layout = dict(height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis_type="log",
                  xaxis_title="seconds per registration (log scale)", yaxis_autorange="reversed")
    return go.Figure(dict(data=[trace], layout=layout))


def method_figure(latent_dim: int | None = None, height: int = 240) -> go.Figure:
    """Schematic of the method: (F, M) -> encoder -> z -> decoder (+ M) -> v -> smoothing -> exp -> warp M;
    ``latent_dim`` (d, of the checkpoint shown) is written in the code's box when given."""
    size = "" if latent_dim is None else f", d = {int(latent_dim)}"
    boxes = [("F, M<br>(ES, ED)", "#eceff1"), ("encoder<br>(3-D convs)", "#bbdefb"),
             (f"code z<br>~ N(μ, σ²){size}", "#fff9c4"), ("decoder<br>(+ M at every scale)", "#bbdefb"),
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
