"""cvae.latent.refine: MAP refinement of a pair's code (and `cvae register --refine-steps`)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cvae.checkpoint import load_checkpoint
from cvae.data.dataset import PairDataset
from cvae.fields import warp
from cvae.latent import as_image, encode_cohort, mu_columns
from cvae.latent.refine import refine_code, refine_table, register_refined, score_codes
from cvae.losses import symmetric_lcc
from cvae.model import CVAERegistration

from conftest import LATENT_SIZE, LATENT_SPACING, SHIPPED, latent_model, shipped_pair, warped_mean_dice

pytestmark = pytest.mark.usefixtures("isolated_cache")


def images(model: CVAERegistration, pair) -> tuple[torch.Tensor, torch.Tensor]:
    return as_image(pair.fixed, model, "fixed"), as_image(pair.moving, model, "moving")


def energy(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor, z: torch.Tensor) -> float:
    """``E(z)`` of cvae.latent.refine computed independently from the loss's parts."""
    cfg = model.config
    with torch.no_grad():
        lcc = symmetric_lcc(fixed, moving, model.velocity(z, moving), cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc)
    return float(cfg.lam * (1 - lcc.sum()) + 0.5 * (z ** 2).sum())


def test_zero_steps_give_the_encoders_mu(latent_pair):
    model = latent_model()
    fixed, moving = images(model, latent_pair)
    result = refine_code(model, fixed, moving, steps=0)
    mu, _ = model.encode(fixed, moving)
    assert torch.equal(result.code, mu.detach())
    assert torch.equal(result.lcc_after, result.lcc_before)
    assert result.objective == pytest.approx([energy(model, fixed, moving, mu.detach())], rel=1e-5)


def test_refinement_lowers_the_energy_and_leaves_the_weights_alone(latent_pair):
    model = latent_model()
    fixed, moving = images(model, latent_pair)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = refine_code(model, fixed, moving, steps=15, lr=0.1)
    assert len(result.objective) == 16
    assert result.objective[-1] == pytest.approx(energy(model, fixed, moving, result.code), rel=1e-5)
    assert result.objective[-1] < result.objective[0] - 1e-3 * abs(result.objective[0])
    assert result.lcc_after.item() > result.lcc_before.item()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_without_a_data_term_the_code_goes_to_the_prior_mode(latent_pair):
    """lam -> 0 leaves E(z) = |z|^2 / 2, whose minimiser is the origin."""
    model = latent_model()
    model.config = dataclasses.replace(model.config, lam=1e-9)
    fixed, moving = images(model, latent_pair)
    with torch.no_grad():
        model.encoder.mu.bias.fill_(2.0)
    result = refine_code(model, fixed, moving, steps=200, lr=0.05)
    assert result.code.abs().max().item() < 0.05
    mu, _ = model.encode(fixed, moving)
    assert mu.abs().min().item() > 1.0


def test_register_refined_decodes_the_refined_code(latent_pair):
    model = latent_model()
    fixed, moving = images(model, latent_pair)
    result, refinement = register_refined(model, fixed, moving, steps=3)
    torch.testing.assert_close(result.mu, refinement.code)
    expected = model.decode(refinement.code, moving, inverse=True)
    torch.testing.assert_close(result.displacement, expected.displacement)
    torch.testing.assert_close(result.inverse_displacement, expected.inverse_displacement)


def test_refine_table_replaces_the_codes(latent_cohort, latent_checkpoint):
    model, _ = load_checkpoint(latent_checkpoint, "cpu")
    table = encode_cohort(latent_checkpoint, latent_cohort, "training")
    dataset = PairDataset(latent_cohort, "training", size=LATENT_SIZE, spacing=LATENT_SPACING)
    refined = refine_table(model, dataset, table.head(2), steps=4)
    columns = mu_columns(model.config.latent_dim)
    pair0 = dataset.pair(dataset.subjects.index(refined["subject"].iloc[0]))
    expected = refine_code(model, *images(model, pair0), steps=4).code[0].numpy()
    np.testing.assert_allclose(refined[columns].iloc[0].to_numpy(float), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(refined[columns].to_numpy(float), table.head(2)[columns].to_numpy(float))
    assert (refined["lcc_after"] > refined["lcc_before"]).all()
    with pytest.raises(ValueError, match="not in the cohort"):
        refine_table(model, PairDataset(latent_cohort, "testing", size=LATENT_SIZE, spacing=LATENT_SPACING),
                     table.head(1))


def test_score_codes_against_numpy(latent_cohort, latent_checkpoint):
    model, _ = load_checkpoint(latent_checkpoint, "cpu")
    table = encode_cohort(latent_checkpoint, latent_cohort, "training")
    table = table[np.isfinite(table["LVEF"])].head(2)
    dataset = PairDataset(latent_cohort, "training", size=LATENT_SIZE, spacing=LATENT_SPACING)
    scores = score_codes(model, dataset, table)
    assert list(scores["subject"]) == list(table["subject"])
    for (_, row), (_, subject) in zip(scores.iterrows(), table.iterrows()):
        pair = dataset.pair(dataset.subjects.index(subject["subject"]))
        z = torch.tensor(subject[mu_columns(model.config.latent_dim)].to_numpy(np.float32))[None]
        with torch.no_grad():
            u = model.decode(z, as_image(pair.moving, model)).displacement
        ed, es = pair.moving_label, pair.fixed_label
        sim = warp(as_image(ed, model), u, mode="nearest")[0, 0].round().numpy().astype(int)
        dices = []
        for labels in ((3,), (2,), (2, 3), (1,), (1, 2, 3)):  # the five structures of cvae.data.labels
            a, b = np.isin(sim, labels), np.isin(es, labels)
            if a.sum() + b.sum():
                dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert row["dice"] == pytest.approx(100 * np.mean(dices), abs=1e-9)
        lvef = 100 * (1 - (sim == 3).sum() / (ed == 3).sum())
        assert row["LVEF"] == pytest.approx(lvef, abs=1e-6)
        assert row["true_LVEF"] == pytest.approx(100 * (1 - (es == 3).sum() / (ed == 3).sum()), abs=1e-6)
        empty = (es == 3).sum(axis=(0, 1)) == 0
        excess = max((sim == 3).sum() - (es == 3).sum(), 1)
        assert row["basal_excess"] == pytest.approx((sim[..., empty] == 3).sum() / excess)


@pytest.mark.parametrize("steps, lr, message", [(-1, 0.05, "steps must be >= 0"), (3, 0.0, "learning rate"),
                                               (3, float("nan"), "learning rate")])
def test_bad_settings(latent_pair, steps, lr, message):
    model = latent_model()
    with pytest.raises(ValueError, match=message):
        refine_code(model, *images(model, latent_pair), steps=steps, lr=lr)


@pytest.mark.skipif(not SHIPPED, reason="the shipped checkpoint checkpoints/synthetic-acdc is not there")
def test_refinement_improves_the_shipped_models_registration():
    """On a synthetic ED -> ES pair the refined code matches the images and the ES labels better."""
    model, prep, fixed, moving = shipped_pair()
    with torch.no_grad():
        plain = model.register(fixed, moving, inverse=False)
    refined, refinement = register_refined(model, fixed, moving, steps=10, inverse=False)
    assert refinement.lcc_before.item() == pytest.approx(
        symmetric_lcc(fixed, moving, plain.velocity).item(), abs=1e-6)
    assert refinement.lcc_after.item() > refinement.lcc_before.item() + 0.003
    assert warped_mean_dice(prep, refined.displacement) > warped_mean_dice(prep, plain.displacement)
