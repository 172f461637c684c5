"""How test-time optimisation (:mod:`cvae.optimize`) runs: :class:`OptimizeSettings`, importable without torch
(``cvae register --help`` shows its defaults at once)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["OptimizeSettings"]


@dataclass(frozen=True)
class OptimizeSettings:
    """How :func:`optimize_velocity` optimises: ``coarse_steps`` and ``fine_steps`` (at most, per level) of Adam with
    learning rate ``lr`` (voxels of the level), on a grid ``coarse`` times coarser first (1: no coarse level),
    ``weight`` of the prior's penalty relative to ``lam``, ``residual_sigma`` the width (voxels of the full grid) of the
    residual's Gaussian smoothing, the same in mm on every level (``None``: the model's sigma_S), early stopping when
    the energy has not decreased by a relative ``tolerance`` over ``patience`` steps.

    The defaults were chosen on training pairs of the synthetic cohort, as they are and randomised as training's
    ``--domain full`` does (``benchmarks/RESULTS.md``, section 7): most of the gain comes from the coarse level;
    full-resolution steps cost about ten coarse ones each and add little; a residual 1.5 times as wide as the decoded
    velocity's smoothing (4.5 voxels for the shipped model) scores best over both kinds of pairs."""

    coarse_steps: int = 20
    fine_steps: int = 0
    lr: float = 0.2
    weight: float = 0.05
    coarse: int = 2
    residual_sigma: float | None = 4.5
    tolerance: float = 1e-4
    patience: int = 5

    def __post_init__(self) -> None:
        if self.coarse_steps < 0 or self.fine_steps < 0:
            raise ValueError(f"optimisation steps must be >= 0, got {self.coarse_steps} and {self.fine_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"need lr > 0 and weight >= 0, got {self.lr} and {self.weight}")
        if self.coarse < 1 or self.patience < 1 or not self.tolerance >= 0:
            raise ValueError("coarse and patience must be >= 1 and tolerance >= 0")
        if self.residual_sigma is not None and not (math.isfinite(self.residual_sigma) and self.residual_sigma > 0):
            raise ValueError(f"residual_sigma must be > 0 (or None: the model's), got {self.residual_sigma}")

    @property
    def steps(self) -> int:
        return self.coarse_steps + self.fine_steps
