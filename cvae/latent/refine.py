"""MAP refinement of a pair's code: a few gradient steps on the registration objective over ``z`` alone.

The encoder amortises inference: one forward pass gives ``mu`` for any pair, but ``mu`` is not the best code the
decoder could use for that pair (the amortisation gap). Starting from ``mu``, :func:`refine_code` lowers the
method's objective (:func:`cvae.losses.objective`) with the prior's penalty

    ``E(z) = lam * (1 - LCC_sym(F, M; v(z, M))) + |z|^2 / 2``

over ``z`` with Adam, the decoder's weights fixed: the negative log posterior of ``z`` up to a constant, when the
likelihood is ``exp(-lam * (1 - LCC))`` and the prior ``N(0, I)``, so ``z`` stays a code of the model's latent space
(semi-amortised inference, Kim et al. 2018). Each step costs one decoder forward and backward pass; what it buys on
the shipped checkpoint is measured in ``benchmarks/RESULTS.md`` (section 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cvae.data.dataset import PairDataset
from cvae.data.labels import LV_CAVITY
from cvae.evaluation.clinical import clinical_measures
from cvae.evaluation.metrics import mean_dice
from cvae.fields import warp_labels
from cvae.latent.codes import as_image, code_tensor
from cvae.latent.table import latent_dim_of, mu_columns, subject_index
from cvae.losses import Energy
from cvae.model import CVAERegistration, RegistrationResult

__all__ = ["Refinement", "refine_code", "register_refined", "refine_table", "score_codes", "DEFAULT_STEPS",
           "DEFAULT_LR"]

#: Steps and Adam learning rate (code units) of :func:`refine_code`: most of the gain comes in the first 20 steps.
DEFAULT_STEPS, DEFAULT_LR = 20, 0.05


@dataclass
class Refinement:
    """A refined code ``code (B, d)`` with the pairs' ``lcc_before`` / ``lcc_after`` ``(B,)`` (symmetric LCC at
    ``mu`` and at ``code``) and ``objective``, the batch's summed ``E(z)`` before each step and after the last."""

    code: torch.Tensor
    lcc_before: torch.Tensor
    lcc_after: torch.Tensor
    objective: list[float]


def _check_steps(steps: int, lr: float) -> None:
    if int(steps) < 0:
        raise ValueError(f"refinement steps must be >= 0, got {steps}")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"the refinement learning rate must be a finite number > 0, got {lr}")


def refine_code(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor, steps: int = DEFAULT_STEPS,
                lr: float = DEFAULT_LR) -> Refinement:
    """The MAP code of each pair, ``steps`` Adam steps on ``E(z)`` (module docstring) from the encoder's ``mu``.

    ``fixed, moving (B, 1, X, Y, Z)``; the model's weights are neither changed nor given gradients. ``steps = 0``
    returns ``mu``.
    """
    _check_steps(steps, lr)

    def energy(z: torch.Tensor) -> Energy:
        return model.objective(fixed, moving, model.velocity(z, moving), 0.5 * z.pow(2).sum(dim=1))

    with torch.no_grad():
        mu, _ = model.encode(fixed, moving)
        start = energy(mu)
    z = mu.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=float(lr))
    objective = []
    with torch.enable_grad():
        for _ in range(int(steps)):
            value = energy(z).total.sum()
            (z.grad,) = torch.autograd.grad(value, [z])
            optimiser.step()
            objective.append(float(value.detach()))
    code = z.detach()
    with torch.no_grad():
        end = energy(code) if steps else start
    objective.append(float(end.total.sum()))
    return Refinement(code, start.lcc, end.lcc, objective)


def register_refined(model: CVAERegistration, fixed: torch.Tensor, moving: torch.Tensor,
                     steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, inverse: bool = True
                     ) -> tuple[RegistrationResult, Refinement]:
    """:meth:`CVAERegistration.register` with the MAP-refined code (``result.mu`` is the refined code)."""
    refinement = refine_code(model, fixed, moving, steps, lr)
    with torch.no_grad():
        return model.decode(refinement.code, moving, inverse=inverse), refinement


def refine_table(model: CVAERegistration, dataset: PairDataset, table: pd.DataFrame, steps: int = DEFAULT_STEPS,
                 lr: float = DEFAULT_LR) -> pd.DataFrame:
    """A copy of a cohort table (:func:`cvae.latent.encode_cohort`) whose ``mu_*`` columns hold the MAP-refined
    codes of its subjects' pairs in ``dataset``, with ``lcc_before`` and ``lcc_after`` columns."""
    index = subject_index(dataset, table)
    columns = mu_columns(latent_dim_of(table))
    refined = table.copy()
    for row, subject in zip(refined.index, refined["subject"]):
        pair = dataset.pair(index[subject])
        fixed, moving = as_image(pair.fixed, model, "fixed"), as_image(pair.moving, model, "moving")
        result = refine_code(model, fixed, moving, steps, lr)
        refined.loc[row, columns] = result.code[0].cpu().numpy()
        refined.loc[row, "lcc_before"] = float(result.lcc_before[0])
        refined.loc[row, "lcc_after"] = float(result.lcc_after[0])
    return refined


@torch.no_grad()
def score_codes(model: CVAERegistration, dataset: PairDataset, table: pd.DataFrame) -> pd.DataFrame:
    """How well a cohort table's codes register their own subjects' ED -> ES pairs (labels needed).

    One row per subject: ``subject``, ``group``, ``dice`` (%, mean over the five structures of
    :data:`cvae.data.labels.STRUCTURES`, ES labels against the ED labels warped by the decoded transform),
    ``LVEF`` (%, of the warped ED labels), ``true_LVEF`` (%, of the ES labels) and ``basal_excess``: the share of
    the simulated LV cavity's excess volume over the true ES one that lies in slices without LV cavity at ES (where
    the descending base has left the slice).
    """
    index = subject_index(dataset, table)
    columns = mu_columns(latent_dim_of(table))
    rows = []
    for _, subject in table.iterrows():
        pair = dataset.pair(index[subject["subject"]])
        if pair.moving_label is None or pair.fixed_label is None:
            raise ValueError(f"{subject['subject']} has no labels: scoring codes needs the ED and ES labels")
        result = model.decode(code_tensor(subject[columns].to_numpy(np.float32), model),
                              as_image(pair.moving, model, "moving"))
        label = as_image(pair.moving_label, model, "moving_label")
        warped = warp_labels(label, result.displacement)[0, 0].cpu().numpy()
        simulated, true = warped == LV_CAVITY, pair.fixed_label == LV_CAVITY
        above_base = ~true.any(axis=(0, 1))
        rows.append({"subject": subject["subject"], "group": subject["group"],
                     "dice": 100 * mean_dice(warped, pair.fixed_label),
                     "LVEF": clinical_measures(pair.moving_label, warped, pair.spacing)["LVEF"],
                     "true_LVEF": clinical_measures(pair.moving_label, pair.fixed_label, pair.spacing)["LVEF"],
                     "basal_excess": float(simulated[..., above_base].sum()
                                           / max(int(simulated.sum()) - int(true.sum()), 1))})
    return pd.DataFrame(rows)
