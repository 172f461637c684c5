"""The shipped reference evaluation: every method on the own synthetic test cohort and on the held-out foreign
cohort, side by side.

``benchmarks/evaluation/cases-<cohort>.csv`` are the ``cases.csv`` files ``cvae evaluate`` wrote for the full test
splits (one row per subject, method and structure; commands in ``benchmarks/RESULTS.md``); the Benchmark page shows
them on a fresh clone, before a user has run any evaluation, so that the scores on hearts like the training ones are
never shown without the scores on hearts the model has never seen (``docs/DESIGN.md``, section 9).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cvae.evaluation.evaluate import MEAN_STRUCTURE, summarise
from cvae.paths import PROJECT_ROOT

__all__ = ["REFERENCE_DIR", "COHORTS", "reference_cases", "cohort_comparison"]

#: Where the shipped evaluation tables live.
REFERENCE_DIR = PROJECT_ROOT / "benchmarks" / "evaluation"
#: The cohorts of the reference evaluation, in display order: file stem -> description.
COHORTS: dict[str, str] = {
    "own": "own synthetic test cohort (the training generator)",
    "foreign": "held-out foreign phantom (never trained or tuned on)",
}


def reference_cases(folder: str | Path = REFERENCE_DIR) -> dict[str, pd.DataFrame]:
    """The ``cases-<cohort>.csv`` tables of :data:`COHORTS` found in ``folder`` (missing ones left out)."""
    folder = Path(folder)
    return {cohort: pd.read_csv(folder / f"cases-{cohort}.csv", dtype={"subject": str, "method": str})
            for cohort in COHORTS if (folder / f"cases-{cohort}.csv").is_file()}


def cohort_comparison(cases: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method (in the order of first appearance), for each cohort (``cases`` tables as ``cvae evaluate``
    writes them) its mean Dice (%) and HD95 (mm) over the five structures, intensity RMSE, folding (% voxels with
    det J <= 0) and seconds per case, as :func:`~cvae.evaluation.evaluate.summarise` computes them; columns
    ``(cohort, measure)``. A method missing from a cohort has NaNs there."""
    columns = {"Dice (%)": ("dice_mean", 100.0), "HD95 (mm)": ("hd95_mean", 1.0), "RMSE": ("rmse", 1.0),
               "folding (%)": ("folding_percent", 1.0), "s / case": ("seconds_mean", 1.0)}
    parts = {}
    for cohort, table in cases.items():
        summary = summarise(table)
        rows = summary[summary["structure"] == MEAN_STRUCTURE].set_index("method")
        parts[cohort] = pd.DataFrame({name: rows[key] * scale for name, (key, scale) in columns.items()})
    if not parts:
        return pd.DataFrame()
    methods = list(dict.fromkeys(m for part in parts.values() for m in part.index))
    table = pd.concat({cohort: part.reindex(methods) for cohort, part in parts.items()}, axis=1)
    table.index.name = "method"
    return table
