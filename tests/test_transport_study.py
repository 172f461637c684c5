"""cvae.latent.transport_study: group choice, the (source group -> target group) table against a hand count, disk
cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cvae.latent as latent
from cvae.data.dataset import PairDataset
from cvae.data.labels import GROUPS
from cvae.figures import transport_matrix_figure
from cvae.latent.transport_study import (
    cached_path,
    claim_lvefs,
    cohort_transport,
    fraction,
    group_matrix,
    markdown_matrix,
    pick,
    target_lvef,
)

from conftest import LATENT_DIM, LATENT_SIZE, LATENT_SPACING, latent_model, nearest_warp, write_patient

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Ten labelled phantoms in the test split, two per group."""
    root = tmp_path / "cohort"
    for number in range(1, 11):
        write_patient(root / "testing", number, group=GROUPS[number % 5], seed=number)
    return root


def test_pick_takes_the_first_labelled_subjects_of_each_group_in_acdc_order() -> None:
    table = pd.DataFrame({"subject": ["p5", "p1", "p2", "p3", "p4", "p6"],
                          "group": ["NOR", "NOR", "DCM", "DCM", "NOR", "HCM"],
                          "LVEF": [60.0, 55.0, 20.0, np.nan, 58.0, 70.0]})
    chosen = pick(table, 2)
    assert list(chosen["subject"]) == ["p1", "p4", "p2", "p6"]  # NOR, DCM, HCM; DCM p3 has no labels, NOR p5 is third
    with pytest.raises(ValueError, match="per group must be >= 1"):
        pick(table, 0)


def test_group_matrix_matches_a_hand_count_and_leaves_out_self_pairs() -> None:
    pairs = pd.DataFrame({"source": ["a", "b", "c", "a", "c"], "source_group": ["DCM", "DCM", "NOR", "DCM", "NOR"],
                          "target": ["c", "c", "c", "a", "a"], "target_group": ["NOR", "NOR", "NOR", "DCM", "DCM"],
                          "LVEF": [30.0, 36.0, 99.0, 50.0, 64.0], "target_LVEF": [61.0, 61.0, 61.0, 25.0, 25.0]})
    matrix = group_matrix(pairs)
    assert list(matrix.index) == ["NOR", "DCM"] and list(matrix.columns) == ["NOR", "DCM"]
    assert matrix.loc["DCM", "NOR"] == 33.0  # (30 + 36) / 2; c -> c (99) is a self pair
    assert matrix.loc["NOR", "DCM"] == 64.0 and np.isnan(matrix.loc["NOR", "NOR"])
    assert np.isnan(matrix.loc["DCM", "DCM"])  # a -> a only
    assert group_matrix(pairs, pairs["LVEF"] < 40).loc["DCM", "NOR"] == 1.0
    assert list(target_lvef(pairs).items()) == [("NOR", 61.0), ("DCM", 25.0)]
    figure = transport_matrix_figure(matrix)
    assert np.asarray(figure.data[0].text).tolist() == [["", "64"], ["33", ""]]
    assert markdown_matrix(matrix, ".1f") == ["| source \\ target | NOR | DCM |", "|---|---|---|",
                                              "| NOR |  | 64.0 |", "| DCM | 33.0 |  |"]


def test_transport_claims_count_the_right_pairs() -> None:
    pairs = pd.DataFrame({"source": ["a", "b", "c", "d", "e", "c"],
                          "source_group": ["DCM", "DCM", "NOR", "NOR", "NOR", "NOR"],
                          "target": ["c", "c", "d", "c", "c", "c"], "target_group": ["NOR"] * 6,
                          "LVEF": [30.0, 45.0, 55.0, 49.0, 70.0, 10.0]})
    claims = claim_lvefs(pairs)
    assert list(claims) == ["DCM -> NOR gives LVEF < 40 %", "NOR -> NOR keeps LVEF > 50 %"]
    assert fraction(*claims["DCM -> NOR gives LVEF < 40 %"]) == "1 / 2 (50 %)"
    assert fraction(*claims["NOR -> NOR keeps LVEF > 50 %"]) == "2 / 3 (67 %)"  # c -> c (10 %) is a self pair
    assert fraction(pd.Series([np.nan]), lambda v: v > 0) == "n/a"


def test_cohort_transport_is_computed_once_then_read_from_disk(cohort: Path, latent_checkpoint: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = cohort_transport(latent_checkpoint, cohort, "testing", sources_per_group=2, targets_per_group=1,
                             device="cpu")
    assert len(first) == 5 * 10  # each of the 5 targets: 9 other sources + its own code
    assert set(first["source_group"]) == set(GROUPS) and first["negative_jacobian"].notna().all()
    # A row against a hand computation: the source's code decoded for the target's ED image, the target's ED labels
    # moved by it (nearest neighbour) give the simulated ES volume.
    row = first[(first["source"] != first["target"])].iloc[3]
    table = latent.encode_cohort(latent_checkpoint, cohort, "testing", device="cpu")
    code = table.loc[table["subject"] == row["source"], latent.mu_columns(LATENT_DIM)].to_numpy(np.float32)
    dataset = PairDataset(cohort, "testing", size=LATENT_SIZE, spacing=LATENT_SPACING)
    target = dataset.pair(dataset.subjects.index(row["target"]))
    with torch.no_grad():
        u = latent_model().decode(torch.from_numpy(code), torch.from_numpy(target.moving)[None, None]).displacement
    simulated_es = nearest_warp(target.moving_label, u[0].numpy())
    ed, es = (target.moving_label == 3).sum(), (simulated_es == 3).sum()
    assert es != ed  # the transported motion changes the cavity
    assert row["LVEF"] == pytest.approx(100 * (1 - es / ed), abs=1e-6)
    assert row["target_LVEF"] == pytest.approx(100 * (1 - (target.fixed_label == 3).sum() / ed), abs=1e-6)
    path = cached_path(latent_checkpoint, cohort, "testing", 2, 1)
    assert path.is_file() and path.parent == latent.cached_table_path(latent_checkpoint, cohort, "testing").parent

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr("cvae.latent.transport_study.transport_pairs", fail)
    again = cohort_transport(latent_checkpoint, cohort, "testing", sources_per_group=2, targets_per_group=1,
                             device="cpu")
    pd.testing.assert_frame_equal(again, first, check_dtype=False)
    with pytest.raises(AssertionError, match="recomputed"):
        cohort_transport(latent_checkpoint, cohort, "testing", sources_per_group=1, targets_per_group=1, device="cpu")
    assert group_matrix(first).shape == (5, 5)
