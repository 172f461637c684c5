"""What a training step of the CVAE minimises, and how the weights of its terms change over the steps.

The objective is the negative ELBO of the paper, :func:`cvae.losses.objective` with the KL divergence as the
prior's penalty (``lam * (1 - LCC_sym) + kl_weight * KL``), for a code ``z`` drawn from ``q(z | F, M)`` by the
reparameterisation trick. Around it, two optional terms: the code warm-up against posterior collapse
(:mod:`cvae.training.warmup`) and, outside the paper's unsupervised method, a label-overlap term for cohorts whose
training pairs are segmented (``--seg-weight``). :func:`loss_schedule` gives the weights of step ``s``.
"""
from __future__ import annotations

import torch
from torch import nn

from cvae.data.labels import N_LABELS
from cvae.losses import kl_divergence, soft_label_dice
from cvae.model import CVAERegistration
from cvae.training.config import TrainConfig
from cvae.training.warmup import SummaryPCA, warmup_weight

__all__ = ["Objective", "loss_schedule"]


class Objective(nn.Module):
    """The training objective around a model; holds no parameters of its own (DDP wraps this module).

    ``forward(fixed, moving, ...)`` takes pairs ``(B, 1, X, Y, Z)`` and returns the batch means of the terms, each a
    scalar: ``loss`` (what is minimised), ``similarity`` (``lam * (1 - lcc)``), ``lcc`` (symmetric LCC), ``kl``
    (nats), and with their weights > 0 ``code`` (mean squared distance of the first ``k`` dimensions of ``mu`` to the
    warm-up target, :class:`SummaryPCA`) and ``dice`` (soft Dice of the warped ED labels against the ES labels).
    """

    def __init__(self, model: CVAERegistration, target: SummaryPCA | None = None) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, kl_weight: float = 1.0, code_weight: float = 0.0,
                moving_label: torch.Tensor | None = None, fixed_label: torch.Tensor | None = None,
                seg_weight: float = 0.0) -> dict[str, torch.Tensor]:
        model = self.model
        mu, logvar = model.encode(fixed, moving)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        velocity = model.velocity(z, moving)
        kl = kl_divergence(mu, logvar)
        energy = model.objective(fixed, moving, velocity, kl_weight * kl)
        terms = {"loss": energy.total.mean(), "similarity": energy.similarity.mean(), "kl": kl.mean(),
                 "lcc": energy.lcc.mean()}
        if self.target is not None and code_weight > 0:
            target = self.target(fixed, moving)
            terms["code"] = (mu[:, :target.shape[1]] - target).pow(2).mean()
            terms["loss"] = terms["loss"] + code_weight * terms["code"]
        if seg_weight > 0 and moving_label is not None and fixed_label is not None:
            terms["dice"] = soft_label_dice(moving_label, fixed_label, model.exponentiate(velocity), N_LABELS).mean()
            terms["loss"] = terms["loss"] + seg_weight * (1.0 - terms["dice"])
        return terms


def loss_schedule(cfg: TrainConfig, step: int) -> dict[str, float]:
    """Keyword arguments of :class:`Objective` at step ``step`` (0-based): the KL weight is 0 for the first
    ``cfg.kl_delay`` steps, then rises linearly from 0 to 1 over ``cfg.kl_warmup`` steps; the code warm-up weight
    (:func:`cvae.training.warmup.warmup_weight`) when ``cfg.code_warmup`` is set; ``seg_weight`` when
    ``cfg.seg_weight`` is set.

    Why a delay and not only a ramp: Adam scales each parameter's step by its own gradient history, so on the
    code's parameters, whose similarity gradient is small and noisy while the code is still uninformative, even a
    small KL weight moves them at full speed toward the prior and the code collapses before it carries anything.
    """
    ramp = step - cfg.kl_delay
    weight = 0.0 if ramp < 0 else min(1.0, ramp / cfg.kl_warmup) if cfg.kl_warmup > 0 else 1.0
    extra = {"kl_weight": weight}
    if cfg.code_warmup > 0:
        extra["code_weight"] = warmup_weight(step, cfg.code_warmup, cfg.code_warmup_weight)
    if cfg.seg_weight > 0:
        extra["seg_weight"] = cfg.seg_weight
    return extra
