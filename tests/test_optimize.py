"""cvae.optimize: test-time optimisation of the velocity (and the cvae-opt method)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cvae.checkpoint import load_checkpoint
from cvae.losses import symmetric_lcc
from cvae.methods import get_method
from cvae.model import CVAERegistration, ModelConfig
from cvae.optimize import OptimizeSettings, _residual_smoothing, optimize_velocity, register_optimized

from conftest import LATENT_SPACING, SHIPPED, ellipsoid_pair, shipped_pair, warped_mean_dice

SMALL = ModelConfig(image_size=(32, 32, 16), encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4),
                    head_channels=4, kernel_smooth=9, sigma_smooth=1.5, film=False)
SHIFT = (1.5, -1.0, 0.5)  # voxels, the known translation of test_a_known_translation_is_recovered


def small_model() -> CVAERegistration:
    torch.manual_seed(0)
    return CVAERegistration(SMALL).eval()


def texture(shape: tuple[int, ...], shift: tuple[float, ...]) -> torch.Tensor:
    """``(1, 1, *shape)``: a sum of six plane waves (wavelengths >= 12 voxels) translated by ``shift`` voxels, so that
    ``texture(s, t)(x) = texture(s, 0)(x - t)`` exactly."""
    g = torch.Generator().manual_seed(1)
    x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    image = torch.zeros(shape)
    for _ in range(6):
        k = (torch.rand(3, generator=g) - 0.5)
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        image += torch.sin(sum(k[i] * (x[i] - shift[i]) for i in range(3)) + phase)
    return image[None, None]


def lcc(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    return symmetric_lcc(fixed, moving, velocity, cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc)


def test_zero_steps_are_the_one_pass_registration():
    model = small_model()
    fixed, moving = ellipsoid_pair(SMALL.image_size, 2.0)
    result, report = register_optimized(model, fixed, moving, OptimizeSettings(coarse_steps=0, fine_steps=0))
    with torch.no_grad():
        plain = model.register(fixed, moving)
    for name in ("velocity", "displacement", "inverse_displacement", "warped", "jacobian", "mu", "logvar"):
        assert torch.equal(getattr(result, name), getattr(plain, name)), name
    assert report.steps == [] and torch.equal(report.lcc_after, report.lcc_before)


def test_the_energy_is_the_objective_plus_the_prior_penalty_and_falls():
    """At full resolution only, the last energy of the trace is ``lam (1 - LCC_sym) + lam w mean|v - v_net|^2``,
    computed here from the returned velocity; the weights are neither changed nor given gradients."""
    model = small_model()
    fixed, moving = ellipsoid_pair(SMALL.image_size, 2.0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    settings = OptimizeSettings(coarse_steps=0, fine_steps=8, coarse=1, lr=0.1, weight=0.5, tolerance=0.0)
    velocity, report = optimize_velocity(model, fixed, moving, settings)
    with torch.no_grad():
        v_net = model.register(fixed, moving).velocity
        lcc_net, lcc_opt = lcc(model, fixed, moving, v_net), lcc(model, fixed, moving, velocity)
    lam = SMALL.lam
    expected = lam * (1 - lcc_opt) + lam * settings.weight * (velocity - v_net).pow(2).mean()
    (trace,) = report.energy
    assert report.steps == [len(trace) - 1] and 1 <= report.steps[0] <= 8
    assert trace[-1] == pytest.approx(float(expected), rel=1e-5)
    assert trace[0] == pytest.approx(float(lam * (1 - lcc_net)), rel=1e-5)
    assert trace[-1] < trace[0] - 1e-3 * trace[0]
    torch.testing.assert_close(report.lcc_before, lcc_net)
    torch.testing.assert_close(report.lcc_after, lcc_opt)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_known_translation_is_recovered():
    """Pairs of plane-wave textures: the interior median displacement goes from the network's ~0 to the known
    translation (0.1 voxel in 60 steps, coarse then fine), without folding. Plane waves leave the motion along their
    fronts free (the aperture problem), so the shift is the unique answer only for a smooth residual: twice the small
    model's sigma_S here (with its own 1.5 voxels the fit reaches an LCC of 0.995 with a field 0.2 voxel off)."""
    model = small_model()
    fixed, moving = texture(SMALL.image_size, SHIFT), texture(SMALL.image_size, (0.0, 0.0, 0.0))
    settings = OptimizeSettings(coarse_steps=30, fine_steps=30, lr=0.05, weight=0.0, tolerance=0.0, patience=30,
                                residual_sigma=2 * SMALL.sigma_smooth)
    result, report = register_optimized(model, fixed, moving, settings)
    with torch.no_grad():
        start = model.register(fixed, moving).displacement
    expected = -torch.tensor(SHIFT)  # M o (id + u) = F with F(x) = M(x - t): u = -t
    interior = (slice(None), slice(6, -6), slice(6, -6), slice(4, -4))
    median = result.displacement[0][interior].flatten(1).median(dim=1).values
    assert (start[0][interior].flatten(1).median(dim=1).values - expected).abs().min() > 0.45
    assert (median - expected).abs().max() < 0.1, median
    assert report.steps == [30, 30]
    assert report.lcc_after.item() > 0.98 > 0.7 > report.lcc_before.item()
    assert result.jacobian.min().item() > 0


def test_the_prior_weight_keeps_the_velocity_near_the_networks():
    model = small_model()
    fixed, moving = ellipsoid_pair(SMALL.image_size, 2.0)
    with torch.no_grad():
        v_net = model.register(fixed, moving).velocity
    distances = []
    for weight in (0.0, 0.5, 50.0):
        settings = OptimizeSettings(coarse_steps=10, lr=0.1, weight=weight, tolerance=0.0, patience=10)
        velocity, _ = optimize_velocity(model, fixed, moving, settings)
        distances.append((velocity - v_net).pow(2).mean().sqrt().item())
    assert distances[0] > distances[1] > distances[2] > 0
    assert distances[2] < 0.2 * distances[0]


def test_the_residuals_smoothing_has_the_same_width_in_mm_on_the_coarse_level():
    """A coarse-level correction, brought to the full grid, spreads as far (in voxels of the full grid) as the
    smoothing of the same ``residual_sigma`` spreads a point at full resolution: the width does not double on the
    coarse level (it did before 2026-12-02)."""
    model = small_model()
    full = SMALL.image_size

    def spread(field: torch.Tensor) -> float:  # standard deviation (voxels) of a blob along the first axis
        profile = field[0, 0].sum(dim=(1, 2)).abs()
        x = torch.arange(len(profile), dtype=torch.float32)
        mean = (profile * x).sum() / profile.sum()
        return float(((profile * (x - mean) ** 2).sum() / profile.sum()).sqrt())

    impulse = torch.zeros(1, 3, *full)
    impulse[0, :, 16, 16, 8] = 1.0
    layer = spread(model.smooth(impulse))
    coarse = torch.zeros(1, 3, *(n // 2 for n in full))
    coarse[0, :, 8, 8, 4] = 1.0

    def on_full(field: torch.Tensor) -> torch.Tensor:
        return F.interpolate(field, size=full, mode="trilinear", align_corners=True)

    resampling = spread(on_full(coarse))  # variances add: the resampling's own spread, then the smoothing's
    for sigma, width in ((None, layer), (2 * SMALL.sigma_smooth, 2 * layer)):
        expected = math.sqrt(width ** 2 + resampling ** 2)
        assert spread(on_full(_residual_smoothing(model, sigma, 2)(coarse))) == pytest.approx(expected, rel=0.05), sigma
    assert _residual_smoothing(model, None, 1) is model.smooth


def test_early_stopping_after_patience_steps_without_progress():
    model = small_model()
    fixed, moving = ellipsoid_pair(SMALL.image_size, 2.0)
    _, report = optimize_velocity(model, fixed, moving, OptimizeSettings(coarse_steps=40, tolerance=1.0, patience=3))
    assert report.steps == [3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(coarse_steps=-1), "steps must be >= 0"), (dict(fine_steps=-2), "steps must be >= 0"),
    (dict(lr=0.0), "lr > 0"), (dict(lr=float("nan")), "lr > 0"), (dict(weight=-1.0), "weight >= 0"),
    (dict(coarse=0), "coarse and patience"), (dict(patience=0), "coarse and patience"),
    (dict(tolerance=-0.1), "tolerance >= 0"), (dict(residual_sigma=0.0), "residual_sigma must be > 0"),
    (dict(residual_sigma=float("inf")), "residual_sigma must be > 0")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizeSettings(**kwargs)


def test_cvae_opt_method_is_the_optimised_registration(latent_checkpoint):
    method = get_method("cvae-opt", latent_checkpoint, "cpu")
    model, _ = load_checkpoint(latent_checkpoint, "cpu")
    fixed, moving = ellipsoid_pair(model.config.image_size, 2.0)
    out = method.register(fixed, moving, LATENT_SPACING)
    expected, _ = register_optimized(model, fixed, moving, OptimizeSettings(), inverse=False)
    assert method.name == "cvae-opt" and get_method("cvae", latent_checkpoint, "cpu").name == "cvae"
    torch.testing.assert_close(out.displacement, expected.displacement)
    with torch.no_grad():
        plain = model.register(fixed, moving).displacement
    assert not torch.allclose(out.displacement, plain, atol=1e-3)


@pytest.mark.skipif(not SHIPPED, reason="the shipped checkpoint checkpoints/synthetic-acdc is not there")
def test_optimisation_improves_the_shipped_models_registration():
    """On a synthetic ED -> ES pair the optimised velocity matches the images and the ES labels better, with no
    folding."""
    model, prep, fixed, moving = shipped_pair()
    with torch.no_grad():
        plain = model.register(fixed, moving, inverse=False)
    optimised, report = register_optimized(model, fixed, moving, inverse=False)
    assert report.lcc_after.item() > report.lcc_before.item() + 0.005
    assert (optimised.jacobian <= 0).float().mean().item() < 1e-4
    assert warped_mean_dice(prep, optimised.displacement) > warped_mean_dice(prep, plain.displacement) + 0.005
