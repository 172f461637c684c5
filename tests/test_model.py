"""The CVAE registration network: size, shapes, training signal and input validation."""
from __future__ import annotations

import pytest
import torch

from cvae.fields import exponentiate, warp
from cvae.model import CVAERegistration, ModelConfig
from cvae.training.objective import Objective

SMALL = dict(image_size=(32, 32, 16), encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
             kernel_smooth=9, sigma_smooth=1.5, film=False)


def blob_pair(shape, shift: float):
    """``(fixed, moving)``: a bright ellipsoid (moving) and the same ellipsoid translated by ``shift`` along X."""
    x, y, z = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    c = [n / 2 for n in shape]

    def blob(dx):
        r = ((x - c[0] - dx) / 6) ** 2 + ((y - c[1]) / 5) ** 2 + ((z - c[2]) / 3) ** 2
        return torch.sigmoid(4 * (1 - r))[None, None]

    return blob(shift), blob(0.0)


def test_paper_sized_model_has_about_267k_parameters():
    model = CVAERegistration()
    assert abs(model.num_parameters() - 267_000) / 267_000 < 0.15
    assert model.config == ModelConfig()


def test_register_and_decode_shapes():
    torch.manual_seed(0)
    model = CVAERegistration(**SMALL).eval()
    fixed, moving = blob_pair(SMALL["image_size"], 2.0)
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


def test_loss_terms_and_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = CVAERegistration(**SMALL, lam=500.0)
    objective = Objective(model)
    fixed, moving = blob_pair(SMALL["image_size"], 3.0)
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


def test_film_lets_the_code_scale_the_decoder_features():
    torch.manual_seed(0)
    plain, film = CVAERegistration(**SMALL), CVAERegistration(**{**SMALL, "film": True})
    # one (gamma, beta) pair per channel of each decoder stage and of the head: 2 * (8 + 8 + 4 + 4) outputs of d -> .
    assert film.num_parameters() - plain.num_parameters() == 2 * (8 + 8 + 4 + 4) * (16 + 1)
    _, moving = blob_pair(SMALL["image_size"], 0.0)
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
