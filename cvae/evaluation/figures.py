"""Figures of an evaluation (Plotly), built from the ``cases`` table that ``cvae evaluate`` writes (``cases.csv``).

``cases`` has one row per subject x method x structure with (at least) the columns ``method``, ``structure``,
``dice`` (0-1) and ``hd95`` (mm); see :mod:`cvae.evaluation.evaluate`. The functions only build or save figures, so
the app and the tests can call them without a browser.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from cvae.data.labels import STRUCTURES

__all__ = ["METRIC_TITLES", "box_plot", "write_figures"]

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


def write_figures(cases: pd.DataFrame, out: str | Path) -> tuple[list[Path], str | None]:
    """Write ``dice_boxplot`` and ``hd95_boxplot`` into ``out``: HTML always, PNG when Plotly can export images.

    The HTML files share one ``plotly.min.js`` written beside them (they work offline). Returns
    ``(written paths, note)``; ``note`` says why PNGs were skipped (Plotly's image export needs ``kaleido``), else
    ``None``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, note = [], None
    for metric in METRIC_TITLES:
        figure = box_plot(cases, metric)
        html = out / f"{metric}_boxplot.html"
        figure.write_html(str(html), include_plotlyjs="directory")
        written.append(html)
        if note is None:
            try:
                png = figure.to_image(format="png", width=1000, height=550)
            except (ValueError, RuntimeError, ImportError, OSError) as exc:  # which one depends on plotly's version
                reason = " ".join(str(exc).split())
                note = ("PNG figures skipped: Plotly's image export needs the kaleido package (pip install kaleido)"
                        if "kaleido" in reason.lower() else f"PNG figures skipped: Plotly cannot export images "
                        f"({type(exc).__name__}: {reason[:100]})")
            else:
                (out / f"{metric}_boxplot.png").write_bytes(png)
                written.append(out / f"{metric}_boxplot.png")
    return written, note
