"""cvae.latent.priors: N(0, I) and the Gaussian fit of a cohort's aggregate posterior; sampling from either."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae.latent.priors import CodePrior


def cohort_codes(n: int = 40, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes off the origin with correlated, unequal spreads, as a trained encoder gives: ``mu, sigma (n, d)``."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(1.0, 0.3, d)
    mu = rng.normal(size=(n, d)) @ mixing.T + np.linspace(-1.5, 1.0, d)
    return mu, rng.uniform(0.02, 0.3, size=(n, d))


def test_standard_prior_is_temperature_times_eps() -> None:
    z = CodePrior.standard(5).draw(7, temperature=0.5, seed=11)
    assert z.dtype == torch.float32 and z.shape == (7, 5)
    assert torch.equal(z, 0.5 * torch.randn(7, 5, generator=torch.Generator().manual_seed(11)))


def test_aggregate_has_the_moments_of_the_mixture_of_posteriors() -> None:
    mu, sigma = cohort_codes()
    prior = CodePrior.aggregate(mu, sigma)
    # The mixture (1/n) sum_i N(mu_i, diag(sigma_i^2)), from its definition: E[z z^T] - E[z] E[z]^T.
    mean = sum(mu) / len(mu)
    second = sum(np.outer(m, m) + np.diag(s ** 2) for m, s in zip(mu, sigma)) / len(mu)
    np.testing.assert_allclose(prior.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prior.cov, second - np.outer(mean, mean), rtol=0, atol=1e-12)
    assert prior.latent_dim == 4 and "40 subjects" in prior.name


def test_draws_follow_the_fitted_gaussian() -> None:
    mu, sigma = cohort_codes()
    prior = CodePrior.aggregate(mu, sigma)
    z = prior.draw(200_000, seed=0).double().numpy()
    # Standard errors at 200k draws are ~0.002-0.004 on these scales; 0.02 leaves a wide margin and no false pass
    # for a wrong mean (off by >= 1) or a wrong factor (L^T instead of L changes the covariance by ~0.3).
    np.testing.assert_allclose(z.mean(axis=0), prior.mean, atol=0.02)
    np.testing.assert_allclose(np.cov(z, rowvar=False), prior.cov, atol=0.02)
    half = prior.draw(200_000, temperature=0.5, seed=1).double().numpy()
    np.testing.assert_allclose(np.cov(half, rowvar=False), 0.25 * prior.cov, atol=0.01)
    assert torch.equal(prior.draw(3, seed=5), prior.draw(3, seed=5))
    np.testing.assert_allclose(prior.draw(2, temperature=0.0, seed=5).numpy(), np.stack([prior.mean] * 2),
                               rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: CodePrior.aggregate(*cohort_codes(n=1)), "at least 2 subjects"),
    (lambda: CodePrior.aggregate(np.full((3, 2), np.nan), np.ones((3, 2))), "NaN or infinite"),
    (lambda: CodePrior.aggregate(np.zeros((3, 2)), np.ones((3, 4))), "must both be"),
    (lambda: CodePrior(np.zeros(2), -np.eye(2), "bad").draw(1), "not positive definite"),
    (lambda: CodePrior.standard(2).draw(0), "n must be >= 1"),
    (lambda: CodePrior.standard(2).draw(1, temperature=float("nan")), "temperature"),
])
def test_bad_priors_and_requests(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
