"""Test-time optimisation: start from the network's velocity and lower the project's objective on the pair itself.

One forward pass gives the velocity ``v_net`` the network predicts for a pair; a network can only be as good as the
pairs it saw. :func:`optimize_velocity` refines that prediction on the pair, the way the Learn2Reg entries refine a
learnt initialisation ("instance optimisation"), while keeping everything that makes the result a diffeomorphism:

* the parametrisation stays a stationary velocity, ``v = v_net + S(r)``, with ``r`` a residual velocity (voxels) and
  ``S`` a Gaussian smoothing of width ``residual_sigma`` (voxels of the full grid; by default 4.5, 1.5 times the
  shipped model's sigma_S), the same width in mm on every level, so ``v`` stays a smooth velocity like a decoded one;
* ``exp(v)`` comes from the model's scaling and squaring, so the transform is a diffeomorphism and its inverse is
  ``exp(-v)``, as for one forward pass;
* the objective is the project's one energy (:func:`cvae.losses.objective`), ``lam * (1 - LCC_sym(F, M; v))`` plus a
  penalty that plays the role of the prior: ``lam * weight * mean |S(r)|^2``, the negative log density (up to
  constants) of a Gaussian prior on the smoothed residual centred on the network's prediction. The network's
  velocity is the prior's mean; ``weight`` is its precision relative to the likelihood.

The optimisation is multi-scale: first on a grid ``coarse`` times coarser (images block-averaged, velocities resampled
and scaled to the coarse voxels), which is cheap and catches the large corrections, then at full resolution. Each
level is Adam on ``r`` for at most its number of steps, stopped early when the energy has not decreased by a relative
``tolerance`` over the last ``patience`` steps. Zero steps give exactly the one-pass registration.

The optimised field is no longer a decoded code: ``result.mu`` stays the encoder's code of the pair, which decodes to
the one-pass registration, not to the optimised one (the latent-space tools work on codes, not on optimised fields).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cvae.fields import jacobian_determinant
from cvae.losses import Energy, objective
from cvae.model import CVAERegistration, GaussianSmoothing, RegistrationResult
from cvae.optimize_settings import OptimizeSettings

__all__ = ["OptimizeSettings", "Optimization", "optimize_velocity", "register_optimized"]


@dataclass
class Optimization:
    """What an optimisation did: ``steps`` taken per level (coarse, fine), the ``energy`` before each step and after
    the last (per level, summed over the batch), the pairs' symmetric LCC ``(B,)`` before and after, and its
    wall-clock ``seconds``."""

    steps: list[int] = field(default_factory=list)
    energy: list[list[float]] = field(default_factory=list)
    lcc_before: torch.Tensor | None = None
    lcc_after: torch.Tensor | None = None
    seconds: float = 0.0


def _level(model: CVAERegistration, factor: int) -> tuple[float, int]:
    """The LCC window ``(sigma, kernel size)`` in voxels of a grid ``factor`` times coarser (the same size in mm)."""
    cfg = model.config
    sigma = cfg.sigma_lcc / factor
    return sigma, max(3, 2 * math.ceil(2 * sigma) + 1)


def _resize(field_: torch.Tensor, size: tuple[int, ...], factor: float) -> torch.Tensor:
    """A velocity ``(B, 3, ...)`` resampled to ``size`` voxels, its values (voxels) divided by ``factor``."""
    if tuple(field_.shape[2:]) == tuple(size):
        return field_
    return F.interpolate(field_, size=size, mode="trilinear", align_corners=True) / factor


def _residual_smoothing(model: CVAERegistration, sigma: float | None, factor: int) -> torch.nn.Module:
    """The residual's smoothing on a level ``factor`` times coarser: a Gaussian of ``sigma`` voxels of the full grid
    (``None``: the model's sigma_S), i.e. of the same width in mm on every level; the model's own layer at full
    resolution with its sigma."""
    if factor == 1 and sigma in (None, model.smooth.sigma):
        return model.smooth
    level_sigma = (model.smooth.sigma if sigma is None else sigma) / factor
    return GaussianSmoothing(level_sigma, 2 * math.ceil(2.5 * level_sigma) + 1).to(model.device)


def optimize_velocity(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor,
                      settings: OptimizeSettings = OptimizeSettings()) -> tuple[torch.Tensor, Optimization]:
    """The optimised velocity ``(B, 3, X, Y, Z)`` (voxels) of pairs ``fixed, moving (B, 1, X, Y, Z)`` on the model's
    grid, and what the optimisation did (module docstring). The model's weights are neither changed nor given
    gradients."""
    start = time.perf_counter()
    cfg = model.config
    with torch.no_grad():
        mu, _ = model.encode(fixed, moving)
        v_net = model.velocity(mu, moving)
    residual = torch.zeros_like(v_net)  # what the levels done so far add to v_net (full grid, voxels)
    report = Optimization()
    full = tuple(v_net.shape[2:])
    for factor, steps in ((settings.coarse, settings.coarse_steps), (1, settings.fine_steps)):
        if steps == 0:
            continue
        size = tuple(max(2, n // factor) for n in full)
        f = F.adaptive_avg_pool3d(fixed, size) if factor > 1 else fixed
        m = F.adaptive_avg_pool3d(moving, size) if factor > 1 else moving
        base, offset = _resize(v_net, size, factor), _resize(residual, size, factor)
        sigma, kernel = _level(model, factor)
        smooth = _residual_smoothing(model, settings.residual_sigma, factor)
        r = torch.zeros_like(base, requires_grad=True)
        optimiser = torch.optim.Adam([r], lr=settings.lr)

        def energy(r: torch.Tensor) -> Energy:
            extra = offset + smooth(r)
            penalty = cfg.lam * settings.weight * extra.pow(2).flatten(1).mean(dim=1)
            return objective(f, m, base + extra, penalty, cfg.lam, cfg.n_steps, sigma, kernel,
                             cfg.integration_downsample)

        trace: list[float] = []  # the energy before each step and after the last
        with torch.enable_grad():
            for step in range(steps + 1):
                value = energy(r).total.sum()
                trace.append(float(value.detach()))
                window = trace[-settings.patience - 1:]
                if step == steps or (len(window) > settings.patience
                                     and window[0] - window[-1] <= settings.tolerance * abs(window[0])):
                    break
                (r.grad,) = torch.autograd.grad(value, [r])
                optimiser.step()
        with torch.no_grad():
            residual = residual + _resize(smooth(r), full, 1.0 / factor)
        report.steps.append(len(trace) - 1)
        report.energy.append(trace)
    with torch.no_grad():
        velocity = v_net + residual
        report.lcc_before = objective(fixed, moving, v_net, torch.zeros(()), cfg.lam, cfg.n_steps, cfg.sigma_lcc,
                                      cfg.kernel_lcc, cfg.integration_downsample).lcc
        report.lcc_after = objective(fixed, moving, velocity, torch.zeros(()), cfg.lam, cfg.n_steps, cfg.sigma_lcc,
                                     cfg.kernel_lcc, cfg.integration_downsample).lcc
    report.seconds = time.perf_counter() - start
    return velocity, report


def register_optimized(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor,
                       settings: OptimizeSettings = OptimizeSettings(), inverse: bool = True
                       ) -> tuple[RegistrationResult, Optimization]:
    """:meth:`CVAERegistration.register` followed by :func:`optimize_velocity`: the result's fields come from the
    optimised velocity (``warped``, ``displacement`` of ``exp(v)``, ``inverse_displacement`` of ``exp(-v)``,
    ``jacobian``); ``mu`` and ``logvar`` stay the encoder's (module docstring)."""
    velocity, report = optimize_velocity(model, fixed, moving, settings)
    with torch.no_grad():
        mu, logvar = model.encode(fixed, moving)
        u = model.exponentiate(velocity)
        result = RegistrationResult(warped=model.transformer(moving, u), velocity=velocity, displacement=u,
                                    inverse_displacement=model.exponentiate(-velocity) if inverse else None,
                                    jacobian=jacobian_determinant(u), mu=mu, logvar=logvar)
    return result, report
