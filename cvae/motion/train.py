"""Training the motion model on a cohort's tracked cycles (``cvae train-motion``).

    cvae train-motion --data data/synthetic-cine --out checkpoints/motion-synthetic-acdc [--checkpoint synthetic-acdc]

1. every training cine is tracked once by the (frozen) registration checkpoint (:mod:`cvae.motion.cycles`; cached in
   ``--cycles``), 2. the motion model (:mod:`cvae.motion.model`) is fitted to the codes with temporal dropout, Adam,
   a few cycles per step; the last ``validation`` cycles are held out and the step of the lowest validation
   objective (each held-out cycle with every second frame hidden, a fixed draw) is kept.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cvae.checkpoint import save_checkpoint
from cvae.motion.cycles import Cycle
from cvae.motion.model import MOTION_FORMAT, MotionConfig, MotionModel, temporal_dropout

__all__ = ["MotionTraining", "train_motion", "validation_loss", "model_card"]


@dataclass
class MotionTraining:
    """The run's settings (what the model card records)."""

    steps: int = 3000
    batch: int = 8
    lr: float = 2e-3
    beta: float = 1.0
    validation: int = 10
    seed: int = 0
    ed_only: float = 0.25


def _tensors(cycle: Cycle, model: MotionModel) -> tuple[torch.Tensor, torch.Tensor]:
    codes = model.standardise(torch.from_numpy(cycle.codes).float().to(model.device))
    return codes, torch.from_numpy(cycle.ed)[None, None].float().to(model.device)


def validation_loss(model: MotionModel, cycles: list[Cycle]) -> float:
    """Mean Gaussian NLL (per code number) of the hidden frames of ``cycles`` with every second frame hidden (ED
    observed), under the posterior-mean style: the objective of interpolation."""
    total, count = 0.0, 0
    with torch.no_grad():
        for cycle in cycles:
            codes, ed = _tensors(cycle, model)
            mask = torch.zeros(len(codes), dtype=torch.bool, device=model.device)
            mask[::2] = True
            context = model.context(ed)[0]
            mean, logvar = model.predict(codes, mask, context, model.posterior(codes, mask, context)[0])
            nll = 0.5 * (logvar + (codes - mean) ** 2 / logvar.exp() + math.log(2 * math.pi))[~mask]
            total, count = total + float(nll.sum()), count + nll.numel()
    return total / count


def train_motion(cycles: list[Cycle], out: str | Path, settings: MotionTraining | None = None,
                 config: MotionConfig | None = None, source: dict | None = None, log=print) -> dict:
    """Fit a motion model to ``cycles`` (the last ``settings.validation`` held out), save the best one to ``out``
    with a model card; returns the metrics. ``source`` (registration checkpoint, cohort) goes into the card."""
    settings = settings or MotionTraining()
    if len(cycles) <= settings.validation:
        raise ValueError(f"{len(cycles)} cycles: need more than the {settings.validation} held out for validation")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and another never spins waiting for it
    try:
        return _fit(cycles, Path(out), settings, config, source or {}, log)
    finally:
        torch.set_num_threads(threads)


def _fit(cycles: list[Cycle], out: Path, settings: MotionTraining, config: MotionConfig | None, source: dict,
         log) -> dict:
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    train, held = cycles[:-settings.validation], cycles[-settings.validation:]
    model = MotionModel(config or MotionConfig(latent_dim=cycles[0].codes.shape[1]))
    codes = torch.from_numpy(np.concatenate([c.codes for c in train])).float()
    model.code_mean.copy_(codes.mean(0))
    model.code_std.copy_(codes.std(0).clamp_min(1e-3))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    best, best_state, best_step, start = math.inf, None, 0, time.perf_counter()
    for step in range(1, settings.steps + 1):
        model.train()
        picks = torch.randint(len(train), (settings.batch,), generator=gen).tolist()
        loss = torch.zeros(())
        for k in picks:
            z, ed = _tensors(train[k], model)
            mask = temporal_dropout(len(z), gen, ed_only=settings.ed_only)
            loss = loss + model.loss(z, mask, model.context(ed)[0], settings.beta, gen)[0] / settings.batch
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == settings.steps:
            model.eval()
            val = validation_loss(model, held)
            if val < best:
                best, best_step = val, step
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            log(f"step {step}: train {loss.item():.3f}, validation {val:.3f} (best {best:.3f} at {best_step})")
    model.load_state_dict(best_state)
    metrics = {"validation_nll": round(best, 4), "best_step": best_step, "train_cycles": len(train),
               "validation_cycles": len(held), "minutes": round((time.perf_counter() - start) / 60, 2)}
    training = {**asdict(settings), **source}
    save_checkpoint(out, model, training=training, metrics=metrics, fmt=MOTION_FORMAT,
                    extra_files={"README.md": model_card(out.name, training, metrics)})
    return metrics


def model_card(name: str, training: dict, metrics: dict) -> str:
    """The checkpoint's ``README.md``: what it was fitted on, how, how long, and its validation score."""
    settings = ", ".join(f"{k} {v}" for k, v in training.items())
    return f"""# {name}: motion model (cvae-reg)

A temporal network over the codes of a tracked cine (`cvae/motion/model.py`, docs/DESIGN.md section 11): it fills
in hidden frames, simulates a cycle from the ED frame alone and, with the registration checkpoint it was fitted
for, decodes cycles into deformations.

- Fitted on {metrics['train_cycles']} cycles, {metrics['validation_cycles']} held out to choose the step (best
  {metrics['best_step']}); {metrics['minutes']} minutes on the CPU for the fit (the tracking of the cines before it
  not counted).
- Settings: {settings}.
- Validation: Gaussian NLL per code number of the hidden frames with every second frame hidden:
  {metrics['validation_nll']}.
- Use it with the registration checkpoint named above: its codes are that model's.
"""
