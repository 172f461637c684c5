"""Local cross-correlation, its symmetric form, the KL divergence, and the soft label Dice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import numpy_lcc
from cvae.fields import gaussian_kernel1d, gaussian_smooth
from cvae.losses import kl_divergence, local_cross_correlation, objective, soft_label_dice, symmetric_lcc

SHAPE = (16, 16, 12)


def smooth_image(seed: int, shape=SHAPE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, *shape, generator=gen, dtype=torch.float64)
    return gaussian_smooth(noise, gaussian_kernel1d(1.0, 5, torch.float64)) * 4


def smooth_velocity(seed: int, scale: float, shape=SHAPE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)
    return scale * gaussian_smooth(noise, gaussian_kernel1d(2.0, 9, torch.float64))


def test_lcc_of_an_image_with_itself_is_optimal():
    a, b = smooth_image(0), smooth_image(1)
    self_cc = local_cross_correlation(a, a)
    assert float(self_cc) > 0.99
    assert float(self_cc) > float(local_cross_correlation(a, b)) + 0.3


def test_lcc_is_invariant_to_positive_affine_intensity_changes():
    a, b = smooth_image(0), smooth_image(1)
    base = local_cross_correlation(a, b, eps=1e-12)
    assert torch.allclose(local_cross_correlation(a, 2.5 * b + 7.0, eps=1e-12), base, atol=1e-9)
    assert torch.allclose(local_cross_correlation(3.0 * a - 1.0, b, eps=1e-12), base, atol=1e-9)


def test_symmetric_loss_is_symmetric_under_swap_and_negation():
    f, m, v = smooth_image(2), smooth_image(3), smooth_velocity(4, 3.0)
    assert torch.allclose(symmetric_lcc(f, m, v), symmetric_lcc(m, f, -v), atol=1e-12)


def test_symmetric_loss_prefers_the_true_velocity():
    from cvae.fields import exponentiate, warp
    m = smooth_image(5)
    v = smooth_velocity(6, 8.0)
    f = warp(m, exponentiate(v))  # F = M o exp(v)
    assert float(symmetric_lcc(f, m, v)) > float(symmetric_lcc(f, m, torch.zeros_like(v))) + 0.05


def test_kl_closed_form_against_monte_carlo():
    mu = torch.tensor([[0.5, -1.0, 0.2]], dtype=torch.float64)
    logvar = torch.tensor([[-0.5, 0.3, 0.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    log_q = (-0.5 * ((z - mu) / std) ** 2 - torch.log(std)).sum(1)
    log_p = (-0.5 * z ** 2).sum(1)
    assert abs(float(kl_divergence(mu, logvar)) - float((log_q - log_p).mean())) < 0.01
    assert float(kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4))) == 0.0


def test_gradcheck_symmetric_loss():
    shape = (6, 5, 5)
    f, m = smooth_image(8, shape), smooth_image(9, shape)
    v = smooth_velocity(10, 1.0, shape).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: symmetric_lcc(f, m, w, n_steps=2, sigma=1.0, kernel_size=3), (v,))


def blob_labels(shape=SHAPE) -> np.ndarray:
    """Three nested label regions (1, 2, 3) away from the borders."""
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    r = np.sqrt(x ** 2 + (1.3 * y) ** 2 + (1.5 * z) ** 2)
    return np.select([r < 3.0, r < 4.5, r < 6.0], [3, 2, 1], 0)


def test_soft_label_dice_of_an_integer_shift_matches_hard_dice():
    moving = blob_labels()
    fixed = np.roll(moving, (1, 0, 0), axis=(0, 1, 2))
    shift = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    shift[:, 0], shift[:, 1] = 1.0, -1.0  # moving o (x + u) with u = (1, -1, 0): moving moved by (-1, 1, 0)
    as_tensor = lambda a: torch.from_numpy(a)[None, None]
    got = soft_label_dice(as_tensor(moving), as_tensor(fixed), shift, 4)
    warped = np.roll(moving, (-1, 1, 0), axis=(0, 1, 2))
    expected = np.mean([2 * np.sum((warped == k) & (fixed == k)) / (np.sum(warped == k) + np.sum(fixed == k))
                        for k in (1, 2, 3)])
    assert 0.2 < expected < 0.9
    assert float(got) == pytest.approx(expected, abs=1e-9)
    aligned = torch.zeros_like(shift)
    aligned[:, 0] = -1.0  # the shift that undoes the roll
    assert float(soft_label_dice(as_tensor(moving), as_tensor(fixed), aligned, 4)) == pytest.approx(1.0)


def test_soft_label_dice_has_a_gradient_and_counts_absent_labels_as_one():
    labels = torch.from_numpy(blob_labels())[None, None]
    u = torch.full((1, 3, *SHAPE), 0.3, dtype=torch.float64, requires_grad=True)
    dice = soft_label_dice(labels, labels, u, 4)
    dice.backward()
    assert float(dice.detach()) < 1.0 and float(u.grad.abs().sum()) > 0
    only_ones = (labels > 0).long()  # labels 2 and 3 absent from both images: Dice 1 each
    one = soft_label_dice(only_ones, only_ones, torch.zeros_like(u), 4)
    assert float(one) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels must both be"):
        soft_label_dice(labels[0], labels[0], u, 4)


def test_objective_without_motion_is_lam_times_one_minus_the_lcc_of_the_images_plus_the_penalty():
    f, m = torch.cat([smooth_image(8), smooth_image(9)]), torch.cat([smooth_image(10), smooth_image(11)])
    penalty = torch.tensor([0.7, 3.0], dtype=torch.float64)
    energy = objective(f, m, torch.zeros(2, 3, *SHAPE, dtype=torch.float64), penalty, lam=40.0, sigma=1.5,
                       kernel_size=7)
    lcc = np.array([numpy_lcc(f[i, 0].numpy(), m[i, 0].numpy(), 1.5, 7) for i in range(2)])
    assert 0.05 < lcc.min() and lcc.max() < 0.9  # neither unrelated nor identical images
    np.testing.assert_allclose(energy.lcc.numpy(), lcc, rtol=1e-9)
    np.testing.assert_allclose(energy.similarity.numpy(), 40.0 * (1 - lcc), rtol=1e-9)
    np.testing.assert_allclose(energy.total.numpy(), 40.0 * (1 - lcc) + penalty.numpy(), rtol=1e-9)
    torch.testing.assert_close(energy.penalty, penalty)


def test_objective_passes_its_settings_to_the_symmetric_lcc():
    f, m = torch.cat([smooth_image(12), smooth_image(13)]), torch.cat([smooth_image(14), smooth_image(15)])
    v = torch.cat([smooth_velocity(16, 3.0), smooth_velocity(17, 3.0)])
    energy = objective(f, m, v, torch.tensor(2.5, dtype=torch.float64), lam=7.0, n_steps=3, sigma=1.5, kernel_size=7,
                       downsample=2)
    lcc = symmetric_lcc(f, m, v, n_steps=3, sigma=1.5, kernel_size=7, downsample=2)
    torch.testing.assert_close(energy.lcc, lcc, rtol=0, atol=0)
    torch.testing.assert_close(energy.total, 7.0 * (1 - lcc) + 2.5, rtol=1e-12, atol=1e-12)
    assert energy.penalty.shape == (2,) and energy.penalty.tolist() == [2.5, 2.5]  # a scalar penalty per pair
    default = objective(f, m, v, torch.tensor(2.5, dtype=torch.float64), lam=7.0)
    assert float((default.lcc - lcc).abs().max()) > 1e-4  # the settings matter: they were not ignored
