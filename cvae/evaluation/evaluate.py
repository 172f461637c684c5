"""``cvae evaluate``: compare registration methods on a cohort, as in the paper's table and Fig. 2.

    cvae evaluate --data DIR --split testing --methods cvae,cvae-opt,demons,voxelmorph,identity --out results/
                  [--limit N] [--checkpoint NAME] [--voxelmorph-checkpoint NAME] [--device auto]

Every case is the subject's (fixed = ES, moving = ED) pair, preprocessed once (:class:`cvae.data.dataset.PairDataset`,
cached) and given to every method (:mod:`cvae.methods`). **All metrics are computed on the preprocessed grid**
(128 x 128 x 32 voxels of 1.5 x 1.5 x 3.15 mm by default, or the grid of the learnt methods' checkpoints) and in the
same way for every method: the moving image is warped trilinearly and the ED labels with nearest-neighbour
interpolation by :func:`cvae.fields.warp` and the method's displacement; Dice and HD95 (mm) of the five structures
against the ES labels, intensity RMSE, the fraction of voxels with a Jacobian determinant <= 0 (central
differences), the mean displacement (mm) and mean displacement-gradient norm come from
:mod:`cvae.evaluation.metrics`. The time per case is each method's own registration time
(:attr:`cvae.methods.MethodResult.seconds`) measured in this run.
Subjects without both segmentations are skipped.

Outputs in ``--out``:

* ``cases.csv``: one row per subject x method x structure: ``subject, group, method, structure, dice, hd95`` and the
  per-case ``rmse, negative_jacobian_fraction, mean_displacement_mm, mean_gradient_norm, seconds``;
* ``summary.csv`` and ``summary.md``: mean and standard deviation over cases per method and structure, plus the
  mean over the five structures, folding (% of voxels) and time per case;
* ``dice_boxplot.html``, ``hd95_boxplot.html`` (+ PNG when Plotly can export images): see
  :mod:`cvae.evaluation.figures`.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cvae.data.acdc import find_subjects
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING
from cvae.data.labels import STRUCTURES
from cvae.data.preprocess import PreprocessedPair
from cvae.evaluation.figures import write_figures
from cvae.evaluation.metrics import EmptyStructureWarning, case_metrics
from cvae.fields import image_tensor, jacobian_determinant, warp, warp_labels
from cvae.io.atomic import check_writable, write_csv, write_text
from cvae.methods import Method, MethodUnavailable, displacement_array, get_method

__all__ = ["CASE_COLUMNS", "MEAN_STRUCTURE", "build_methods", "evaluation_grid", "labelled_subjects",
           "evaluate_pair", "evaluate_cohort", "summarise", "summary_markdown", "write_results", "run_evaluation"]

#: Columns of ``cases.csv``, in order.
CASE_COLUMNS: tuple[str, ...] = ("subject", "group", "method", "structure", "dice", "hd95", "rmse",
                                 "negative_jacobian_fraction", "mean_displacement_mm", "mean_gradient_norm",
                                 "seconds")
#: The ``structure`` of the summary rows that average the five structures of each case first.
MEAN_STRUCTURE = "Mean (5 structures)"
_PER_CASE = {"rmse": "rmse", "negative jacobian fraction": "negative_jacobian_fraction",
             "mean displacement mm": "mean_displacement_mm", "mean gradient norm": "mean_gradient_norm"}


def build_methods(names: Iterable[str], checkpoint: str | None = None, voxelmorph_checkpoint: str | None = None,
                  device: str = "auto") -> tuple[list[Method], list[str]]:
    """The methods ``names`` (see :data:`cvae.methods.METHODS`) and one message per method that cannot run here.

    ``checkpoint`` is the CVAE's, ``voxelmorph_checkpoint`` VoxelMorph's (``None``: their defaults).
    Raises ``ValueError`` for an unknown or repeated name.
    """
    names = [n.strip().lower() for n in names if n.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"methods are repeated in {','.join(names)}: list each once")
    methods, skipped = [], []
    for name in names:
        method_checkpoint = {"cvae": checkpoint, "cvae-opt": checkpoint, "voxelmorph": voxelmorph_checkpoint}.get(name)
        try:
            methods.append(get_method(name, method_checkpoint, device))
        except MethodUnavailable as exc:
            reason = str(exc).removeprefix(f"{name}: ")
            skipped.append(f"skipping {name}: {reason}")
    return methods, skipped


def evaluation_grid(methods: Sequence[Method]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(size, spacing)`` that every method accepts: that of the methods with a fixed grid, else the paper's."""
    grids = {m.name: (tuple(m.image_size), tuple(m.spacing)) for m in methods
             if getattr(m, "image_size", None) is not None}
    if not grids:
        return DEFAULT_SIZE, DEFAULT_SPACING
    (size, spacing), *others = grids.values()
    for name, (other_size, other_spacing) in grids.items():
        if other_size != size or not np.allclose(other_spacing, spacing, atol=1e-3):
            described = "; ".join(f"{n}: {s} voxels of {sp} mm" for n, (s, sp) in grids.items())
            raise ValueError(f"the methods need different grids ({described}): evaluate them in separate runs")
    return size, spacing  # type: ignore[return-value]


def labelled_subjects(data: str | Path, split: str | None, limit: int | None = None) -> list[str]:
    """Ids of the subjects of ``split`` with both ED and ES segmentations (the first ``limit`` of them)."""
    infos = [i for i in find_subjects(data, split, skip_bad=True) if i.ed_label is not None and i.es_label is not None]
    if not infos:
        raise ValueError(f"no subject with ED and ES segmentations under {data} (split {split}): nothing to score")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        infos = infos[:limit]
    return [i.subject for i in infos]


def evaluate_pair(method: Method, pair: PreprocessedPair) -> list[dict[str, Any]]:
    """Register one preprocessed pair with ``method``; one row per structure (columns of :data:`CASE_COLUMNS`)."""
    spacing = tuple(float(s) for s in pair.spacing)
    fixed, moving = image_tensor(pair.fixed), image_tensor(pair.moving)
    result = method.register(fixed, moving, spacing)
    u = torch.from_numpy(displacement_array(result, pair.fixed.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyStructureWarning)  # absent structures are nan, counted in the summary
        row = case_metrics(spacing=spacing, warped=warp(moving, u), fixed=fixed,
                           warped_label=warp_labels(image_tensor(pair.moving_label), u)[0, 0],
                           fixed_label=pair.fixed_label,
                           jacdet=jacobian_determinant(u)[0], displacement=u[0])
    per_case = {column: row[key] for key, column in _PER_CASE.items()}
    return [{"subject": pair.subject, "group": pair.group, "method": method.name, "structure": structure,
             "dice": row[f"dice {structure}"], "hd95": row[f"hd95 {structure}"], **per_case,
             "seconds": float(result.seconds)} for structure in STRUCTURES]


def evaluate_cohort(data: str | Path, methods: Sequence[Method], split: str | None = "testing",
                    limit: int | None = None, cache_dir: str | Path | None = None, progress: bool = True,
                    on_case: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """The ``cases`` table (columns :data:`CASE_COLUMNS`) of ``methods`` on the labelled subjects of ``data``.

    Pairs are preprocessed on :func:`evaluation_grid` (cached in ``cache_dir``, default ``$CVAE_CACHE``); a subject
    whose files fail to load is skipped with a warning. ``progress`` shows a tqdm bar over cases; ``on_case(done,
    total, subject)`` is called after each case (e.g. by the app).
    """
    if not methods:
        raise ValueError("no method to evaluate")
    size, spacing = evaluation_grid(methods)
    subjects = labelled_subjects(data, split, limit)
    dataset = PairDataset(data, split, size=size, spacing=spacing, cache_dir=cache_dir, subjects=subjects)
    dataset.prepare(progress=progress, workers=os.cpu_count() or 1)  # up front, in parallel; bad subjects dropped
    rows: list[dict[str, Any]] = []
    bar = tqdm(range(len(dataset)), desc="evaluating", unit="case", disable=not progress)
    for index in bar:
        subject = dataset.infos[index].subject
        bar.set_postfix_str(subject)
        try:
            pair = dataset.pair(index)
        except ValueError as exc:  # ACDCError is a ValueError
            warnings.warn(f"skipping {subject}: {exc}", stacklevel=2)
            continue
        for method in methods:
            rows += evaluate_pair(method, pair)
        if on_case is not None:
            on_case(index + 1, len(dataset), subject)
    if not rows:
        raise ValueError(f"no subject of {data} could be evaluated")
    return pd.DataFrame(rows, columns=list(CASE_COLUMNS))


def _mean_std(values: pd.Series) -> tuple[float, float]:
    finite = values.dropna()
    if finite.empty:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else math.nan


def summarise(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over cases, NaNs left out) per method and structure.

    Columns: ``method, structure, n, dice_mean, dice_std, hd95_mean, hd95_std`` and the per-method
    ``folding_percent`` (mean % of voxels with det J <= 0), ``mean_displacement_mm``, ``rmse``,
    ``seconds_mean``, ``seconds_std``. Each method also gets a row :data:`MEAN_STRUCTURE`, whose statistics are
    over the cases' means of the five structures.
    """
    out = []
    methods = list(dict.fromkeys(cases["method"]))
    for method in methods:
        rows = cases[cases["method"] == method]
        per_case = rows.groupby("subject", sort=False).agg(
            dice=("dice", "mean"), hd95=("hd95", "mean"), seconds=("seconds", "first"),
            folding=("negative_jacobian_fraction", "first"), displacement=("mean_displacement_mm", "first"),
            rmse=("rmse", "first"))
        common = {"folding_percent": 100 * float(per_case["folding"].mean()),
                  "mean_displacement_mm": float(per_case["displacement"].mean()),
                  "rmse": float(per_case["rmse"].mean()),
                  "seconds_mean": _mean_std(per_case["seconds"])[0], "seconds_std": _mean_std(per_case["seconds"])[1]}
        groups = [(s, rows[rows["structure"] == s]) for s in STRUCTURES] + [(MEAN_STRUCTURE, per_case)]
        for structure, table in groups:
            dice_mean, dice_std = _mean_std(table["dice"])
            hd_mean, hd_std = _mean_std(table["hd95"])
            out.append({"method": method, "structure": structure, "n": int(table["dice"].notna().sum()),
                        "dice_mean": dice_mean, "dice_std": dice_std, "hd95_mean": hd_mean, "hd95_std": hd_std,
                        **common})
    return pd.DataFrame(out)


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, title: str = "Evaluation", notes: Sequence[str] = ()) -> str:
    """The summary as Markdown: Dice (%) and HD95 (mm) tables (structures x methods) and a per-method table."""
    methods = list(dict.fromkeys(summary["method"]))
    structures = list(STRUCTURES) + [MEAN_STRUCTURE]
    lines = [f"# {title}", ""] + [f"- {note}" for note in notes] + ([""] if notes else [])

    def table(column: str, scale: float, digits: int) -> list[str]:
        rows = ["| structure | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for structure in structures:
            cells = []
            for method in methods:
                hit = summary[(summary["method"] == method) & (summary["structure"] == structure)].iloc[0]
                cells.append(_pm(hit[f"{column}_mean"], hit[f"{column}_std"], scale, digits))
            rows.append(f"| {structure} | " + " | ".join(cells) + " |")
        return rows

    lines += ["## Dice (%), mean ± std over cases", ""] + table("dice", 100.0, 1) + [""]
    lines += ["## HD95 (mm), mean ± std over cases", ""] + table("hd95", 1.0, 2) + [""]
    lines += ["## Per method", "",
              "| method | cases | mean Dice (%) | mean HD95 (mm) | folding (% voxels, det J <= 0) | mean abs(u) (mm) "
              "| time per case (s) |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        hit = summary[(summary["method"] == method) & (summary["structure"] == MEAN_STRUCTURE)].iloc[0]
        lines.append(f"| {method} | {hit['n']} | {_pm(hit['dice_mean'], hit['dice_std'], 100.0)} | "
                     f"{_pm(hit['hd95_mean'], hit['hd95_std'], 1.0, 2)} | {hit['folding_percent']:.3f} | "
                     f"{hit['mean_displacement_mm']:.2f} | {_pm(hit['seconds_mean'], hit['seconds_std'], 1.0, 3)} |")
    return "\n".join(lines) + "\n"


def write_results(cases: pd.DataFrame, out: str | Path, title: str = "Evaluation", notes: Sequence[str] = ()
                  ) -> dict[str, Path]:
    """Write ``cases.csv``, ``summary.csv``, ``summary.md`` and the box plots into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(cases)
    figures = write_figures(cases, out)
    write_csv(cases, out / "cases.csv")
    write_csv(summary, out / "summary.csv")
    write_text(out / "summary.md", summary_markdown(summary, title, notes))
    return {p.name: p for p in [out / "cases.csv", out / "summary.csv", out / "summary.md", *figures]}


def run_evaluation(data: str | Path, methods: Sequence[Method], out: str | Path, split: str | None = "testing",
                   limit: int | None = None, cache_dir: str | Path | None = None,
                   title: str = "Registration evaluation", skipped: Sequence[str] = (), progress: bool = True,
                   on_case: Callable[[int, int, str], None] | None = None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """:func:`evaluate_cohort` of ``methods`` (from :func:`build_methods`), written by :func:`write_results` into
    ``out`` with notes on the data, the grid and the ``skipped`` methods: what ``cvae evaluate`` and the app's
    Benchmark page run. Returns ``(cases, written paths)``; ``ValueError`` when no method can run."""
    if not methods:
        raise ValueError("none of the requested methods can run here" + (f" ({skipped[0]})" if skipped else ""))
    check_writable(out)
    size, spacing = evaluation_grid(methods)
    cases = evaluate_cohort(data, methods, split, limit, cache_dir, progress=progress, on_case=on_case)
    grid = f"{'x'.join(map(str, size))} voxels of {' x '.join(f'{s:g}' for s in spacing)} mm"
    notes = [f"data: {data} ({split or 'all'}), {cases['subject'].nunique()} cases; metrics on the preprocessed grid "
             f"({grid}), identical for every method", *skipped]
    return cases, write_results(cases, out, title, notes)
