"""The method's objective and its terms: Gaussian-window local cross-correlation, its symmetric form, the KL
divergence, and an optional label-overlap term.

The likelihood is a Boltzmann distribution ``p(F | v, M) ~ exp(-lambda * D)`` with ``D = 1 - LCC_sym`` where
``LCC_sym`` is the local cross-correlation between ``F o exp(-v/2)`` and ``M o exp(v/2)``. Every optimisation of the
project lowers the same energy :func:`objective`, ``lambda * (1 - LCC_sym) + penalty``, and differs only in what the
penalty is (the negative log prior of what is optimised):

* training (amortised inference): the KL divergence of ``q(z | F, M)`` to the prior N(0, I), :func:`kl_divergence`;
* refinement of one pair's code (``cvae.latent.refine``): ``|z|^2 / 2``, the negative log density of N(0, I).

:func:`soft_label_dice` is not part of the paper's method: it serves label-supervised fine-tuning (``cvae train
--seg-weight``, as in VoxelMorph's auxiliary-segmentation variant), for cohorts whose training pairs have labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fields import exponentiate, gaussian_kernel1d, gaussian_smooth, warp

__all__ = ["local_cross_correlation", "symmetric_lcc", "Energy", "objective", "kl_divergence", "soft_label_dice",
           "LCC_EPS"]

#: Added to the local variances' product so that flat regions do not divide by zero.
LCC_EPS = 1e-5


def local_cross_correlation(a: torch.Tensor, b: torch.Tensor, sigma: float = 2.0, kernel_size: int = 9,
                            eps: float = LCC_EPS) -> torch.Tensor:
    """Mean squared local correlation coefficient of two images, local statistics weighted by a Gaussian.

    ``cc(x) = cov(x)^2 / (var_a(x) var_b(x) + eps)`` with Gaussian-weighted local means (``sigma`` and
    ``kernel_size`` in voxels, weights renormalised at the borders so that no zero padding enters the statistics);
    returns the mean over voxels per batch element.

    Args:
        a, b: ``(B, 1, X, Y, Z)``.

    Returns:
        ``(B,)`` in [0, 1]; 1 is perfect local affine agreement of intensities.
    """
    if a.shape != b.shape or a.dim() != 5:
        raise ValueError(f"images must both be (B, 1, X, Y, Z), got {tuple(a.shape)} and {tuple(b.shape)}")
    kernel = gaussian_kernel1d(sigma, kernel_size, a.dtype)
    stats = gaussian_smooth(torch.cat([a, b, a * a, b * b, a * b], dim=1), kernel, normalise_borders=True)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = stats.unbind(dim=1)
    cov = mean_ab - mean_a * mean_b
    var_a = mean_aa - mean_a * mean_a
    var_b = mean_bb - mean_b * mean_b
    cc = cov * cov / (var_a * var_b + eps)
    return cc.flatten(1).mean(dim=1)


def symmetric_lcc(fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor, n_steps: int = 4,
                  sigma: float = 2.0, kernel_size: int = 9, downsample: int = 1) -> torch.Tensor:
    """LCC between ``F o exp(-v/2)`` and ``M o exp(v/2)``, each image moved half-way, ``(B,)``.

    Args:
        fixed, moving: ``(B, 1, X, Y, Z)``.
        velocity: ``(B, 3, X, Y, Z)`` in voxels, with ``M o exp(v) ~ F``.
        n_steps: scaling-and-squaring steps of the full transform (the half transforms use ``n_steps - 1``).
        downsample: grid reduction for the integration (see :func:`cvae.fields.exponentiate`).
    """
    half_steps = max(n_steps - 1, 0)
    forward = exponentiate(0.5 * velocity, half_steps, downsample)
    backward = exponentiate(-0.5 * velocity, half_steps, downsample)
    return local_cross_correlation(warp(fixed, backward), warp(moving, forward), sigma, kernel_size)


@dataclass
class Energy:
    """The terms of :func:`objective` for a batch, each ``(B,)``: ``total = similarity + penalty`` with
    ``similarity = lam * (1 - lcc)``."""

    total: torch.Tensor
    similarity: torch.Tensor
    lcc: torch.Tensor
    penalty: torch.Tensor


def objective(fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor, penalty: torch.Tensor, lam: float,
              n_steps: int = 4, sigma: float = 2.0, kernel_size: int = 9, downsample: int = 1) -> Energy:
    """The energy every optimisation of the project lowers: ``lam * (1 - LCC_sym(F, M; v)) + penalty``, per pair.

    Args:
        fixed, moving: ``(B, 1, X, Y, Z)``.
        velocity: ``(B, 3, X, Y, Z)`` in voxels (already smoothed), with ``M o exp(v) ~ F``.
        penalty: ``(B,)`` (or broadcastable to it): the negative log prior of what is optimised, in nats (the KL
            divergence in training, ``|z|^2 / 2`` for a MAP code).
        lam: the likelihood's lambda; ``n_steps``, ``sigma``, ``kernel_size`` and ``downsample`` as in
            :func:`symmetric_lcc` (the model's :class:`~cvae.model.ModelConfig` holds all of them).
    """
    lcc = symmetric_lcc(fixed, moving, velocity, n_steps, sigma, kernel_size, downsample)
    similarity = lam * (1.0 - lcc)
    return Energy(total=similarity + penalty, similarity=similarity, lcc=lcc, penalty=penalty.expand_as(lcc))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per batch element, ``(B,)`` in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def soft_label_dice(moving_label: torch.Tensor, fixed_label: torch.Tensor, displacement: torch.Tensor,
                    n_labels: int) -> torch.Tensor:
    """Mean soft Dice over the foreground labels ``1 .. n_labels - 1`` of ``moving_label o (id + u)`` and
    ``fixed_label``, differentiable in the displacement, ``(B,)`` in [0, 1].

    The moving labels are one-hot encoded and warped with trilinear interpolation, so a voxel's warped value is the
    fraction of each label around the point it maps to; a label absent from both images counts as Dice 1.

    Args:
        moving_label, fixed_label: ``(B, 1, X, Y, Z)`` integer labels in ``[0, n_labels)``.
        displacement: ``(B, 3, X, Y, Z)`` in voxels (of ``exp(v)``, ``M o exp(v) ~ F``).
    """
    if moving_label.shape != fixed_label.shape or moving_label.dim() != 5 or moving_label.shape[1] != 1:
        raise ValueError(f"labels must both be (B, 1, X, Y, Z), got {tuple(moving_label.shape)} and "
                         f"{tuple(fixed_label.shape)}")

    def one_hot(label: torch.Tensor) -> torch.Tensor:
        return F.one_hot(label[:, 0].long(), n_labels).permute(0, 4, 1, 2, 3).to(displacement.dtype)[:, 1:]

    warped, target = warp(one_hot(moving_label), displacement), one_hot(fixed_label)
    overlap = 2.0 * (warped * target).flatten(2).sum(dim=2)
    total = (warped + target).flatten(2).sum(dim=2)
    return torch.where(total > 0, overlap / total.clamp_min(1e-6), torch.ones_like(total)).mean(dim=1)
