"""`cvae evaluate` end to end on the tiny cohort: tables, identity = unregistered scores, summary, figures."""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cvae.checkpoint import save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING
from cvae.data.labels import STRUCTURES
from cvae.evaluation.evaluate import (
    CASE_COLUMNS,
    MEAN_STRUCTURE,
    build_methods,
    evaluate_pair,
    evaluation_grid,
    run_evaluation,
    summarise,
    summary_markdown,
)
from cvae.commands.evaluate import main
from cvae.evaluation.figures import box_plot, box_plot_png
from cvae.evaluation.reference import COHORTS, cohort_comparison, reference_cases
from cvae.evaluation.metrics import dice, hd95
from cvae.methods import MethodResult
from cvae.model import CVAERegistration, ModelConfig

from conftest import TINY_MODEL, TINY_SIZE, TINY_SPACING, dice_by_hand


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", CVAERegistration(ModelConfig(**TINY_MODEL)),
                           spacing=TINY_SPACING)


@pytest.fixture(scope="module")
def run(tiny_cohort, tiny_cache, checkpoint, tmp_path_factory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("results")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--data", str(tiny_cohort), "--split", "testing", "--methods", "identity,demons,cvae,voxelmorph",
                     "--out", str(out), "--limit", "2", "--checkpoint", str(checkpoint), "--voxelmorph-checkpoint",
                     str(out / "no-voxelmorph-here"), "--device", "cpu", "--cache", str(tiny_cache)])
    return out, code, err.getvalue()


def test_cases_table_has_one_row_per_case_method_structure(run):
    out, code, err = run
    assert code == 0
    assert "skipping voxelmorph" in err  # unavailable methods are skipped with a message, not fatal
    cases = pd.read_csv(out / "cases.csv")
    assert list(cases.columns) == list(CASE_COLUMNS)
    assert len(cases) == 2 * 3 * len(STRUCTURES)
    assert set(cases["method"]) == {"identity", "demons", "cvae"}
    assert cases.groupby(["subject", "method"]).size().eq(len(STRUCTURES)).all()
    assert (cases["seconds"] > 0).all() and cases["dice"].between(0, 1).all()


def test_identity_scores_are_the_unregistered_scores(run, tiny_cohort, tiny_cache):
    out, _, _ = run
    cases = pd.read_csv(out / "cases.csv")
    identity = cases[cases["method"] == "identity"]
    subjects = sorted(identity["subject"].unique())
    dataset = PairDataset(tiny_cohort, "testing", TINY_SIZE, TINY_SPACING, cache_dir=tiny_cache, subjects=subjects)
    for index, subject in enumerate(dataset.subjects):
        pair = dataset.pair(index)
        for structure, values in STRUCTURES.items():
            moving, fixed = np.isin(pair.moving_label, values), np.isin(pair.fixed_label, values)
            row = identity[(identity["subject"] == subject) & (identity["structure"] == structure)].iloc[0]
            assert row["dice"] == pytest.approx(dice(moving, fixed), abs=1e-9)
            if moving.any() and fixed.any():
                assert row["hd95"] == pytest.approx(hd95(moving, fixed, TINY_SPACING), abs=1e-9)
        rows = identity[identity["subject"] == subject]
        assert (rows["negative_jacobian_fraction"] == 0).all() and (rows["mean_displacement_mm"] == 0).all()


def test_demons_improves_on_identity(run):
    out, _, _ = run
    cases = pd.read_csv(out / "cases.csv")
    mean_dice = cases.groupby("method")["dice"].mean()
    assert mean_dice["demons"] > mean_dice["identity"] + 0.02
    demons = cases[cases["method"] == "demons"]
    assert (demons["mean_displacement_mm"] > 0.5).all()


def test_summary_files(run):
    out, _, _ = run
    cases = pd.read_csv(out / "cases.csv")
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * (len(STRUCTURES) + 1)
    for method in ("identity", "demons", "cvae"):
        rows = cases[cases["method"] == method]
        lv = summary[(summary["method"] == method) & (summary["structure"] == "LV blood pool")].iloc[0]
        values = rows[rows["structure"] == "LV blood pool"]["dice"]
        assert lv["dice_mean"] == pytest.approx(values.mean()) and lv["dice_std"] == pytest.approx(values.std())
        mean_row = summary[(summary["method"] == method) & (summary["structure"] == MEAN_STRUCTURE)].iloc[0]
        assert mean_row["dice_mean"] == pytest.approx(rows.groupby("subject")["dice"].mean().mean())
        assert mean_row["seconds_mean"] == pytest.approx(rows.groupby("subject")["seconds"].first().mean())
    text = (out / "summary.md").read_text()
    assert "## Dice (%)" in text and "| demons |" in text and MEAN_STRUCTURE in text
    assert "metrics on the preprocessed grid (32x32x16 voxels of 6 x 6 x 6.3 mm)" in text
    assert (out / "dice_boxplot.html").stat().st_size > 1000 and (out / "hd95_boxplot.html").is_file()
    assert (out / "dice_boxplot.png").stat().st_size > 1000 and (out / "hd95_boxplot.png").is_file()
    assert "PNG" not in text  # no "skipped" note: PNGs come from the installed stack


def test_box_plot_has_one_box_trace_per_method():
    cases = pd.DataFrame([{"method": m, "structure": s, "dice": d, "hd95": 3.0}
                          for m, d in (("a", 0.7), ("b", 0.9)) for s in STRUCTURES])
    figure = box_plot(cases, "dice")
    assert [t.name for t in figure.data] == ["a", "b"]
    assert list(figure.data[1].y) == [0.9] * len(STRUCTURES)
    with pytest.raises(ValueError, match="metric"):
        box_plot(cases, "rmse")


def test_png_box_plot_draws_each_method_at_its_values(tmp_path):
    """The PNG (matplotlib, no browser): method "high" (first colour) is drawn above method "low" (second colour)."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    cases = pd.DataFrame([{"method": m, "structure": s, "dice": d + 0.01 * k, "hd95": 3.0}
                          for m, d in (("high", 0.9), ("low", 0.2)) for s in STRUCTURES for k in range(5)])
    path = box_plot_png(cases, "dice", tmp_path / "dice.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)[..., :3]
    assert image.shape == (550, 1000, 3)
    rows = {}
    for method, colour in zip(("high", "low"), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        rgb = np.array(to_rgb(colour))
        hits = np.argwhere(np.abs(image - rgb).max(axis=-1) < 0.05)  # the points and medians, drawn opaque
        assert len(hits) > 50, method
        rows[method] = np.median(hits[:, 0])
    assert rows["high"] < rows["low"] - 200  # image rows grow downwards: higher Dice, higher up
    with pytest.raises(ValueError, match="metric"):
        box_plot_png(cases, "rmse", tmp_path / "x.png")


def test_summary_handles_single_cases_and_empty_structures():
    rows = [{"subject": "p1", "group": "NOR", "method": "m", "structure": s, "dice": math.nan if s == "RV" else 0.5,
             "hd95": 2.0, "rmse": 0.1, "negative_jacobian_fraction": 0.01, "mean_displacement_mm": 1.0,
             "mean_gradient_norm": 0.1, "seconds": 0.2} for s in STRUCTURES]
    summary = summarise(pd.DataFrame(rows))
    rv = summary[summary["structure"] == "RV"].iloc[0]
    assert rv["n"] == 0 and math.isnan(rv["dice_mean"])
    assert summary[summary["structure"] == MEAN_STRUCTURE].iloc[0]["dice_mean"] == pytest.approx(0.5)
    assert summary.iloc[0]["folding_percent"] == pytest.approx(1.0)
    assert "n/a" in summary_markdown(summary)


def test_the_cohort_comparison_puts_each_cohort_beside_the_other(tmp_path):
    """Two cohorts' cases written as ``cvae evaluate`` writes them: per method and cohort the mean over cases of
    the per-case means of the five structures, computed here by hand; a method one cohort lacks gets NaNs; the
    shipped reference holds both cohorts and every method of the comparison."""
    rng = np.random.default_rng(3)
    cases = {}
    for cohort, methods in (("own", ("cvae", "demons")), ("foreign", ("demons", "cvae", "identity"))):
        cases[cohort] = pd.DataFrame([{"subject": f"p{k}", "group": "NOR", "method": m, "structure": s,
                                       "dice": rng.uniform(0.5, 0.9), "hd95": rng.uniform(2, 9), "rmse": 0.1 * k,
                                       "negative_jacobian_fraction": 0.0, "mean_displacement_mm": 1.0,
                                       "mean_gradient_norm": 0.1, "seconds": 2.0 * k}
                                      for m in methods for k in (1, 2, 3) for s in STRUCTURES])
        cases[cohort].to_csv(tmp_path / f"cases-{cohort}.csv", index=False)
    table = cohort_comparison(reference_cases(tmp_path))
    assert list(table.index) == ["cvae", "demons", "identity"]
    for cohort, frame in cases.items():
        for method, rows in frame.groupby("method"):
            by_case = rows.groupby("subject")[["dice", "hd95"]].mean()
            assert table.loc[method, (cohort, "Dice (%)")] == pytest.approx(100 * by_case["dice"].mean())
            assert table.loc[method, (cohort, "HD95 (mm)")] == pytest.approx(by_case["hd95"].mean())
            assert table.loc[method, (cohort, "RMSE")] == pytest.approx(0.2)
            assert table.loc[method, (cohort, "s / case")] == pytest.approx(4.0)
    assert table.loc["identity", ("own", "Dice (%)")] != table.loc["identity", ("own", "Dice (%)")]  # NaN
    assert cohort_comparison({}).empty and reference_cases(tmp_path / "none") == {}
    shipped = cohort_comparison(reference_cases())
    assert set(shipped.columns.get_level_values(0)) == set(COHORTS)
    assert {"cvae", "cvae-opt", "demons", "voxelmorph", "identity"} <= set(shipped.index)
    assert not shipped.loc["cvae"].isna().any()


def test_run_evaluation_of_the_identity_writes_tables_whose_notes_name_the_data_and_grid(tiny_cohort, tiny_cache,
                                                                                          tmp_path):
    methods, skipped = build_methods(["identity", "voxelmorph"], voxelmorph_checkpoint=str(tmp_path / "no-vxm"))
    assert [m.name for m in methods] == ["identity"] and len(skipped) == 1 and "voxelmorph" in skipped[0]
    out = tmp_path / "identity"
    cases, paths = run_evaluation(tiny_cohort, methods, out, "testing", limit=2, cache_dir=tiny_cache,
                                  title="Identity check", skipped=skipped, progress=False)
    assert {"cases.csv", "summary.csv", "summary.md"} <= set(paths) and all(p.parent == out for p in paths.values())
    written = pd.read_csv(out / "cases.csv", dtype={"subject": str})
    pd.testing.assert_frame_equal(written, cases.astype({"subject": str}), check_dtype=False)
    # no method with a grid of its own: the paper's grid; the identity's scores are the unregistered pair's
    dataset = PairDataset(tiny_cohort, "testing", DEFAULT_SIZE, DEFAULT_SPACING, cache_dir=tiny_cache)
    assert sorted(cases["subject"].unique()) == dataset.subjects[:2]
    for index, subject in enumerate(dataset.subjects[:2]):
        pair = dataset.pair(index)
        for structure, values in STRUCTURES.items():
            row = cases[(cases["subject"] == subject) & (cases["structure"] == structure)].iloc[0]
            expected = dice_by_hand(np.isin(pair.moving_label, values), np.isin(pair.fixed_label, values))
            assert row["dice"] == pytest.approx(expected, abs=1e-12, nan_ok=True)
    summary = pd.read_csv(out / "summary.csv")
    mean_row = summary[summary["structure"] == MEAN_STRUCTURE].iloc[0]
    assert mean_row["n"] == 2 and mean_row["dice_mean"] == pytest.approx(cases.groupby("subject")["dice"].mean().mean())
    text = (out / "summary.md").read_text()
    assert text.startswith("# Identity check\n")
    assert (f"- data: {tiny_cohort} (testing), 2 cases; metrics on the preprocessed grid (128x128x32 voxels of "
            "1.5 x 1.5 x 3.15 mm), identical for every method") in text
    assert f"- {skipped[0]}" in text


def test_run_evaluation_without_a_method_that_can_run_is_a_one_line_error(tiny_cohort, tmp_path):
    methods, skipped = build_methods(["voxelmorph"], voxelmorph_checkpoint=str(tmp_path / "no-vxm"))
    assert methods == []
    message = r"^none of the requested methods can run here \(skipping voxelmorph: "
    with pytest.raises(ValueError, match=message) as info:
        run_evaluation(tiny_cohort, methods, tmp_path / "out", skipped=skipped, progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="^none of the requested methods can run here$"):
        run_evaluation(tiny_cohort, [], tmp_path / "out", progress=False)


class _Shift:
    """A fake method moving every voxel by one voxel along X (interface check of evaluate_pair)."""

    name, image_size, spacing = "shift", None, None

    def register(self, fixed, moving, spacing):
        u = torch.zeros((1, 3, *fixed.shape[2:]))
        u[:, 0] = 1.0
        return MethodResult(u.numpy(), 0.5)


def test_evaluate_pair_uses_the_method_displacement(tiny_cohort, tiny_cache):
    dataset = PairDataset(tiny_cohort, "testing", TINY_SIZE, TINY_SPACING, cache_dir=tiny_cache)
    pair = dataset.pair(0)
    rows = evaluate_pair(_Shift(), pair)
    assert [r["structure"] for r in rows] == list(STRUCTURES)
    assert rows[0]["seconds"] == 0.5 and rows[0]["mean_displacement_mm"] == pytest.approx(TINY_SPACING[0])
    shifted = np.concatenate([pair.moving_label[1:], pair.moving_label[-1:]], axis=0)  # M(x + e_X), border kept
    values = STRUCTURES["Whole heart"]
    assert rows[-1]["dice"] == pytest.approx(dice(np.isin(shifted, values), np.isin(pair.fixed_label, values)))


def test_grids_of_methods_must_agree():
    class Net:
        def __init__(self, size):
            self.name, self.image_size, self.spacing = f"net{size[0]}", size, (1.5, 1.5, 3.15)

    assert evaluation_grid([_Shift()]) == ((128, 128, 32), (1.5, 1.5, 3.15))
    assert evaluation_grid([_Shift(), Net((64, 64, 16))])[0] == (64, 64, 16)
    with pytest.raises(ValueError, match="different grids"):
        evaluation_grid([Net((64, 64, 16)), Net((128, 128, 32))])


@pytest.mark.parametrize("args, message", [
    (["--methods", "cvae,snake"], "unknown method"),
    (["--methods", "identity", "--data", "/nonexistent/cohort"], "not found"),
    (["--methods", "voxelmorph", "--voxelmorph-checkpoint", "/nonexistent/vxm"], "none of the requested"),
    (["--methods", "identity", "--limit", "0"], "--limit"),
])
def test_bad_input_exits_2(args, message, tiny_cohort, tmp_path, capsys):
    full = ["--data", str(tiny_cohort), "--out", str(tmp_path / "r"), "--no-progress"] + args
    assert main(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cvae evaluate: error:") and message in err[-1]
    assert not (tmp_path / "r").exists()


def test_merging_runs_keeps_each_method_once_on_common_cases(run, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "merge_evaluations", Path(__file__).resolve().parent.parent / "benchmarks" / "merge_evaluations.py")
    merger = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merger)
    out = run[0]
    cases = pd.read_csv(out / "cases.csv", dtype={"subject": str})
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    # run a: cvae and identity on both cases; run b: demons on one case, and a stale identity that must be ignored
    cases[cases["method"] != "demons"].to_csv(first / "cases.csv", index=False)
    one = cases["subject"].iloc[0]
    stale = cases[(cases["subject"] == one) & (cases["method"] == "identity")].assign(dice=0.0)
    pd.concat([cases[(cases["method"] == "demons") & (cases["subject"] == one)], stale]).to_csv(
        second / "cases.csv", index=False)
    assert merger.main([str(first), str(second), "--out", str(tmp_path / "merged")]) == 0
    merged = pd.read_csv(tmp_path / "merged" / "cases.csv", dtype={"subject": str})
    assert set(merged["subject"]) == {one} and set(merged["method"]) == {"cvae", "identity", "demons"}
    expected = cases[cases["subject"] == one].sort_values(["method", "structure"])["dice"].to_numpy()
    assert np.allclose(merged.sort_values(["method", "structure"])["dice"].to_numpy(), expected, equal_nan=True)
    assert "1 common cases" in (tmp_path / "merged" / "summary.md").read_text()
    assert merger.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("where", ["a file", "inside a file", "unwritable"])
def test_an_out_that_cannot_be_written_fails_before_any_case(where, tiny_cohort, tiny_cache, tmp_path, monkeypatch,
                                                             capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    out = {"a file": a_file, "inside a file": a_file / "results", "unwritable": tmp_path / "results"}[where]
    message = {"a file": "is a file: give a directory", "inside a file": "is a file, not a folder",
               "unwritable": "cannot write in"}[where]
    if where == "unwritable":
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("cvae.io.atomic.tempfile.mkstemp", denied)
    evaluated = []

    def evaluate_pair_spy(*args, **kwargs):
        evaluated.append(args)
        raise RuntimeError("a case was evaluated before --out was checked")

    monkeypatch.setattr("cvae.evaluation.evaluate.evaluate_pair", evaluate_pair_spy)
    assert main(["--data", str(tiny_cohort), "--methods", "identity", "--out", str(out), "--cache", str(tiny_cache),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cvae evaluate: error: --out {out}") and message in err[0], err
    assert evaluated == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]
