"""cvae.latent: cohort table + cache, sampling, walks, transport, warped-label measures, uncertainty, `cvae embed`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cvae.latent as latent
import cvae.commands.embed as embed
from cvae.checkpoint import save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.labels import GROUPS
from cvae.evaluation.clinical import MEASURE_UNITS
from cvae.fields import warp
from cvae.latent.priors import CodePrior
from cvae.model import CVAERegistration

from conftest import (
    LATENT_DIM,
    LATENT_SIZE,
    LATENT_SPACING,
    cohort_posteriors,
    latent_model,
    load_benchmark,
    write_patient,
)

pytestmark = pytest.mark.usefixtures("isolated_cache")



class CountingEncode:
    """Wraps ``CVAERegistration.encode`` to count calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = CVAERegistration.encode

        def encode(model, fixed, moving):
            self.calls += 1
            return original(model, fixed, moving)

        monkeypatch.setattr(CVAERegistration, "encode", encode)


def test_encode_cohort_columns_codes_and_measures(latent_cohort: Path, latent_checkpoint: Path) -> None:
    table = latent.encode_cohort(latent_checkpoint, latent_cohort, split="training", device="cpu", batch_size=3)
    assert list(table.columns) == (["subject", "group", "split", "mu_1", "mu_2", "mu_3", "sigma_1", "sigma_2",
                                    "sigma_3"] + list(MEASURE_UNITS))
    assert table["subject"].tolist() == ["patient001", "patient002", "patient003", "patient004"]
    assert table["group"].tolist() == ["DCM", "HCM", "NOR", "RV"] and set(table["split"]) == {"training"}
    # The codes are the model's posterior for each (ES, ED) pair.
    model = latent_model()
    data = PairDataset(latent_cohort, "training", size=LATENT_SIZE, spacing=LATENT_SPACING)
    with torch.no_grad():
        mu, logvar = model.encode(data[1]["fixed"][None], data[1]["moving"][None])
    np.testing.assert_allclose(table.loc[1, ["mu_1", "mu_2", "mu_3"]].to_numpy(float), mu[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(table.loc[1, ["sigma_1", "sigma_2", "sigma_3"]].to_numpy(float),
                               torch.exp(0.5 * logvar[0]).numpy(), rtol=1e-5)
    # Labelled phantoms: ED cavity radius 5 voxels, ES 3.5, so LVEF ~ 1 - 3.5^2 / 5^2 = 51 %; Info.cfg gives BSA.
    labelled = table.iloc[:3]
    assert (labelled["LVEDV"] > labelled["LVESV"]).all() and labelled["LVEF"].between(35, 65).all()
    assert np.allclose(labelled["BSA"], np.sqrt(180 * 80 / 3600))
    assert table.loc[3, ["LVEDV", "LVESV", "LVEF", "RVEF", "LVM"]].isna().all()
    assert np.isfinite(table.loc[3, ["mu_1", "sigma_1"]].to_numpy(float)).all()


def test_encode_cohort_reads_its_cache(latent_cohort: Path, latent_checkpoint: Path, isolated_cache: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingEncode(monkeypatch)
    first = latent.encode_cohort(latent_checkpoint, latent_cohort, split="training", device="cpu")
    assert counter.calls == 1 and len(list((isolated_cache / "latent").glob("*.csv"))) == 1
    monkeypatch.setattr("cvae.latent.cohort.load_checkpoint",
                        lambda *a, **k: pytest.fail("model loaded despite the cache"))
    again = latent.encode_cohort(latent_checkpoint, latent_cohort, split="training")
    assert counter.calls == 1
    pd.testing.assert_frame_equal(again, first, check_exact=False, rtol=1e-12)
    # Another split, or new weights in the same folder, is another table.
    monkeypatch.undo()
    counter = CountingEncode(monkeypatch)
    testing = latent.encode_cohort(latent_checkpoint, latent_cohort, split="testing", device="cpu")
    assert testing["subject"].tolist() == ["patient101"]
    save_checkpoint(latent_checkpoint, latent_model(seed=1), spacing=LATENT_SPACING)
    changed = latent.encode_cohort(latent_checkpoint, latent_cohort, split="training", device="cpu")
    assert counter.calls == 2 and not np.allclose(changed["mu_1"], first["mu_1"])
    # An in-memory model is keyed by its weights: the same model hits its own cache.
    model = latent_model(seed=2)
    latent.encode_cohort(model, latent_cohort, split="training", spacing=LATENT_SPACING)
    latent.encode_cohort(model, latent_cohort, split="training", spacing=LATENT_SPACING)
    assert counter.calls == 3


def test_cached_table_of_another_latent_size_is_recomputed(latent_cohort: Path, latent_checkpoint: Path,
                                                           isolated_cache: Path) -> None:
    latent.encode_cohort(latent_checkpoint, latent_cohort, split="training", device="cpu")
    (path,) = (isolated_cache / "latent").glob("*.csv")
    pd.read_csv(path).drop(columns=["mu_3", "sigma_3"]).to_csv(path, index=False)
    with pytest.warns(UserWarning, match="has 2-D codes but the checkpoint has 3-D: recomputing"):
        table = latent.encode_cohort(latent_checkpoint, latent_cohort, split="training", device="cpu")
    assert latent.latent_dim_of(table) == 3 and latent.latent_dim_of(pd.read_csv(path)) == 3
    with pytest.raises(ValueError, match="table has 3-D codes but the model has a 5-D latent space"):
        latent.check_table(table, 5)
    with pytest.raises(ValueError, match="no latent code columns"):
        latent.check_table(table.drop(columns=["mu_2"]))


def test_sample_walk_and_transport(latent_pair) -> None:
    model = latent_model()
    moving = torch.from_numpy(latent_pair.moving)
    a = latent.sample(model, latent_pair.moving, 5, temperature=2.0, seed=3, chunk=2)
    assert a.warped.shape == (5, 1, *LATENT_SIZE) and a.displacement.shape == (5, 3, *LATENT_SIZE)
    assert a.mu.shape == (5, LATENT_DIM)
    assert a.jacobian.shape == (5, *LATENT_SIZE)
    torch.testing.assert_close(a.mu, 2.0 * torch.randn(5, LATENT_DIM, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(latent.sample(model, moving, 5, temperature=2.0, seed=3).displacement,
                               a.displacement)
    assert not torch.allclose(latent.sample(model, moving, 5, temperature=2.0, seed=4).displacement,
                              a.displacement)
    # Different codes give different deformations (the model is not degenerate), chunking is invisible.
    assert a.displacement.abs().max() > 0.5 and (a.displacement[0] - a.displacement[1]).abs().max() > 0.1

    z0 = torch.tensor([0.3, -0.2, 0.5])
    values = [-1.0, 0.5, -0.2, 2.0]
    frames = latent.walk(model, moving, z0, dim=1, values=values, chunk=3)
    assert frames.warped.shape == (4, 1, *LATENT_SIZE)
    assert frames.mu[:, 1].tolist() == pytest.approx(values) and torch.equal(frames.mu[:, 0], torch.full((4,), 0.3))
    with torch.no_grad():
        at_z0 = model.decode(z0[None], moving[None, None])
    torch.testing.assert_close(frames.displacement[2], at_z0.displacement[0])
    torch.testing.assert_close(frames.warped[2], at_z0.warped[0])

    moved = latent.transport(model, z0.numpy(), latent_pair.moving)
    assert moved.warped.shape == (1, 1, *LATENT_SIZE)
    torch.testing.assert_close(moved.displacement, at_z0.displacement)


def test_cohort_prior_from_a_table_and_sampling_with_it(latent_pair) -> None:
    mu, sigma = cohort_posteriors(n=12, d=LATENT_DIM)
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(12)], "group": ["NOR"] * 12,
                          **{f"mu_{j + 1}": mu[:, j] for j in range(LATENT_DIM)},
                          **{f"sigma_{j + 1}": sigma[:, j] for j in range(LATENT_DIM)}})
    prior = latent.cohort_prior(table)
    np.testing.assert_allclose(prior.cov, CodePrior.aggregate(mu, sigma).cov)
    model = latent_model()
    drawn = latent.sample(model, latent_pair.moving, 4, seed=2, prior=prior)
    assert drawn.warped.shape == (4, 1, *LATENT_SIZE)
    torch.testing.assert_close(drawn.mu, prior.draw(4, seed=2))
    standard = latent.sample(model, latent_pair.moving, 4, seed=2)
    assert (drawn.displacement - standard.displacement).abs().max() > 0.1  # the prior changes the motions
    with pytest.raises(ValueError, match="posterior widths sigma_1"):
        latent.cohort_prior(table.drop(columns=["sigma_1"]))
    with pytest.raises(ValueError, match="the prior is 5-D but the model has a 3-D latent space"):
        latent.prior_codes(model, 2, prior=CodePrior.standard(5))


def test_transport_of_own_code_reproduces_registration(latent_pair) -> None:
    model = latent_model()
    fixed, moving = (torch.from_numpy(a)[None, None] for a in (latent_pair.fixed, latent_pair.moving))
    with torch.no_grad():
        registered = model.register(fixed, moving)
    own = latent.transport(model, registered.mu[0], latent_pair.moving)
    torch.testing.assert_close(own.warped, registered.warped)
    assert (own.warped - moving).abs().max() > 1e-3  # a real deformation, not the identity


def test_warped_label_measures(latent_pair) -> None:
    model = latent_model()
    z = latent.prior_codes(model, 3, temperature=2.0, seed=0)
    table = latent.warped_label_measures(model, z, latent_pair.moving, latent_pair.moving_label, latent_pair.spacing,
                                         chunk=2)
    assert list(table.columns) == ["LVEDV", "LVESV", "LVEF", "RVEDV", "RVESV", "RVEF", "negative_jacobian"]
    voxel_ml = np.prod(latent_pair.spacing) / 1000
    assert np.allclose(table["LVEDV"], (latent_pair.moving_label == 3).sum() * voxel_ml)
    result = latent.decode_codes(model, z, latent_pair.moving)
    label = torch.from_numpy(latent_pair.moving_label.astype(np.float32))[None, None]
    es = warp(label, result.displacement, mode="nearest")
    np.testing.assert_allclose(table["LVESV"], (es == 3).sum(dim=(1, 2, 3, 4)).numpy() * voxel_ml)
    np.testing.assert_allclose(table["LVEF"], 100 * (1 - table["LVESV"] / table["LVEDV"]))
    assert table["LVESV"].nunique() > 1  # the codes change the simulated ES
    np.testing.assert_allclose(table["negative_jacobian"],
                               (result.jacobian <= 0).float().mean(dim=(1, 2, 3)).numpy())


def test_uncertainty(latent_pair) -> None:
    model = latent_model()
    pair = latent_pair
    std = latent.uncertainty(model, pair.fixed, pair.moving, k=5, seed=0, spacing=pair.spacing, chunk=2)
    assert std.shape == LATENT_SIZE and (std >= 0).all() and std.max() > 0
    per_axis = latent.uncertainty(model, pair.fixed, pair.moving, k=5, seed=0, spacing=pair.spacing, per_axis=True)
    assert per_axis.shape == (3, *LATENT_SIZE)
    torch.testing.assert_close(per_axis.pow(2).sum(dim=0).sqrt(), std)
    # Direct check of one voxel against the k decoded samples (mm, unbiased).
    fixed, moving = (torch.from_numpy(a)[None, None] for a in (pair.fixed, pair.moving))
    with torch.no_grad():
        mu, logvar = model.encode(fixed, moving)
        z = mu + torch.randn(5, LATENT_DIM, generator=torch.Generator().manual_seed(0)) * torch.exp(0.5 * logvar)
        u = model.decode(z, moving).displacement[:, :, 12, 12, 4].double()
    expected = (u * torch.tensor(LATENT_SPACING, dtype=torch.float64)).std(dim=0)
    torch.testing.assert_close(per_axis[:, 12, 12, 4].double(), expected, rtol=1e-4, atol=1e-7)
    # A posterior with logvar -> -inf has no spread: exactly zero.
    with torch.no_grad():
        model.encoder.logvar.weight.zero_()
        model.encoder.logvar.bias.fill_(-1e4)
    # (Identical codes decoded in batches of different sizes differ by float32 rounding only.)
    flat = latent.uncertainty(model, pair.fixed, pair.moving, k=6, seed=1, spacing=pair.spacing, chunk=4)
    assert flat.shape == LATENT_SIZE and flat.max() < 1e-4  # mm: float32 rounding, not spread


@pytest.mark.parametrize("call, message", [
    (lambda m, p: latent.sample(m, p.moving, 0), "n must be >= 1"),
    (lambda m, p: latent.sample(m, p.moving, 2, temperature=-1), "temperature"),
    (lambda m, p: latent.walk(m, p.moving, np.zeros(LATENT_DIM), dim=LATENT_DIM, values=[0.0]),
     r"dim must be a 0-based latent axis"),
    (lambda m, p: latent.walk(m, p.moving, np.zeros(LATENT_DIM), dim=0, values=[]), "values must be"),
    (lambda m, p: latent.transport(m, np.zeros(LATENT_DIM + 1), p.moving), r"codes must have shape \(3,\)"),
    (lambda m, p: latent.transport(m, np.zeros(LATENT_DIM), p.moving[:8]), "preprocess"),
    (lambda m, p: latent.uncertainty(m, p.fixed, p.moving, k=1), "k must be >= 2"),
    (lambda m, p: latent.decode_codes(m, np.zeros(LATENT_DIM), p.moving, chunk=0), "chunk"),
    (lambda m, p: latent.decode_codes(m, np.zeros((0, LATENT_DIM)), p.moving), "B >= 1"),
])
def test_bad_input_is_a_value_error(latent_pair, call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call(latent_model(), latent_pair)


def test_cli_embed(latent_cohort: Path, latent_checkpoint: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture) -> None:
    out, data, checkpoint = tmp_path / "codes.csv", str(latent_cohort), str(latent_checkpoint)
    assert embed.main(["--data", data, "--checkpoint", checkpoint, "--out", str(out), "--split", "training",
                        "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 4 and latent.latent_dim_of(table) == LATENT_DIM
    assert "wrote 4 subjects x 3-D codes" in capsys.readouterr().out
    assert embed.main(["--data", str(tmp_path / "nowhere"), "--checkpoint", checkpoint, "--out", str(out)]) == 2
    assert embed.main(["--data", data, "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert embed.main(["--data", data, "--checkpoint", checkpoint, "--out", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cvae embed:")]
    assert len(errors) == 3 and all(line.startswith("cvae embed: error: ") for line in errors)
    assert "data folder not found" in errors[0] and "not found" in errors[1] and "is a directory" in errors[2]


def test_latent_claims_benchmark_runs_end_to_end(tmp_path: Path, latent_checkpoint: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    claims = load_benchmark("latent_claims")
    root = tmp_path / "cohort"
    for number in range(1, 11):  # two labelled phantoms per group
        write_patient(root / "testing", number, group=GROUPS[number % 5], seed=number)
    for number in range(11, 14):  # the training codes the cohort prior is fitted to
        write_patient(root / "training", number, group=GROUPS[number % 5], seed=number)
    args = ["--data", str(root), "--checkpoint", str(latent_checkpoint), "--sources-per-group", "2",
            "--targets-per-group", "1", "--samples", "2", "--permutations", "3", "--device", "cpu", "--refine-steps",
            "2", "--out", str(tmp_path / "claims.md")]
    with pytest.warns(UserWarning, match="reduced cross-validation from 10 to 2 folds"):
        assert claims.main(args) == 0
    text = capsys.readouterr().out
    assert text.strip() == (tmp_path / "claims.md").read_text().strip()
    for heading in ("### Disease classification", "### Transport of deformation codes", "### Sampling",
                    "| DCM -> NOR gives LVEF < 40 % | ", "| NOR -> NOR keeps LVEF > 50 % | "):
        assert heading in text
    # 10 sources x 5 targets - 5 self pairs; DCM -> NOR: 2 pairs, NOR -> NOR: the other NOR source only.
    assert "45 pairs, self pairs left out" in text and "(10 deformations per prior)" in text
    assert re.search(r"\| N\(0, I\) \| \d+ / 10 .*\n\| aggregate posterior \(3 training codes\) \| \d+ / 10 ", text)
    assert re.search(r"DCM -> NOR gives LVEF < 40 % \| \d / 2 ", text)
    assert re.search(r"NOR -> NOR keeps LVEF > 50 % \| \d / 1 ", text)
    assert "own code (registration)" in text and "5 targets" in text
    # The refinement of the 10 sources: a row per group and overall, both claims with either kind of code.
    refinement = text[text.index("### MAP refinement of the codes"):]
    assert "refined by 2 Adam steps" in refinement and re.search(r"\| all \| 10 \| 0\.\d+ -> 0\.\d+ \|", refinement)
    assert re.search(r"\| NOR -> NOR keeps LVEF > 50 % \| (\d / 1 \(\d+ %\), mean [\d.-]+ % \| ?){2}", refinement)
    assert claims.main(["--data", str(tmp_path / "nowhere"), "--checkpoint", str(latent_checkpoint)]) == 2


def test_cli_embed_checks_its_out_before_encoding(latent_cohort: Path, latent_checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = []

    def encode_spy(*args, **kwargs):
        encoded.append(args)
        raise RuntimeError("the cohort was encoded before --out was checked")

    monkeypatch.setattr("cvae.latent.cohort.encode_cohort", encode_spy)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "folder", "is a directory: give a file name"),
             (a_file / "codes.csv", f"{a_file} is a file, not a folder")]
    for out, message in cases:
        assert embed.main(["--data", str(latent_cohort), "--checkpoint", str(latent_checkpoint), "--out", str(out),
                            "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"cvae embed: error: --out {out}") and message in err[0], err

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("cvae.io.atomic.tempfile.mkstemp", denied)
    out = tmp_path / "folder" / "codes.csv"
    assert embed.main(["--data", str(latent_cohort), "--checkpoint", str(latent_checkpoint), "--out", str(out),
                        "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write in {tmp_path / 'folder'}" in err[0], err
    assert encoded == [] and list((tmp_path / "folder").iterdir()) == []
