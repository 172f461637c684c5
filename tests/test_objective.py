"""cvae.training.objective: the training loss is the negative ELBO of a reparameterised code (plus optional terms)."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from cvae.data.labels import N_LABELS
from cvae.fields import exponentiate
from cvae.losses import soft_label_dice, symmetric_lcc
from cvae.model import CVAERegistration, ModelConfig
from cvae.training.objective import Objective

from conftest import ellipsoid_pair

SIZE = (24, 24, 16)


@pytest.fixture
def setup():
    """A small model whose code visibly changes the velocity and whose posterior is wide, and a batch of 2 pairs."""
    torch.manual_seed(0)
    model = CVAERegistration(ModelConfig(image_size=SIZE, latent_dim=4, encoder_channels=(4, 4, 4, 2),
                                         decoder_channels=(4, 4, 4), head_channels=4, kernel_smooth=7, lam=300.0))
    with torch.no_grad():
        model.decoder.fc.weight.normal_(std=30.0)
        model.decoder.velocity.weight.normal_(std=0.5)
        model.encoder.logvar.bias.fill_(-1.0)
    pairs = [ellipsoid_pair(SIZE, shift) for shift in (1.0, -2.0)]
    fixed, moving = (torch.cat(images) for images in zip(*pairs))
    return model, fixed, moving


def by_hand(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor, seed: int):
    """``(similarity, kl, lcc, velocity)`` per pair for the code ``mu + sigma * eps`` with the ``eps`` that
    ``torch.manual_seed(seed)`` gives first."""
    cfg = model.config
    with torch.no_grad():
        mu, logvar = model.encode(fixed, moving)
        torch.manual_seed(seed)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        velocity = model.velocity(z, moving)
        lcc = symmetric_lcc(fixed, moving, velocity, cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc,
                            cfg.integration_downsample)
    kl = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(dim=1)
    return cfg.lam * (1 - lcc), kl, lcc, velocity


def test_loss_is_similarity_plus_the_weighted_kl(setup):
    model, fixed, moving = setup
    objective = Objective(model)
    torch.manual_seed(5)
    with torch.no_grad():
        terms = objective(fixed, moving, kl_weight=0.3)
    assert set(terms) == {"loss", "similarity", "kl", "lcc"}
    similarity, kl, lcc, _ = by_hand(model, fixed, moving, seed=5)
    torch.testing.assert_close(terms["similarity"], similarity.mean())
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["lcc"], lcc.mean())
    torch.testing.assert_close(terms["loss"], (similarity + 0.3 * kl).mean())
    assert float(terms["kl"]) > 0.1 and float(terms["similarity"]) > 1.0  # both terms weigh in
    # the code is sampled: another draw of eps gives another similarity
    torch.manual_seed(6)
    with torch.no_grad():
        other = objective(fixed, moving, kl_weight=0.3)
    assert abs(float(other["similarity"] - terms["similarity"])) > 1e-3
    torch.testing.assert_close(other["kl"], terms["kl"])  # the KL depends on the posterior only


def test_the_label_term_adds_its_weight_times_one_minus_the_soft_dice(setup):
    model, fixed, moving = setup
    fixed_label, moving_label = (fixed > 0.5).long() * 3, (moving > 0.5).long() * 3
    torch.manual_seed(7)
    with torch.no_grad():
        terms = Objective(model)(fixed, moving, kl_weight=1.0, moving_label=moving_label, fixed_label=fixed_label,
                                 seg_weight=50.0)
    similarity, kl, _, velocity = by_hand(model, fixed, moving, seed=7)
    dice = soft_label_dice(moving_label, fixed_label, exponentiate(velocity, model.config.n_steps), N_LABELS)
    assert 0.3 < float(dice.mean()) < 0.99
    torch.testing.assert_close(terms["dice"], dice.mean())
    torch.testing.assert_close(terms["loss"], (similarity + kl).mean() + 50.0 * (1 - dice.mean()))
