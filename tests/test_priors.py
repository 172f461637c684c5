"""cvae.latent.priors: N(0, I) and the Gaussian fit of a cohort's aggregate posterior; sampling from either."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae.latent.priors import CodePrior

from conftest import cohort_posteriors


def test_standard_prior_is_temperature_times_eps() -> None:
    z = CodePrior.standard(5).draw(7, temperature=0.5, seed=11)
    assert z.dtype == torch.float32 and z.shape == (7, 5)
    assert torch.equal(z, 0.5 * torch.randn(7, 5, generator=torch.Generator().manual_seed(11)))


def test_aggregate_has_the_moments_of_the_mixture_of_posteriors() -> None:
    mu, sigma = cohort_posteriors()
    prior = CodePrior.aggregate(mu, sigma)
    # The mixture (1/n) sum_i N(mu_i, diag(sigma_i^2)), from its definition: E[z z^T] - E[z] E[z]^T.
    mean = sum(mu) / len(mu)
    second = sum(np.outer(m, m) + np.diag(s ** 2) for m, s in zip(mu, sigma)) / len(mu)
    np.testing.assert_allclose(prior.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prior.cov, second - np.outer(mean, mean), rtol=0, atol=1e-12)
    assert prior.latent_dim == 4 and "40 subjects" in prior.name


def test_draws_follow_the_fitted_gaussian() -> None:
    mu, sigma = cohort_posteriors()
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


def test_posterior_draws_have_the_pairs_mean_and_per_dimension_std() -> None:
    mu, sigma = np.array([1.0, -2.0, 0.5, 0.0]), np.array([0.1, 2.0, 0.5, 1e-3])
    prior = CodePrior.posterior(mu, sigma)
    np.testing.assert_array_equal(prior.mean, mu)
    np.testing.assert_array_equal(prior.cov, np.diag(sigma ** 2))
    assert prior.latent_dim == 4 and "posterior" in prior.name
    z = prior.draw(200_000, seed=3).double().numpy()
    # standard errors at 200k draws: sigma / 450 for the mean, sigma / 630 for the std; 1 % of sigma is > 4 of them
    assert (np.abs(z.mean(axis=0) - mu) < 0.01 * sigma).all(), z.mean(axis=0) - mu
    np.testing.assert_allclose(z.std(axis=0, ddof=1), sigma, rtol=0.01)
    correlation = np.corrcoef(z, rowvar=False)
    assert np.abs(correlation - np.eye(4)).max() < 0.01  # independent dimensions
    assert torch.equal(prior.draw(5, seed=3), prior.draw(5, seed=3))
    # z = mu + sigma * eps with the standard prior's eps
    eps = CodePrior.standard(4).draw(5, seed=3).double().numpy()
    np.testing.assert_allclose(prior.draw(5, seed=3).double().numpy(), mu + sigma * eps, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mu, sigma", [
    (np.zeros(3), np.array([1.0, 0.0, 1.0])),
    (np.zeros(3), np.array([1.0, -0.5, 1.0])),
    (np.zeros(3), np.array([1.0, np.nan, 1.0])),
    (np.array([0.0, np.inf, 0.0]), np.ones(3)),
    (np.zeros(3), np.ones(4)),
    (np.zeros((2, 3)), np.ones((2, 3))),
])
def test_posterior_refuses_invalid_widths_with_one_line(mu, sigma) -> None:
    with pytest.raises(ValueError, match="mu and sigma must be finite \\(d,\\) vectors with sigma > 0") as info:
        CodePrior.posterior(mu, sigma)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make, message", [
    (lambda: CodePrior.aggregate(*cohort_posteriors(n=1)), "at least 2 subjects"),
    (lambda: CodePrior.aggregate(np.full((3, 2), np.nan), np.ones((3, 2))), "NaN or infinite"),
    (lambda: CodePrior.aggregate(np.zeros((3, 2)), np.ones((3, 4))), "must both be"),
    (lambda: CodePrior(np.zeros(2), -np.eye(2), "bad").draw(1), "not positive definite"),
    (lambda: CodePrior.standard(2).draw(0), "n must be >= 1"),
    (lambda: CodePrior.standard(2).draw(1, temperature=float("nan")), "temperature"),
])
def test_bad_priors_and_requests(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
