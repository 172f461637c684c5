"""Figures of an evaluation (Plotly; PNG files with matplotlib), built from the ``cases`` table that
``cvae evaluate`` writes (``cases.csv``).

``cases`` has one row per subject x method x structure with (at least) the columns ``method``, ``structure``,
``dice`` (0-1) and ``hd95`` (mm); see :mod:`cvae.evaluation.evaluate`. The functions only build or save figures, so
the app and the tests can call them without a browser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cvae.data.labels import STRUCTURES

__all__ = ["METRIC_TITLES", "box_plot", "box_plot_png", "write_figures"]

#: Axis titles of the plotted metrics.
METRIC_TITLES: dict[str, str] = {"dice": "Dice", "hd95": "HD95 (mm)"}


def box_plot(cases: pd.DataFrame, metric: str = "dice", methods: list[str] | None = None) -> go.Figure:
    """Box plots of ``metric`` (``"dice"`` or ``"hd95"``) per structure (x axis), one colour per method.

    ``methods`` fixes which methods appear and their order (default: their order of appearance in ``cases``).
    Each box shows the cases' median, quartiles and 1.5 IQR whiskers; every case is drawn as a point.
    """
    if metric not in METRIC_TITLES:
        raise ValueError(f"metric must be one of {', '.join(METRIC_TITLES)}, got {metric!r}")
    missing = {"method", "structure", metric} - set(cases.columns)
    if missing:
        raise ValueError(f"cases table lacks the columns {sorted(missing)}: pass the table of cvae evaluate")
    methods = list(dict.fromkeys(cases["method"])) if methods is None else list(methods)
    order = [s for s in STRUCTURES if s in set(cases["structure"])]
    figure = go.Figure()
    for method in methods:
        rows = cases[cases["method"] == method]
        figure.add_trace(go.Box(x=rows["structure"], y=rows[metric], name=method, boxpoints="all", jitter=0.3,
                                pointpos=0, marker={"size": 3}))
    figure.update_layout(boxmode="group", title=f"{METRIC_TITLES[metric]} per structure",
                         xaxis={"title": "structure", "categoryorder": "array", "categoryarray": order},
                         yaxis={"title": METRIC_TITLES[metric]}, legend_title_text="method",
                         template="plotly_white")
    return figure


def box_plot_png(cases: pd.DataFrame, metric: str, path: str | Path,
                 methods: list[str] | None = None) -> Path:
    """The figure of :func:`box_plot` as a PNG file (matplotlib, no browser): boxes of ``metric`` per structure,
    one colour per method, every case a point. Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # files only, whatever backend the session has
    import matplotlib.pyplot as plt

    box_plot(cases.head(0), metric)  # the same checks of the table and the metric
    methods = list(dict.fromkeys(cases["method"])) if methods is None else list(methods)
    order = [s for s in STRUCTURES if s in set(cases["structure"])]
    width = 0.8 / max(1, len(methods))
    figure, axes = plt.subplots(figsize=(10, 5.5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, method in enumerate(methods):
        colour = colours[k % len(colours)]
        rows = cases[cases["method"] == method]
        values = [rows.loc[rows["structure"] == s, metric].dropna().to_numpy() for s in order]
        positions = [i - 0.4 + width * (k + 0.5) for i in range(len(order))]
        axes.boxplot(values, positions=positions, widths=width * 0.8, patch_artist=True, showfliers=False,
                     boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
                     medianprops={"color": colour}, whiskerprops={"color": colour}, capprops={"color": colour})
        for position, points in zip(positions, values):
            jitter = (np.arange(points.size) % 7 - 3) / 3 * width * 0.25  # deterministic, across the box
            axes.scatter(position + jitter, points, s=4, color=colour, alpha=0.6, linewidths=0)
        axes.plot([], [], color=colour, linewidth=6, alpha=0.5, label=method)
    axes.set_xticks(range(len(order)), order)
    axes.set_xlabel("structure")
    axes.set_ylabel(METRIC_TITLES[metric])
    axes.set_title(f"{METRIC_TITLES[metric]} per structure")
    axes.legend(title="method", frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def write_figures(cases: pd.DataFrame, out: str | Path) -> list[Path]:
    """Write ``dice_boxplot`` and ``hd95_boxplot`` into ``out``, each as HTML (Plotly, interactive; the files
    share one ``plotly.min.js`` written beside them and work offline) and as PNG (matplotlib). Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in METRIC_TITLES:
        html = out / f"{metric}_boxplot.html"
        box_plot(cases, metric).write_html(str(html), include_plotlyjs="directory")
        written += [html, box_plot_png(cases, metric, out / f"{metric}_boxplot.png")]
    return written
