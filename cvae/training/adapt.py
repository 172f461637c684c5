"""``cvae adapt``: unsupervised fine-tuning of a trained CVAE on a user's own cohort, which needs no segmentation.

    cvae adapt --checkpoint synthetic-acdc --data MY_COHORT --out runs/adapted --minutes 10

The method is unsupervised, so a trained model can keep learning on any cohort of ED/ES image pairs: the objective
of training (symmetric LCC + KL, :class:`~cvae.training.objective.Objective` with the KL at full weight from the
first step and no code warm-up), starting from the checkpoint's weights; labels are never read. Before the first
step the whole cohort is preprocessed (in parallel, with a progress bar) so that no step waits for loading. The last
``--val-subjects`` subjects are held out: the model is scored on them before the first step and every
``--val-every`` steps by :func:`validate_objective` (the mean symmetric LCC of the pairs registered by one forward
pass; higher is better), and ``best/`` keeps the best model, the unadapted one included. The run stops once
``--minutes`` of steps and validations have passed (preprocessing not counted), after ``--patience`` validations in
a row without a better score, or after ``--steps``; SIGTERM and Ctrl-C save ``last/`` and ``--resume`` continues.

The run folder holds ``best/`` (the adapted checkpoint, with a model card ``README.md`` that says what it was
adapted on; load it like any checkpoint: ``--checkpoint <out>/best``, ``CVAE_CHECKPOINT=<out>/best make app``),
``last/`` and ``log.jsonl`` (one line per step and per validation, as ``cvae train`` writes).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cvae.checkpoint import load_checkpoint, read_config, save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.device import resolve_device
from cvae.evaluation.metrics import negative_jacobian_fraction
from cvae.io.atomic import check_writable
from cvae.training.config import AdaptConfig
from cvae.training.loop import HeldOut, Monitor, RunState, check_run_folder, fit, resume_state, rewind_log
from cvae.training.objective import Objective

__all__ = ["validate_objective", "adapt"]

#: The score :func:`validate_objective` returns and the adaptation maximises.
SCORE = "val_lcc"


@torch.no_grad()
def validate_objective(model: torch.nn.Module, dataset: PairDataset, indices: list[int], device: torch.device
                       ) -> dict[str, float]:
    """The validation objective of unlabelled pairs: ``val_lcc``, the mean symmetric LCC of the pairs ``indices``
    registered by one forward pass (the code ``mu``; higher is better), ``val_similarity`` = ``lam (1 - val_lcc)``
    and ``val_negative_jacobian``, the mean fraction of voxels with det J <= 0. Labels are not read."""
    model.eval()
    lcc, folding = [], []
    for i in indices:
        item = dataset[i]
        fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
        result = model.register(fixed, moving, inverse=False)
        lcc.append(float(model.objective(fixed, moving, result.velocity, torch.zeros((), device=device)).lcc[0]))
        folding.append(negative_jacobian_fraction(result.jacobian))
    model.train()
    mean = float(np.mean(lcc))
    return {SCORE: mean, "val_similarity": model.config.lam * (1.0 - mean),
            "val_negative_jacobian": float(np.mean(folding))}


def _two_frames(dataset: PairDataset) -> None:
    """One-line ``ValueError`` when a subject's ED and ES are the same frame (nothing to register)."""
    same = [info for info in dataset.infos if info.ed_frame == info.es_frame]
    if same:
        raise ValueError(f"{len(same)} subject(s) have ED = ES (e.g. {same[0].subject}: frame {same[0].ed_frame}); "
                         "adaptation needs two different frames per subject: fix their Info.cfg or remove them")


def _cohort(cfg: AdaptConfig, size: tuple[int, int, int], spacing: tuple[float, float, float],
            progress: bool) -> tuple[HeldOut, float]:
    """The preprocessed cohort split into training and validation subjects, and the seconds preprocessing took."""
    dataset = PairDataset(cfg.data, cfg.split, size, spacing, cfg.cache_dir)
    _two_frames(dataset)
    tic = time.perf_counter()
    dataset.prepare(progress=progress, workers=cfg.workers or os.cpu_count() or 1)
    if len(dataset) < 2:
        raise ValueError(f"{cfg.data}: {len(dataset)} usable subject; adaptation needs at least 2 (training and "
                         "validation)")
    n_val = min(cfg.val_subjects, len(dataset) - cfg.batch_size)
    if n_val < 1:
        raise ValueError(f"{len(dataset)} usable subjects are too few for a batch of {cfg.batch_size} and a "
                         "validation subject")
    n = len(dataset)
    return HeldOut(dataset, list(range(n - n_val)), list(range(n - n_val, n))), time.perf_counter() - tic


def model_card(cfg: AdaptConfig, base: dict, split: HeldOut, state: RunState, before: dict[str, float],
               scores: dict[str, float] | None, prep_s: float) -> str:
    """The ``README.md`` of an adapted checkpoint: what it was adapted from and on, how long, and what it scores."""
    after = scores or before
    trained = base.get("training", {})
    lines = [
        f"# Adapted from `{cfg.checkpoint}` to `{cfg.data}`",
        "",
        f"Unsupervised adaptation (`cvae adapt`, {time.strftime('%Y-%m-%d')}): the objective of training (symmetric "
        "LCC + KL) on the cohort's ED/ES image pairs, starting from the weights of "
        f"`{cfg.checkpoint}` (trained on `{trained.get('data', 'unknown data')}`). No segmentation was read.",
        "",
        "| | |",
        "|---|---|",
        f"| cohort | `{cfg.data}`, split {cfg.split or 'all'}: {len(split.train)} subjects to adapt on, "
        f"{len(split.val)} held out for validation ({', '.join(split.dataset.subjects[i] for i in split.val)}) |",
        f"| budget | {cfg.minutes:g} min of steps and validations; patience {cfg.patience} validations |",
        f"| done | {state.step} steps of {cfg.batch_size} pair(s), {state.elapsed / 60:.1f} min "
        f"(preprocessing {prep_s:.0f} s before) |",
        f"| optimiser | Adam, lr {cfg.lr:g}, augmentation {'on' if cfg.augment else 'off'}, seed {cfg.seed} |",
        f"| validation LCC (one pass) | {before[SCORE]:.4f} before -> {after[SCORE]:.4f} |",
        f"| validation folding (% voxels) | {100 * before['val_negative_jacobian']:.3f} before -> "
        f"{100 * after['val_negative_jacobian']:.3f} |",
        f"| machine | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} |",
        "",
        f"Reproduce: `cvae adapt --checkpoint {cfg.checkpoint} --data {cfg.data}"
        + (f" --split {cfg.split}" if cfg.split else "") + f" --minutes {cfg.minutes:g} --lr {cfg.lr:g} "
        f"--seed {cfg.seed} --out {cfg.out}` (the time limit makes the number of steps depend on the machine).",
        "",
    ]
    return "\n".join(lines)


def adapt(cfg: AdaptConfig, progress: bool = True) -> tuple[Path, RunState, dict[str, float]]:
    """Run (or resume) an adaptation; returns the run folder, where it stands and the unadapted model's scores."""
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = check_writable(cfg.out)
    resumed = check_run_folder(out, cfg.resume)
    model, base = load_checkpoint(cfg.checkpoint, device)
    spacing = tuple(float(s) for s in base["spacing"])
    split, prep_s = _cohort(cfg, model.config.image_size, spacing, progress)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = resume_state(out / "last", model, optimizer, lr=cfg.lr) if resumed else RunState()
    before = (read_config(out / "last")["training"]["unadapted"] if resumed
              else validate_objective(model, split.dataset, split.val, device))
    info = {"adapted_from": cfg.checkpoint, "base_training": base.get("training", {}), "adapt": asdict(cfg),
            "preprocessing_s": round(prep_s, 1), "unadapted": before}

    def save(state: RunState, folder: str, metrics: dict | None = None) -> None:
        card = model_card(cfg, base, split, state, before, metrics, prep_s)
        save_checkpoint(out / folder, model, spacing=spacing, metrics=metrics,
                        training={**info, "steps_done": state.step, "elapsed_s": round(state.elapsed, 1)},
                        optimizer=optimizer if folder == "last" else None, extra_files={"README.md": card},
                        trainer={"step": state.step, "best_dice": state.best, "wall_time_s": state.wall,
                                 "elapsed_s": state.elapsed})

    out.mkdir(parents=True, exist_ok=True)
    rewind_log(out / "log.jsonl", state.step)
    if not resumed:  # the unadapted model is the first best: best/ never scores below it
        state.best = before[SCORE]
        save(state, "best", before)
    monitor = Monitor(validate=validate_objective, score=SCORE, patience=cfg.patience,
                      time_limit_s=60.0 * cfg.minutes)
    with open(out / "log.jsonl", "a", buffering=1) as log:
        state = fit(Objective(model), model, optimizer, split, cfg.run_config(spacing), state, save, log, device,
                    progress=progress, monitor=monitor)
    return out, state, before
