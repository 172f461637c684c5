"""The CVAE registration network: size, shapes, training signal and input validation."""
from __future__ import annotations

import pytest
import torch

from cvae.fields import exponentiate, warp
from cvae.losses import symmetric_lcc
from cvae.model import CVAERegistration, ModelConfig
from cvae.training.objective import Objective

from conftest import ellipsoid_pair

SMALL = dict(image_size=(32, 32, 16), encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
             kernel_smooth=9, sigma_smooth=1.5, film=False)


def parameters_by_hand(cfg: ModelConfig) -> int:
    """The trainable parameters of the network of ``cfg``, counted from its layer shapes (weights + biases)."""

    def conv(cin: int, cout: int) -> int:  # Conv3d or ConvTranspose3d, 3 x 3 x 3 kernel
        return cin * cout * 27 + cout

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    d, bottleneck = cfg.latent_dim, cfg.image_size[0] * cfg.image_size[1] * cfg.image_size[2]
    for stride in cfg.encoder_strides:
        bottleneck //= stride ** 3
    flat = cfg.encoder_channels[-1] * bottleneck
    # encoder: (F, M) stacked -> convolutions -> mu and logvar
    channels = (2, *cfg.encoder_channels)
    encoder = sum(conv(a, b) for a, b in zip(channels, channels[1:])) + 2 * linear(flat, d)
    # decoder: z -> bottleneck; at every scale the moving image is concatenated (+1 channel) before the next layer
    ins = (cfg.encoder_channels[-1] + 1, *(c + 1 for c in cfg.decoder_channels))
    decoder = linear(d, flat) + sum(conv(a, b) for a, b in zip(ins, cfg.decoder_channels))
    decoder += conv(cfg.decoder_channels[-1] + 1, cfg.head_channels) + conv(cfg.head_channels, 3)
    # FiLM: one (gamma, beta) pair per channel of every decoder stage and of the head, each a linear map of z
    film = sum(linear(d, 2 * c) for c in (*cfg.decoder_channels, cfg.head_channels)) if cfg.film else 0
    return encoder + decoder + film


@pytest.mark.parametrize("film", [True, False])
def test_paper_sized_model_has_the_parameters_of_its_layers(film):
    """The paper reports about 267 k parameters for its network; this one has 271.5 k without FiLM and 2.2 k more with
    FiLM (the shipped default)."""
    cfg = ModelConfig() if film else ModelConfig(film=False)
    model = CVAERegistration(cfg)
    assert model.config == cfg and ModelConfig().film
    assert model.num_parameters() == parameters_by_hand(cfg)
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()  # every parameter is trained


def test_register_and_decode_shapes():
    torch.manual_seed(0)
    model = CVAERegistration(**SMALL).eval()
    fixed, moving = ellipsoid_pair(SMALL["image_size"], 2.0)
    with torch.no_grad():
        r = model.register(fixed, moving)
        d = model.decode(torch.randn(3, 16), moving)
    assert r.warped.shape == (1, 1, 32, 32, 16)
    assert r.velocity.shape == r.displacement.shape == r.inverse_displacement.shape == (1, 3, 32, 32, 16)
    assert r.jacobian.shape == (1, 32, 32, 16)
    assert r.mu.shape == r.logvar.shape == (1, 16)
    assert d.warped.shape == (3, 1, 32, 32, 16) and d.inverse_displacement is None
    # The result is self-consistent: warped = moving o exp(v).
    assert torch.allclose(r.warped, warp(moving, exponentiate(r.velocity, model.config.n_steps)), atol=1e-6)


def test_the_inverse_integrated_in_one_batch_with_the_forward_map_is_bit_for_bit_exp_of_minus_v():
    torch.manual_seed(0)
    model = CVAERegistration(**SMALL).eval()
    fixed, moving = ellipsoid_pair(SMALL["image_size"], 2.0)
    codes = torch.randn(2, 16)
    with torch.no_grad():
        for r in (model.register(fixed, moving, inverse=True), model.decode(codes, moving, inverse=True)):
            assert torch.equal(r.displacement, model.exponentiate(r.velocity))
            assert torch.equal(r.inverse_displacement, model.exponentiate(-r.velocity))


def test_loss_terms_and_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = CVAERegistration(**SMALL, lam=500.0)
    objective = Objective(model)
    fixed, moving = ellipsoid_pair(SMALL["image_size"], 3.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for _ in range(40):
        terms = objective(fixed, moving)
        assert set(terms) == {"loss", "similarity", "kl", "lcc"}
        assert torch.allclose(terms["loss"], terms["similarity"] + terms["kl"])
        first = first if first is not None else float(terms["similarity"].detach())
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    with torch.no_grad():
        r = model.register(fixed, moving)
        assert float(objective(fixed, moving)["similarity"]) < 0.95 * first
        weighted = objective(fixed, moving, kl_weight=0.25)
    assert torch.allclose(weighted["loss"], weighted["similarity"] + 0.25 * weighted["kl"])
    # F(x) = M(x - 3 e_X), so M o (id + u) ~ F needs u_X ~ -3 voxels on the blob.
    inside = moving[0, 0] > 0.5
    assert -4.0 < float(r.displacement[0, 0][inside].mean()) < -2.0
    assert float(((r.warped - fixed) ** 2).mean()) < 0.5 * float(((moving - fixed) ** 2).mean())


def test_model_objective_uses_the_settings_of_its_config():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SMALL, "lam": 123.0, "n_steps": 3, "sigma_lcc": 1.5, "kernel_lcc": 5,
                         "integration_downsample": 2})
    model = CVAERegistration(cfg)
    fixed, moving = ellipsoid_pair(SMALL["image_size"], 2.0)
    velocity = torch.zeros(1, 3, *SMALL["image_size"])
    velocity[:, 0] = -1.5  # close to the true motion: a translation along X
    penalty = torch.tensor([4.0])
    energy = model.objective(fixed, moving, velocity, penalty)
    lcc = symmetric_lcc(fixed, moving, velocity, n_steps=3, sigma=1.5, kernel_size=5, downsample=2)
    torch.testing.assert_close(energy.lcc, lcc, rtol=0, atol=0)
    torch.testing.assert_close(energy.total, 123.0 * (1 - lcc) + 4.0)
    plain = symmetric_lcc(fixed, moving, velocity)  # the default settings give another value
    assert float((plain - lcc).abs()) > 1e-4


def test_film_lets_the_code_scale_the_decoder_features():
    torch.manual_seed(0)
    plain, film = CVAERegistration(**SMALL), CVAERegistration(**{**SMALL, "film": True})
    # one (gamma, beta) pair per channel of each decoder stage and of the head: 2 * (8 + 8 + 4 + 4) outputs of d -> .
    assert film.num_parameters() - plain.num_parameters() == 2 * (8 + 8 + 4 + 4) * (16 + 1)
    _, moving = ellipsoid_pair(SMALL["image_size"], 0.0)
    with torch.no_grad():
        film.decoder.fc.weight.zero_()  # the bottleneck no longer sees z: any effect of z comes through FiLM
        film.decoder.velocity.weight.normal_(std=0.1)
        z = torch.randn(2, 16)
        v = film.decoder(z, moving)
        assert float((v[0] - v[1]).abs().max()) > 1e-3
        for layer in film.decoder.film:
            layer.weight.zero_()
        v = film.decoder(z, moving)
        assert torch.equal(v[0], v[1])


@pytest.mark.parametrize("fixed, moving, message", [
    (torch.zeros(1, 32, 32, 16), torch.zeros(1, 32, 32, 16), "rank 5"),
    (torch.zeros(1, 2, 32, 32, 16), torch.zeros(1, 2, 32, 32, 16), "1 channel"),
    (torch.zeros(1, 1, 32, 32, 16), torch.zeros(1, 1, 32, 32, 8), "expects"),
    (torch.full((1, 1, 32, 32, 16), float("nan")), torch.zeros(1, 1, 32, 32, 16), "NaN"),
])
def test_bad_input_is_a_one_line_value_error(fixed, moving, message):
    model = CVAERegistration(**SMALL)
    with pytest.raises(ValueError, match=message) as info:
        model.register(fixed, moving)
    assert "\n" not in str(info.value)


def test_config_round_trip_and_unknown_keys():
    cfg = ModelConfig(**SMALL)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
