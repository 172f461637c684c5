"""Code warm-up: motion summaries, their whitened PCA (against scikit-learn), the schedule and the loss term."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from cvae.model import CVAERegistration
from cvae.training.objective import Objective
from cvae.training.warmup import SummaryPCA, motion_summary, warmup_weight

from conftest import TINY_MODEL


def test_motion_summary_is_the_block_mean_of_the_difference():
    gen = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(2, 1, 16, 16, 4, generator=gen), torch.rand(2, 1, 16, 16, 4, generator=gen)
    summary = motion_summary(fixed, moving)
    assert summary.shape == (2, 8 * 8 * 2)
    diff = (fixed - moving).numpy()
    # block (i, j, k) of the 8 x 8 x 2 grid covers voxels [2i, 2i+2) x [2j, 2j+2) x [2k, 2k+2), row-major order
    expected = diff.reshape(2, 8, 2, 8, 2, 2, 2).mean(axis=(2, 4, 6)).reshape(2, -1)
    np.testing.assert_allclose(summary.numpy(), expected, atol=1e-6)


def test_summary_pca_whitens_like_scikit_learn():
    gen = torch.Generator().manual_seed(1)
    mixing = torch.randn(5, 12, generator=gen) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5])[:, None]
    data = torch.randn(200, 5, generator=gen) @ mixing + 0.01 * torch.randn(200, 12, generator=gen) + 3.0
    pca = SummaryPCA.fit(data, 3)
    scores = (data - pca.mean) @ pca.projection
    np.testing.assert_allclose(scores.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(scores.std(0).numpy(), 1.0, atol=1e-4)  # unit variance, like the prior
    reference = PCA(n_components=3, whiten=True, svd_solver="full").fit_transform(data.double().numpy())
    for k in range(3):  # the same components up to sign
        corr = np.corrcoef(scores[:, k].numpy(), reference[:, k])[0, 1]
        assert abs(corr) > 0.9999, k


def test_summary_pca_target_of_image_pairs():
    gen = torch.Generator().manual_seed(2)
    pairs = [(torch.rand(1, 16, 16, 4, generator=gen), torch.rand(1, 16, 16, 4, generator=gen)) for _ in range(6)]
    pca = SummaryPCA.from_pairs(pairs, 4)
    fixed = torch.stack([f for f, _ in pairs])
    moving = torch.stack([m for _, m in pairs])
    target = pca(fixed, moving)
    assert target.shape == (6, 4)
    np.testing.assert_allclose(target.std(0).numpy(), 1.0, atol=1e-4)
    assert SummaryPCA.from_pairs(pairs, 16).n_components == 5  # 6 pairs have 5 components: only those get targets
    with pytest.raises(ValueError, match="at least 2 training pairs"):
        SummaryPCA.from_pairs(pairs[:1], 4)


@pytest.mark.parametrize("step, expected", [(0, 300.0), (49, 300.0), (50, 300.0), (75, 150.0), (99, 6.0),
                                            (100, 0.0), (5000, 0.0)])
def test_warmup_weight_holds_then_fades(step, expected):
    assert warmup_weight(step, 100, 300.0) == pytest.approx(expected)
    assert warmup_weight(step, 0, 300.0) == 0.0


def test_objective_adds_the_weighted_code_term_only_while_it_lasts():
    torch.manual_seed(0)
    model = CVAERegistration(**TINY_MODEL, latent_dim=4)
    gen = torch.Generator().manual_seed(3)
    pairs = [(torch.rand(1, *TINY_MODEL["image_size"], generator=gen),
              torch.rand(1, *TINY_MODEL["image_size"], generator=gen)) for _ in range(8)]
    objective = Objective(model, SummaryPCA.from_pairs(pairs, 4))
    fixed, moving = pairs[0][0][None], pairs[0][1][None]
    with torch.no_grad():
        torch.manual_seed(1)
        terms = objective(fixed, moving, kl_weight=0.5, code_weight=300.0)
        mu, _ = model.encode(fixed, moving)
        expected = float((mu - objective.target(fixed, moving)).pow(2).mean())
        torch.manual_seed(1)
        plain = objective(fixed, moving, kl_weight=0.5, code_weight=0.0)
    assert float(terms["code"]) == pytest.approx(expected, rel=1e-5) and expected > 0.1
    assert float(terms["loss"]) == pytest.approx(float(terms["similarity"] + 0.5 * terms["kl"]
                                                       + 300.0 * terms["code"]), rel=1e-5)
    few = Objective(model, SummaryPCA.from_pairs(pairs[:3], 4))  # 3 pairs: targets for the first 2 dimensions only
    with torch.no_grad():
        partial = few(fixed, moving, code_weight=1.0)
    expected = float((mu[:, :2] - few.target(fixed, moving)).pow(2).mean())
    assert few.target.n_components == 2 and float(partial["code"]) == pytest.approx(expected, rel=1e-5)
    assert "code" not in plain and float(plain["loss"]) == pytest.approx(float(terms["loss"] - 300 * terms["code"]),
                                                                         rel=1e-5)
