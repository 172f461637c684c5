"""cvae.latent.standardise: the folded affine leaves every deformation unchanged, is KL-optimal; `cvae standardise`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import cvae.cli
import cvae.latent as latent
from cvae.checkpoint import load_model, read_config, resolve_checkpoint
from cvae.data.dataset import PairDataset
from cvae.latent.standardise import SECTION, kl_optimal_affine, mean_kl, standardise_model
from cvae.model import CVAERegistration
from cvae.paths import data_root

from conftest import LATENT_DIM, LATENT_SIZE, LATENT_SPACING, cohort_posteriors, ellipsoid_pair, latent_model

pytestmark = pytest.mark.usefixtures("isolated_cache")


def random_model(film: bool) -> CVAERegistration:
    """The model of ``latent_model`` (with FiLM or not) whose posterior widths also depend on the pair."""
    torch.manual_seed(0)
    model = CVAERegistration(latent_model().config, film=film)
    with torch.no_grad():
        model.decoder.fc.weight.normal_(std=100.0)
        model.decoder.velocity.weight.normal_(std=1.5)
        model.encoder.logvar.weight.normal_(std=0.05)
        for layer in model.decoder.film:
            layer.weight.normal_(std=1.0)
            layer.bias.normal_(std=0.1)
    return model.eval()


def random_affine(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 2.0, LATENT_DIM), rng.uniform(0.3, 2.0, LATENT_DIM)


@pytest.mark.parametrize("film", [False, True])
def test_standardised_model_registers_and_decodes_identically(film: bool) -> None:
    model = random_model(film)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    m, s = random_affine()
    standard = standardise_model(model, m, s)
    fixed, moving = ellipsoid_pair(LATENT_SIZE, 2.0)
    with torch.no_grad():
        before, after = model.register(fixed, moving), standard.register(fixed, moving)
    scale = float(before.velocity.abs().max())
    assert scale > 0.5 and float(before.displacement.abs().max()) > 0.5  # a real, code-dependent deformation
    for name in ("velocity", "displacement", "inverse_displacement", "warped"):
        a, b = getattr(before, name), getattr(after, name)
        assert float((a - b).abs().max()) <= 1e-5 * max(scale, 1.0), name
    mt, st = torch.tensor(m, dtype=torch.float32), torch.tensor(s, dtype=torch.float32)
    torch.testing.assert_close(after.mu, (before.mu - mt) / st, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.logvar, before.logvar - 2 * torch.log(st), rtol=1e-5, atol=1e-5)
    assert float((after.mu - before.mu).abs().max()) > 0.1 and float(before.logvar.std()) > 0  # not trivial
    z = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        new, old = standard.decode(z, moving).displacement, model.decode(mt + st * z, moving).displacement
    assert float((new - old).abs().max()) <= 1e-5 * max(float(old.abs().max()), 1.0)
    # The source is untouched, the copy keeps the channels-last weights and the mode.
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert standard.decoder.velocity.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not standard.training and standard is not model


def test_kl_optimal_affine_beats_every_other_affine_and_standardises_the_codes() -> None:
    mu, sigma = cohort_posteriors(n=40, d=4)
    m, s = kl_optimal_affine(mu, sigma)
    best = mean_kl((mu - m) / s, sigma / s)
    assert best < mean_kl(mu, sigma) - 1.0  # the identity (0, 1): these codes are off the origin
    rng = np.random.default_rng(3)
    for _ in range(20):
        m2, s2 = m + rng.normal(0, 0.2, 4), s * (1 + rng.uniform(-0.2, 0.2, 4))
        assert mean_kl((mu - m2) / s2, sigma / s2) > best
    for j in range(4):  # the optimum is unique per coordinate: small moves of one value cost KL
        for eps in (-1e-3, 1e-3):
            assert mean_kl((mu - m - eps * np.eye(4)[j]) / s, sigma / s) > best
            scaled = s * (1 + eps * np.eye(4)[j])
            assert mean_kl((mu - m) / scaled, sigma / scaled) > best
    standard_mu, standard_sigma = (mu - m) / s, sigma / s
    np.testing.assert_allclose(standard_mu.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose((standard_mu ** 2 + standard_sigma ** 2).mean(axis=0), 1.0, atol=1e-10)


def test_mean_kl_matches_torch_distributions() -> None:
    mu, sigma = cohort_posteriors(n=9, d=5, seed=4)
    posterior = Independent(Normal(torch.from_numpy(mu), torch.from_numpy(sigma)), 1)
    prior = Independent(Normal(torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)), 1)
    assert mean_kl(mu, sigma) == pytest.approx(float(kl_divergence(posterior, prior).mean()), rel=1e-12)
    assert mean_kl(np.zeros((2, 3)), np.ones((2, 3))) == 0.0


@pytest.mark.parametrize("make, message", [
    (lambda: kl_optimal_affine(np.zeros((3, 2)), np.ones((3, 4))), "must both be"),
    (lambda: kl_optimal_affine(np.zeros(3), np.ones(3)), "must both be"),
    (lambda: kl_optimal_affine(*cohort_posteriors(n=1)), "at least 2 subjects"),
    (lambda: kl_optimal_affine(np.full((3, 2), np.inf), np.ones((3, 2))), "NaN or infinite"),
    (lambda: kl_optimal_affine(np.ones((3, 2)), -np.ones((3, 2))), "negative"),
    (lambda: kl_optimal_affine(np.c_[np.arange(3.0), np.ones(3)], np.c_[np.ones(3), np.zeros(3)]),
     r"dimension\(s\) \[2\] have zero spread"),
    (lambda: mean_kl(np.zeros((3, 2)), np.zeros((3, 2))), "point mass"),
    (lambda: standardise_model(latent_model(), np.zeros(2), np.ones(2)), r"shape \(3,\)"),
    (lambda: standardise_model(latent_model(), np.zeros(3), np.array([1.0, 0.0, 1.0])), "s finite and > 0"),
])
def test_bad_inputs(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def run(*args: str) -> int:
    return cvae.cli.main(["standardise", *args, "--device", "cpu"])


def test_cli_writes_a_checkpoint_whose_codes_are_standardised(latent_cohort: Path, latent_checkpoint: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "standard"
    assert run("--checkpoint", str(latent_checkpoint), "--data", str(latent_cohort), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "standardised on 4 subjects (training)" in printed and str(out) in printed
    source, config = read_config(latent_checkpoint), read_config(out)
    assert all(config[k] == source[k] for k in ("model", "spacing", "training", "metrics"))
    section = config[SECTION]
    assert section["split"] == "training" and section["subjects"] == 4 and len(section["scale"]) == LATENT_DIM
    assert section["mean_kl_after"] < section["mean_kl_before"] and section["note"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".standard*"))  # no staging folder left
    # Re-encoding the split with the new checkpoint gives codes of mean 0 and variance 1 per dimension.
    table = latent.encode_cohort(out, latent_cohort, "training", device="cpu")
    mu, sigma = table[latent.mu_columns(LATENT_DIM)].to_numpy(), table[latent.sigma_columns(LATENT_DIM)].to_numpy()
    np.testing.assert_allclose(mu.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose((mu ** 2 + sigma ** 2).mean(axis=0), 1.0, atol=1e-4)
    assert mean_kl(mu, sigma) == pytest.approx(section["mean_kl_after"], abs=1e-4)
    # ... and the loaded model registers the cohort's pairs as the source does.
    pair = PairDataset(latent_cohort, "training", size=LATENT_SIZE, spacing=LATENT_SPACING).pair(2)
    fixed, moving = (torch.from_numpy(a)[None, None] for a in (pair.fixed, pair.moving))
    with torch.no_grad():
        before = load_model(latent_checkpoint, "cpu").register(fixed, moving).displacement
        after = load_model(out, "cpu").register(fixed, moving).displacement
    assert float((after - before).abs().max()) <= 1e-5 * max(float(before.abs().max()), 1.0)


def test_cli_refuses_with_one_line(latent_cohort: Path, latent_checkpoint: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    done = tmp_path / "done"
    shutil.copytree(latent_checkpoint, done)
    config = json.loads((done / "config.json").read_text())
    (done / "config.json").write_text(json.dumps({**config, SECTION: {"split": "training"}}))
    (tmp_path / "taken").mkdir()
    source = str(latent_checkpoint)
    cases = [(["--checkpoint", source, "--out", source], "is the source checkpoint folder"),
             (["--checkpoint", str(done), "--out", str(tmp_path / "again")], "already standardised"),
             (["--checkpoint", source, "--out", str(tmp_path / "taken")], "already exists"),
             (["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "a")], "not found"),
             (["--checkpoint", source, "--out", str(tmp_path / "b"), "--data", str(tmp_path / "none")],
              "cohort folder"),
             (["--checkpoint", source, "--out", str(tmp_path / "c"), "--split", "testing"], "at least 2 subjects")]
    for args, message in cases:
        if "--data" not in args:
            args = [*args, "--data", str(latent_cohort)]
        assert run(*args) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("cvae standardise: error:") and message in err[-1], err
        assert len(err) == 1 or message == "at least 2 subjects"  # (that one follows the encoding's progress bar)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acdc", "cache", "ckpt", "done", "taken"]
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not (data_root() / "training").is_dir(), reason="the demo cohort is not there (make cohort)")
@pytest.mark.parametrize("name", ["synthetic-acdc", "synthetic-acdc-seg", "synthetic-acdc-dr"])
def test_the_shipped_checkpoint_is_standardised_to_its_training_codes(name: str) -> None:
    """Encoding the demo cohort's training split with the shipped weights gives codes of mean 0 and variance 1 per
    dimension (aggregate posterior), as its config.json says (about 1 min on 2 CPU cores)."""
    folder = resolve_checkpoint(name)
    section = read_config(folder)[SECTION]
    table = latent.encode_cohort(folder, data_root(), "training", device="cpu")
    d = latent.latent_dim_of(table)
    mu, sigma = table[latent.mu_columns(d)].to_numpy(float), table[latent.sigma_columns(d)].to_numpy(float)
    assert section["subjects"] == len(table) and section["mean_kl_after"] < section["mean_kl_before"]
    np.testing.assert_allclose(mu.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(((mu - mu.mean(axis=0)) ** 2 + sigma ** 2).mean(axis=0), 1.0, atol=1e-4)
    assert mean_kl(mu, sigma) == pytest.approx(section["mean_kl_after"], rel=1e-4)
