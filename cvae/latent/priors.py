"""Distributions of latent codes to draw deformations from: the model's prior and a cohort's aggregate posterior.

The method's prior is ``N(0, I)``. A trained encoder does not fill it exactly: the codes of a cohort (its aggregate
posterior ``q(z) = mean_i q(z | F_i, M_i)``) can sit off the origin and be narrower than 1 along some axes, and then
codes drawn from ``N(0, I)`` decode to motions no subject has (``benchmarks/RESULTS.md``, section 3, measures how
often). :meth:`CodePrior.aggregate` fits a Gaussian to a cohort's codes instead (its mean and covariance: the
moments of the mixture of the posteriors), the ex-post density estimate of regularised autoencoders (Ghosh et al.,
"From variational to deterministic autoencoders", ICLR 2020). These (and one pair's posterior, to draw other plausible
registrations of that pair) are :class:`CodePrior` objects with one ``draw``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CodePrior", "seeded_generator"]


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator (the same draws on every device) or ``None`` for torch's global stream."""
    return torch.Generator().manual_seed(int(seed)) if seed is not None else None


@dataclass(frozen=True)
class CodePrior:
    """The Gaussian ``N(mean, cov)`` over codes ``z (d,)``; ``name`` says where it comes from (in error messages)."""

    mean: np.ndarray  # (d,)
    cov: np.ndarray   # (d, d), symmetric positive definite
    name: str

    @property
    def latent_dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def standard(cls, latent_dim: int) -> CodePrior:
        """The model's prior ``N(0, I)`` in ``latent_dim`` dimensions."""
        return cls(np.zeros(int(latent_dim)), np.eye(int(latent_dim)), "N(0, I)")

    @classmethod
    def posterior(cls, mu: np.ndarray, sigma: np.ndarray) -> CodePrior:
        """One pair's posterior ``q(z | F, M) = N(mu, diag(sigma^2))`` from its ``mu, sigma (d,)`` (``sigma > 0``):
        codes drawn from it are other plausible registrations of that pair."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or mu.shape != sigma.shape or not (np.isfinite(mu).all() and (sigma > 0).all()):
            raise ValueError(f"mu and sigma must be finite (d,) vectors with sigma > 0, got shapes {mu.shape} and "
                             f"{sigma.shape}")
        return cls(mu, np.diag(sigma ** 2), "the pair's posterior q(z | F, M)")

    @classmethod
    def aggregate(cls, mu: np.ndarray, sigma: np.ndarray) -> CodePrior:
        """The Gaussian with the moments of a cohort's aggregate posterior, from its posteriors' means ``mu (n, d)``
        and standard deviations ``sigma (n, d)`` (one row per subject): mean ``E[mu]``, covariance
        ``Cov(mu) + diag(E[sigma^2])``: exactly the mean and covariance of the mixture
        ``(1/n) sum_i N(mu_i, diag(sigma_i^2))`` (``Cov`` over the ``n`` subjects, divided by ``n``).
        :func:`cvae.latent.cohort_prior` reads them from a cohort table."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 2 or mu.shape != sigma.shape:
            raise ValueError(f"mu and sigma must both be (subjects, d), got {mu.shape} and {sigma.shape}")
        if len(mu) < 2:
            raise ValueError(f"a cohort prior needs the codes of at least 2 subjects, got {len(mu)}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("the codes hold NaN or infinite values: re-encode the cohort (cvae embed)")
        d = mu.shape[1]
        cov = np.cov(mu, rowvar=False, bias=True).reshape(d, d) + np.diag((sigma ** 2).mean(axis=0))
        return cls(mu.mean(axis=0), cov, f"the aggregate posterior of {len(mu)} subjects")

    def draw(self, n: int, temperature: float = 1.0, seed: int | None = None) -> torch.Tensor:
        """``n`` codes ``z = mean + temperature * L eps``, ``eps ~ N(0, I)``, ``L L^T = cov``: ``(n, d)`` float32
        on the CPU, repeatable with ``seed``; for ``N(0, I)`` exactly ``temperature * eps``."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1 samples, got {n}")
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        eps = torch.randn(int(n), self.latent_dim, generator=seeded_generator(seed))
        try:
            factor = torch.linalg.cholesky(torch.as_tensor(self.cov, dtype=torch.float64)).float()
        except torch.linalg.LinAlgError as exc:
            raise ValueError(f"the covariance of {self.name} is not positive definite") from exc
        return torch.as_tensor(self.mean, dtype=torch.float32) + float(temperature) * (eps @ factor.T)
