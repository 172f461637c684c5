"""Code warm-up: a label-free starting target for the latent code, against posterior collapse.

A freshly initialised encoder gives nearly the same code to every pair (a spread far below the posterior width), so
the decoder, which also sees M, learns the average motion of an anatomy from M and never finds a use for z; the
encoder then gets no signal to become informative (posterior collapse, a saddle rather than the ELBO's optimum: the
code stays unused even without the KL term). The model card of ``synthetic-acdc`` has the measurements.

The warm-up breaks the saddle with a target the code can reach from the images alone: the *motion summary* of a
pair, its difference image ``F - M`` averaged over a coarse grid of blocks (``SUMMARY_GRID``, 8 x 8 x 2 blocks, i.e.
24 x 24 x 50 mm on the paper's 128 x 128 x 32 crop), whitened by the principal components of the training cohort
(it predicts the ejection fractions well: see the model card). For the first steps of training the code ``mu`` is
pulled toward the pair's ``d`` leading whitened components (unit variance, like the prior N(0, I)); the pull then
fades to zero and training continues on the paper's ELBO alone. Nothing here uses labels or ground-truth motion: it
works the same on real ACDC.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SUMMARY_GRID", "motion_summary", "SummaryPCA", "warmup_weight"]

#: Blocks of the motion summary along (X, Y, Z).
SUMMARY_GRID = (8, 8, 2)


def motion_summary(fixed: torch.Tensor, moving: torch.Tensor, grid: tuple[int, int, int] = SUMMARY_GRID
                   ) -> torch.Tensor:
    """Block means of ``fixed - moving``: ``(B, 1, X, Y, Z)`` twice -> ``(B, prod(grid))`` (intensity units)."""
    return F.adaptive_avg_pool3d(fixed - moving, grid).flatten(1)


class SummaryPCA(nn.Module):
    """Whitened principal components of motion summaries: pairs ``(B, 1, X, Y, Z)`` -> ``(B, k)`` scores.

    Fitted once from a cohort (deterministically: an SVD), then fixed; the mean and the whitening projection are
    buffers, so the module moves with the model between devices and holds no trainable parameters.
    """

    def __init__(self, mean: torch.Tensor, projection: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("projection", projection)

    @classmethod
    def fit(cls, summaries: torch.Tensor, n_components: int) -> "SummaryPCA":
        """PCA of ``summaries (N, n)``; the leading scores of the cohort get unit variance.

        Keeps ``n_components`` components, or ``min(N - 1, n)`` when the cohort has fewer (the code's remaining
        dimensions then get no target). Raises ``ValueError`` for fewer than 2 summaries.
        """
        n, features = summaries.shape
        if n < 2:
            raise ValueError(f"the code warm-up needs at least 2 training pairs, got {n}: set --code-warmup 0")
        n_components = min(n_components, n - 1, features)
        summaries = summaries.double()
        mean = summaries.mean(dim=0)
        _, singular, vh = torch.linalg.svd(summaries - mean, full_matrices=False)
        scale = (singular[:n_components] / (n - 1) ** 0.5).clamp_min(1e-12)
        # fix each component's sign (an SVD is defined up to it) so that the target does not depend on the solver
        signs = torch.sign(vh[:n_components].sum(dim=1) + 1e-30)
        projection = (vh[:n_components] * signs[:, None]).T / scale
        return cls(mean.float(), projection.float())

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], n_components: int) -> "SummaryPCA":
        """Fit from ``(fixed, moving)`` pairs, each ``(1, X, Y, Z)`` or ``(B, 1, X, Y, Z)``."""
        summaries = [motion_summary(f.reshape(-1, 1, *f.shape[-3:]), m.reshape(-1, 1, *m.shape[-3:]))
                     for f, m in pairs]
        return cls.fit(torch.cat(summaries), n_components)

    @property
    def n_components(self) -> int:
        return int(self.projection.shape[1])

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, k)`` of the code's first ``k = n_components`` dimensions for pairs ``(B, 1, X, Y, Z)``."""
        return (motion_summary(fixed, moving) - self.mean) @ self.projection


def warmup_weight(step: int, steps: int, weight: float) -> float:
    """Weight of the warm-up term at 0-based ``step``: ``weight`` for the first half of ``steps``, then a linear
    fade to 0 at ``steps`` (and 0 afterwards, or always when ``steps`` is 0)."""
    if steps <= 0 or step >= steps:
        return 0.0
    half = steps / 2
    return weight if step < half else weight * (steps - step) / (steps - half)
