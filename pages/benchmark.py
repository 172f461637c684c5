"""Benchmark page: the shipped reference evaluation on both cohorts (own and held-out foreign), the results
``cvae evaluate`` wrote (ours vs demons vs VoxelMorph vs identity), and a button to run a small evaluation
(5 subjects) from the app."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import widgets as W
from cvae.checkpoint import resolve_checkpoint
from cvae.evaluation.evaluate import MEAN_STRUCTURE, build_methods, run_evaluation, summarise
from cvae.evaluation.figures import box_plot
from cvae.evaluation.reference import COHORTS, cohort_comparison, reference_cases
from cvae.methods import METHODS
from cvae.paths import results_root

#: Subfolder of the results folder where the app's small evaluation goes (the full results are never overwritten).
QUICK = "app-limit5"
QUICK_LIMIT = 5
#: Subfolder of the results folder for an evaluation of the held-out foreign cohort (``cvae evaluate --data
#: data/foreign-acdc --out results/foreign``).
FOREIGN = "foreign"
#: How the reference table prints each measure.
FORMATS = {"Dice (%)": "{:.1f}", "HD95 (mm)": "{:.2f}", "RMSE": "{:.3f}", "folding (%)": "{:.3f}", "s / case": "{:.3g}"}

W.ensure_app_entry()
st.title("Benchmark")
st.caption("Every method registers the same preprocessed ED → ES pairs; the same code warps the ED segmentation "
           "and scores it against the ES segmentation (Dice, HD95), and measures folding (det J ≤ 0) and time. "
           "**identity** is no registration at all: the floor every method must beat.")


def _result_folders() -> dict[str, Path]:
    """The results folder and its subfolders that hold a ``cases.csv``, by display name."""
    root = results_root()
    names = {root: f"full evaluation ({root})", root / FOREIGN: f"held-out foreign cohort ({root / FOREIGN})",
             root / QUICK: f"quick run, {QUICK_LIMIT} subjects ({root / QUICK})"}
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    return {names.get(p, f"{p.name} ({p})"): p for p in folders if (p / "cases.csv").is_file()}


@st.cache_data(show_spinner=False, max_entries=4)
def _cases(path: str, stamp: float) -> pd.DataFrame:
    del stamp
    return pd.read_csv(path, dtype={"subject": str, "group": str, "method": str, "structure": str})


def _summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary[summary["structure"] == MEAN_STRUCTURE].set_index("method")
    return pd.DataFrame({
        "cases": rows["n"],
        "Dice (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(rows["dice_mean"], rows["dice_std"].fillna(0))],
        "HD95 (mm)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(rows["hd95_mean"], rows["hd95_std"].fillna(0))],
        "folding (% voxels)": rows["folding_percent"].map(lambda v: f"{v:.3f}"),
        "mean |u| (mm)": rows["mean_displacement_mm"].map(lambda v: f"{v:.2f}"),
        "time per case (s)": rows["seconds_mean"].map(lambda v: f"{v:.3g}"),
    }, index=rows.index)


@W.guard
def _reference() -> None:
    cases = reference_cases()
    table = cohort_comparison(cases)
    if table.empty:
        return
    st.subheader("Reference: both cohorts")
    shown = pd.DataFrame({f"{measure} · {cohort}": table[(cohort, measure)].map(
        lambda v, f=FORMATS[measure]: "–" if pd.isna(v) else f.format(v)) for measure in FORMATS for cohort in cases},
        index=table.index)
    st.dataframe(shown, key="benchmark_reference")
    st.caption("Mean over the 100 test subjects of each cohort and the five structures, shipped with the project "
               "(`benchmarks/evaluation/`, commands in `benchmarks/RESULTS.md`): "
               + "; ".join(f"**{c}**: {COHORTS[c]}" for c in cases) + ". A model is only as good as the hearts it "
               "saw: the foreign cohort measures how it does on hearts drawn another way. cvae-opt is the CVAE "
               "followed by test-time optimisation of the velocity; cvae-dr and cvae-opt-dr are the same with the "
               "checkpoint `synthetic-acdc-dr`, trained with domain randomisation (`--methods cvae --checkpoint "
               "synthetic-acdc-dr`); voxelmorph-dr is the VoxelMorph baseline fine-tuned the same way "
               "(`voxelmorph-synthetic-acdc-dr`), the fair comparison for cvae-dr.")
    cohort = st.segmented_control("Box plots of the cohort", list(cases), default=next(iter(cases)),
                                  key="benchmark_reference_cohort", format_func=COHORTS.get) or next(iter(cases))
    st.plotly_chart(box_plot(cases[cohort], "dice"), key="benchmark_reference_boxes")


@W.guard
def _show(folder: Path) -> None:
    cases_path = folder / "cases.csv"
    cases = _cases(str(cases_path), cases_path.stat().st_mtime)
    summary = summarise(cases)
    st.subheader("Summary (mean over the five structures)")
    st.dataframe(_summary_table(summary))
    metric = st.segmented_control("Box plots of", ["dice", "hd95"], default="dice", key="benchmark_metric",
                                  format_func={"dice": "Dice", "hd95": "HD95 (mm)"}.get) or "dice"
    st.plotly_chart(box_plot(cases, metric), key="benchmark_boxes")
    st.caption("One box per method and structure; each point is one subject. LV = left ventricle, RV = right.")
    per_method = summary[summary["structure"] == MEAN_STRUCTURE].set_index("method")["seconds_mean"]
    st.subheader("Time per registration")
    st.plotly_chart(F.timing_figure(per_method.to_dict()), key="benchmark_times")
    st.caption("Wall-clock seconds per case on this machine (log scale). The paper: 0.32 s on a GPU for the CVAE, "
               "108 s on a CPU for demons.")
    if (folder / "summary.md").is_file():
        with st.expander("summary.md (as written by `cvae evaluate`)"):
            st.markdown((folder / "summary.md").read_text())


@W.guard
def _quick_run() -> None:
    st.subheader(f"Run a small evaluation ({QUICK_LIMIT} subjects)")
    methods = st.multiselect("Methods", METHODS, default=list(METHODS), key="benchmark_methods")
    st.caption(f"Equivalent to `cvae evaluate --limit {QUICK_LIMIT} --out {results_root() / QUICK}`. cvae-opt (the "
               "CVAE with test-time optimisation) takes seconds per case and demons seconds to minutes on a CPU; "
               "unavailable methods (e.g. no VoxelMorph checkpoint) are skipped with a note.")
    if not st.button("Run the evaluation", type="primary", disabled=not methods, icon=":material/play_arrow:",
                     key="benchmark_run"):
        return
    root = H.cohort_root()
    built, skipped = build_methods(methods, checkpoint=str(resolve_checkpoint(C.active_checkpoint())))
    for message in skipped:
        st.warning(message)
    bar = st.progress(0.0, text="Evaluating…")
    run_evaluation(root, built, results_root() / QUICK, H.study_split(C.cohort_subjects(root)), QUICK_LIMIT,
                   title=f"Quick evaluation ({QUICK_LIMIT} subjects, run from the app)", skipped=skipped,
                   progress=False, on_case=lambda done, total, subject: bar.progress(
                       done / total, text=f"{subject}: {done} / {total}"))
    bar.empty()
    st.session_state["benchmark_show_quick"] = True
    st.toast(f"Wrote the results to {results_root() / QUICK}", icon=":material/check:")
    st.rerun()


@W.guard
def main() -> None:
    _reference()
    folders = _result_folders()
    if st.session_state.pop("benchmark_show_quick", False):  # a quick run just finished: show its results
        st.session_state["benchmark_folder"] = next(name for name in folders if QUICK in name)
    if folders:
        name = st.radio("Results", list(folders), key="benchmark_folder")
        _show(folders[name])
    else:
        st.info(f"No evaluation results in `{results_root()}` yet: run `cvae evaluate` (all test subjects, "
                "minutes to hours) or the small evaluation below.", icon=":material/info:")
    _quick_run()


main()
