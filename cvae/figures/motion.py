"""Figures of a cardiac cycle: the raw cine as an animated GIF, the tracked cycle as a Plotly animation, volume curves
and the code trajectory.

Plain functions of numpy arrays (no Streamlit). Slices are ``(rows, cols)`` as :func:`cvae.figures.slices.extract_slice`
gives them; a cycle's frames are numbered from 1, as in ACDC; volumes in mL.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from cvae.figures.charts import GROUP_COLOURS
from cvae.figures.slices import LABEL_STYLE, contour_traces, image_trace
from cvae.figures.volumes import Panels

__all__ = ["cine_gif", "cycle_animation", "volume_curves_figure", "trajectory_figure"]

#: Line colour of each volume curve (the colours of the segmentation contours).
CURVE_COLOURS: dict[str, str] = {name: colour for name, colour in LABEL_STYLE.values()}
_OTHER_COLOURS = ("#5c6bc0", "#8d6e63", "#26a69a", "#ab47bc", "#78909c")


def cine_gif(slices: np.ndarray, frame_ms: float | None = None, aspect: float = 1.0, width: int = 320) -> bytes:
    """An endlessly looping GIF of the 2-D slices ``(T, rows, cols)`` of a cine, ``frame_ms`` apart (40 ms when
    unknown, as browsers play it), ``width`` pixels wide with pixels of height / width ``aspect``; intensities
    mapped from the 1st-99.5th percentiles of all frames to black-white."""
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3 or len(slices) < 1:
        raise ValueError(f"slices must be (T, rows, cols), got shape {slices.shape}")
    low, high = np.percentile(slices, [1.0, 99.5])
    grey = np.clip((slices - low) / max(float(high - low), 1e-6) * 255, 0, 255).astype(np.uint8)
    rows, cols = grey.shape[1:]
    size = (int(width), max(1, round(width * rows / cols * aspect)))
    frames = [Image.fromarray(g).resize(size, Image.Resampling.BILINEAR) for g in grey]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=max(20, round(frame_ms or 40)))
    return buffer.getvalue()


def _byte_image(slice_u8: np.ndarray, name: str) -> dict:
    """A uint8 (0-255) image slice as a heatmap sent as bytes: a quarter of float32's size in every frame."""
    return {**image_trace(slice_u8, name, zmax=255.0), "z": np.ascontiguousarray(slice_u8, dtype=np.uint8),
            "hoverinfo": "skip", "hovertemplate": None}


def cycle_animation(frames: np.ndarray, warped: np.ndarray, labels: np.ndarray | None, aspect: float = 1.0,
                    names: Sequence[str] | None = None, frame_ms: float | None = None,
                    height: int | None = None) -> go.Figure:
    """Three panels per frame, animated with play / pause and a frame slider: the frame, the frame with the carried
    labels' contours (when ``labels`` is given; colours of :data:`cvae.figures.slices.LABEL_STYLE`, no legend) and
    the warped ED frame. ``frames``, ``warped`` and ``labels`` are
    ``(T, rows, cols)`` uint8 (images 0-255); ``names`` label the slider's steps (default 1..T); the animation
    shows a frame every ``frame_ms`` (at least 80 ms)."""
    frames, warped = np.asarray(frames), np.asarray(warped)
    count = len(frames)
    names = [str(t) for t in range(1, count + 1)] if names is None else list(names)
    if warped.shape != frames.shape or len(names) != count or (labels is not None and labels.shape != frames.shape):
        raise ValueError(f"frames {frames.shape}, warped {warped.shape}, labels "
                         f"{None if labels is None else labels.shape} and {len(names)} names do not match")
    middle = "frame + ED labels carried" if labels is not None else "frame (no ED segmentation)"
    p = Panels(1, 3, ("frame t", middle, "warped ED: ED ∘ φ_t"), aspect, frames.shape[1:], hspace=0.03)

    def data(t: int) -> list[dict]:
        traces = [p.place(_byte_image(frames[t], "frame"), 1), p.place(_byte_image(frames[t], "frame"), 2)]
        if labels is not None:
            traces += [p.place(c, 2) for c in contour_traces(labels[t], every=True)]
        return traces + [p.place(_byte_image(warped[t], "warped ED"), 3)]

    step = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    play = dict(mode="immediate", fromcurrent=True, transition=dict(duration=0),
                frame=dict(duration=max(80, round(frame_ms or 0)), redraw=True))
    layout = p.layout(height or p.fitted_height() + 70)
    layout["margin"]["b"] = 80
    layout["sliders"] = [dict(active=0, x=0.16, len=0.84, y=0, yanchor="top", pad=dict(t=10),
                              currentvalue=dict(prefix="frame ", font=dict(size=13)),
                              steps=[dict(method="animate", label=n, args=[[n], step]) for n in names])]
    layout["updatemenus"] = [dict(type="buttons", direction="left", x=0.0, y=0, xanchor="left", yanchor="top",
                                  pad=dict(t=40), showactive=False,
                                  buttons=[dict(label="▶ play", method="animate", args=[None, play]),
                                           dict(label="❚❚ pause", method="animate", args=[[None], step])])]
    return go.Figure(dict(data=data(0), layout=layout,
                          frames=[dict(data=data(t), name=n) for t, n in enumerate(names)]))


def volume_curves_figure(curves: Mapping[str, Sequence[float]], ed_frame: int, es_frame: int | None = None,
                         marked: str = "LV cavity", others: Mapping[str, Sequence[float]] | None = None,
                         reference_es: int | None = None, frame_ms: float | None = None,
                         y_title: str = "volume (mL)", height: int = 340) -> go.Figure:
    """Curves over the frames 1..T: ``curves`` (solid, in the contours' colours) and ``others`` (dashed, e.g.
    simulated cycles); the ED frame and the detected ES frame ``es_frame`` marked on the curve ``marked``
    (traces ``ED`` and ``ES (detected)``), ``reference_es`` (e.g. Info.cfg's ES) as a dotted line."""
    if not curves:
        raise ValueError("no curve to draw")
    count = len(next(iter(curves.values())))
    x = np.arange(1, count + 1)
    times = None if frame_ms is None else [f"<br>{(t - 1) * frame_ms:.0f} ms" for t in x]
    hover = "frame %{x}%{text}<br>%{y:.1f}<extra>%{fullData.name}</extra>" if times else \
        "frame %{x}<br>%{y:.1f}<extra>%{fullData.name}</extra>"
    traces = []
    for k, (name, values) in enumerate(curves.items()):
        kind = name.split(" (")[0]  # "LV cavity (transported)" is drawn as the LV cavity
        colour = CURVE_COLOURS.get(kind, _OTHER_COLOURS[k % len(_OTHER_COLOURS)])
        traces.append(dict(type="scatter", x=x, y=np.asarray(values, dtype=float), name=name, mode="lines+markers",
                           text=times, hovertemplate=hover, marker=dict(size=5),
                           line=dict(color=colour, width=1.5 if kind == "LV myocardium" else 2.5,
                                     dash="dot" if kind == "LV myocardium" else "solid")))
    for k, (name, values) in enumerate((others or {}).items()):
        traces.append(dict(type="scatter", x=x, y=np.asarray(values, dtype=float), name=name, mode="lines",
                           text=times, hovertemplate=hover,
                           line=dict(color=_OTHER_COLOURS[k % len(_OTHER_COLOURS)], width=1.5, dash="dash")))
    line = np.asarray(curves[marked], dtype=float)
    marks = [("ED", ed_frame, "#37474f", "circle")] + ([("ES (detected)", es_frame, "#c62828", "diamond")]
                                                       if es_frame is not None else [])
    for name, frame, colour, symbol in marks:
        traces.append(dict(type="scatter", x=[frame], y=[line[frame - 1]], name=name, mode="markers+text",
                           text=[name.split()[0]], textposition="top center", hoverinfo="skip",
                           marker=dict(size=13, color=colour, symbol=symbol, line=dict(width=1, color="white"))))
    shapes = [] if reference_es is None else [dict(type="line", x0=reference_es, x1=reference_es, yref="paper", y0=0,
                                                   y1=1, line=dict(color="#9e9e9e", width=1, dash="dot"))]
    annotations = [] if reference_es is None else [dict(x=reference_es, y=1, yref="paper", text="ES (Info.cfg)",
                                                        showarrow=False, yanchor="bottom", font=dict(size=11))]
    top = max(float(np.nanmax(t["y"])) for t in traces)
    layout = dict(height=height, margin=dict(l=10, r=10, t=30, b=10),
                  xaxis=dict(title="frame", dtick=max(1, round(count / 10)), range=[0.5, count + 0.5]),
                  yaxis=dict(title=y_title, range=[0, 1.15 * top if top > 0 else 1]), shapes=shapes,
                  annotations=annotations,
                  legend=dict(orientation="h", y=-0.22, yanchor="top", x=0), hovermode="closest")
    return go.Figure(dict(data=traces, layout=layout))


def trajectory_figure(points: np.ndarray, ed_frame: int, es_frame: int | None = None,
                      background: pd.DataFrame | None = None, simulated: np.ndarray | None = None,
                      axis_titles: tuple[str, str] = ("PC 1", "PC 2"), height: int = 380) -> go.Figure:
    """The code trajectory ``(T, 2)`` of one cycle as a closed path coloured by frame (ED and ES marked), over the
    cohort's codes ``background`` (columns ``x, y, subject, group``; faint, by group) and simulated cycles
    ``(n, T, 2)`` (dotted)."""
    points = np.asarray(points, dtype=float)
    count = len(points)
    traces: list[dict] = []
    if background is not None:
        for group, part in background.groupby("group", sort=False):
            traces.append(dict(type="scatter", x=part["x"], y=part["y"], mode="markers", name=f"cohort {group}",
                               legendgroup="cohort", opacity=0.3, customdata=part["subject"],
                               hovertemplate="%{customdata} (" + str(group) + ")<extra></extra>",
                               marker=dict(size=8, color=GROUP_COLOURS.get(str(group), "#9e9e9e"))))
    for k, path in enumerate(() if simulated is None else np.asarray(simulated, dtype=float)):
        closed = np.vstack([path, path[:1]])
        traces.append(dict(type="scatter", x=closed[:, 0], y=closed[:, 1], mode="lines", name="simulated from ED",
                           legendgroup="simulated", showlegend=k == 0, hoverinfo="skip",
                           line=dict(color="#7e57c2", width=1.2, dash="dot")))
    closed = np.vstack([points, points[:1]])
    traces.append(dict(type="scatter", x=closed[:, 0], y=closed[:, 1], mode="lines", name="cycle", hoverinfo="skip",
                       showlegend=False, line=dict(color="#90a4ae", width=1.5)))
    frames = np.arange(1, count + 1)
    traces.append(dict(type="scatter", x=points[:, 0], y=points[:, 1], mode="markers", name="frames", customdata=frames,
                       hovertemplate="frame %{customdata}<extra></extra>", showlegend=False,
                       marker=dict(size=10, color=frames, colorscale="Viridis", showscale=True,
                                   colorbar=dict(title=dict(text="frame"), thickness=10),
                                   line=dict(width=1, color="white"))))
    for name, frame, symbol in (("ED", ed_frame, "circle-open"), ("ES", es_frame, "diamond-open")):
        if frame is not None:
            traces.append(dict(type="scatter", x=[points[frame - 1, 0]], y=[points[frame - 1, 1]],
                               mode="markers+text", name=name, text=[name], textposition="top center",
                               hoverinfo="skip", showlegend=False,
                               marker=dict(size=18, symbol=symbol, color="#212121", line=dict(width=2))))
    layout = dict(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=axis_titles[0],
                  yaxis_title=axis_titles[1], legend=dict(orientation="h", y=-0.2, yanchor="top", x=0),
                  hovermode="closest")
    return go.Figure(dict(data=traces, layout=layout))
