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
    ``weight`` of the prior's penalty relative to ``lam``, early stopping when the energy has not decreased by a
    relative ``tolerance`` over ``patience`` steps.

    The defaults were chosen on six training pairs of the synthetic cohort (``benchmarks/RESULTS.md``): most of the
    gain comes from the coarse level; full-resolution steps cost about ten coarse ones each and add little."""

    coarse_steps: int = 20
    fine_steps: int = 0
    lr: float = 0.2
    weight: float = 0.05
    coarse: int = 2
    tolerance: float = 1e-4
    patience: int = 5

    def __post_init__(self) -> None:
        if self.coarse_steps < 0 or self.fine_steps < 0:
            raise ValueError(f"optimisation steps must be >= 0, got {self.coarse_steps} and {self.fine_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"need lr > 0 and weight >= 0, got {self.lr} and {self.weight}")
        if self.coarse < 1 or self.patience < 1 or not self.tolerance >= 0:
            raise ValueError("coarse and patience must be >= 1 and tolerance >= 0")

    @property
    def steps(self) -> int:
        return self.coarse_steps + self.fine_steps
