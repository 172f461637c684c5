"""cvae.latent.analysis: leak-free CCA + SVM classification vs the paper's protocol, permutation test, projections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cvae.latent.analysis as analysis
from cvae.data.labels import GROUPS
from cvae.latent import mu_columns
from cvae.latent.analysis import OneHotCCA, classify, make_classifier, project

pytestmark = pytest.mark.usefixtures("isolated_cache")


def code_table(per_group: int, d: int, seed: int = 0, separation: float = 0.0,
               groups: tuple[str, ...] = GROUPS) -> pd.DataFrame:
    """Cohort table of Gaussian codes; group ``k`` is shifted by ``separation`` along axis ``k`` (none for 0)."""
    rng = np.random.default_rng(seed)
    group = np.repeat(groups, per_group)
    x = rng.normal(size=(len(group), d))
    for k, g in enumerate(groups):
        x[group == g, k % d] += separation
    table = pd.DataFrame(x, columns=mu_columns(d))
    table.insert(0, "group", group)
    table.insert(0, "subject", [f"patient{i:03d}" for i in range(1, len(group) + 1)])
    table["LVEF"] = np.nan  # subjects without labels: the codes alone are used
    return table


def test_leak_free_accuracy_is_chance_on_noise_where_the_papers_protocol_is_inflated() -> None:
    # 50 subjects with 32-D pure-noise codes: no information about the group.
    for seed in (0, 1):
        report = classify(code_table(10, 32, seed=seed), folds=10, permutations=0, seed=seed)
        assert report.chance == pytest.approx(0.2) and report.n_folds == 10 and report.n_components == 4
        assert report.accuracy_mean < 0.35
        # CCA fitted on all codes has seen every test fold's labels: far above chance.
        assert report.paper_accuracy_mean > report.accuracy_mean + 0.3
        assert report.paper_accuracy_mean > 0.6


def test_separable_codes_classify_well_with_small_permutation_p_value() -> None:
    table = code_table(8, 6, seed=2, separation=6.0)
    report = classify(table, folds=4, permutations=30, seed=0)
    assert report.accuracy_mean > 0.9 and report.p_value is not None and report.p_value < 0.05
    assert report.p_value == pytest.approx(1 / 31)  # no permutation reached the true accuracy
    assert len(report.fold_accuracies) == 4 and report.accuracy_std == pytest.approx(np.std(report.fold_accuracies))
    confusion = report.confusion
    assert list(confusion.index) == list(GROUPS) == list(confusion.columns) == report.groups
    assert confusion.to_numpy().sum() == 40 and (confusion.sum(axis=1) == 8).all()
    assert np.trace(confusion.to_numpy()) / 40 == pytest.approx(report.accuracy_mean, abs=1e-9)
    noise = classify(code_table(8, 6, seed=2), folds=4, permutations=30, seed=0)
    assert noise.p_value > 0.05
    text = report.to_markdown()
    assert "leak-free" in text and "paper's protocol (leaky)" in text and f"{100 * report.accuracy_mean:.1f}" in text
    assert "only 4 exist" in text
    as_dict = report.to_dict()
    assert as_dict["confusion"] == confusion.to_numpy().tolist() and as_dict["n_subjects"] == 40


def test_one_hot_cca_transformer() -> None:
    table = code_table(6, 8, separation=4.0)
    x, y = table[mu_columns(8)].to_numpy(), table["group"].to_numpy()
    cca = OneHotCCA().fit(x, y)
    assert cca.n_components_ == 4 and cca.transform(x).shape == (30, 4)
    assert OneHotCCA(n_components=2).fit(x, y).transform(x).shape == (30, 2)
    assert OneHotCCA().fit(x[:, :2], y).n_components_ == 2  # capped by the code size
    # The first canonical component separates the groups better than any raw axis.
    z = cca.transform(x)
    ratio = [np.var([v[y == g].mean() for g in GROUPS]) / np.mean([v[y == g].var() for g in GROUPS])
             for v in (z[:, 0], *x.T)]
    assert ratio[0] >= max(ratio[1:])
    pipe = make_classifier().fit(x, y)
    assert (pipe.predict(x) == y).mean() > 0.9
    with pytest.raises(ValueError, match="at least 2 groups"):
        OneHotCCA().fit(x, np.full(30, "NOR"))


def test_bad_cohorts_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="single group"):
        classify(code_table(12, 4, groups=("NOR",)), permutations=0)
    one = code_table(4, 4)
    with pytest.raises(ValueError, match="only 1 subject"):
        classify(pd.concat([one, one.iloc[[0]].replace({"group": {"NOR": "XYZ"}})]), permutations=0)
    with pytest.warns(UserWarning, match="reduced cross-validation from 10 to 4 folds"):
        report = classify(code_table(4, 4, separation=5.0), folds=10, permutations=0)
    assert report.n_folds == 4 and any("4 folds" in note for note in report.notes)
    nan = code_table(4, 4)
    nan.loc[2, "mu_1"] = np.nan
    with pytest.raises(ValueError, match="patient003"):
        classify(nan)
    with pytest.raises(ValueError, match="no latent code columns"):
        classify(code_table(4, 4).drop(columns=["mu_1"]))


def test_projections_and_their_cache(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    cache = isolated_cache
    table = code_table(5, 6, separation=5.0)
    for method in ("pca", "cca"):
        xy = project(table, method)
        assert list(xy.columns) == ["x", "y", "subject", "group"] and len(xy) == 25
        assert xy["subject"].tolist() == table["subject"].tolist() and xy["group"].tolist() == table["group"].tolist()
    # PCA: the scores on the two leading principal axes of the centred codes (numpy SVD), each up to its sign
    centred = table[mu_columns(6)].to_numpy(float) - table[mu_columns(6)].to_numpy(float).mean(axis=0)
    scores = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    xy = project(table, "pca")
    for k, column in enumerate(("x", "y")):
        sign = np.sign(np.dot(scores[:, k], xy[column]))
        np.testing.assert_allclose(xy[column], sign * scores[:, k], atol=1e-8)
    # Separated groups land apart on the CCA plane: group centroids far beyond the within-group spread.
    xy = project(table, "cca")
    centres = xy.groupby("group")[["x", "y"]].mean()
    spread = xy.groupby("group")[["x", "y"]].std().to_numpy().mean()
    gaps = [np.linalg.norm(centres.iloc[i] - centres.iloc[j]) for i in range(5) for j in range(i + 1, 5)]
    assert min(gaps) > 2 * spread
    assert len(list((cache / "latent" / "projections").glob("*.csv"))) == 2
    monkeypatch.setattr(analysis, "_project", lambda *a: pytest.fail("projection recomputed despite the cache"))
    pd.testing.assert_frame_equal(project(table, "pca"), project(table, "pca"))
    changed = table.copy()
    changed.loc[0, "mu_1"] += 1.0
    with pytest.raises(pytest.fail.Exception):
        project(changed, "pca")  # other codes: another cache entry
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown projection method"):
        project(table, "tsne")
    with pytest.raises(ValueError, match="at least 3 groups"):
        project(code_table(4, 4, groups=("NOR", "DCM")), "cca")


@pytest.mark.slow
def test_umap_projection_is_reproducible() -> None:
    # The first UMAP call compiles numba code (~10-30 s).
    table = code_table(5, 6, separation=5.0)
    first = project(table, "umap", seed=3, cache=False)
    again = project(table, "umap", seed=3, cache=False)
    assert list(first.columns) == ["x", "y", "subject", "group"] and len(first) == 25
    np.testing.assert_allclose(first[["x", "y"]], again[["x", "y"]])
