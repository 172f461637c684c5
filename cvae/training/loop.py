"""The training loop shared by the CVAE and the VoxelMorph baseline, and what a run needs around it.

:func:`fit` runs optimiser steps on a held-out split of a cohort (:func:`held_out_split`). Every ``save_every`` steps
the folder ``<out>/last`` is replaced atomically (weights, optimiser, step); every ``val_every`` steps the model is
validated on the held-out subjects (:func:`validate`: mean Dice of the warped ED labels against the ES labels over the
five structures, fraction of negative Jacobians) and ``<out>/best`` keeps the best one. The log gets one JSON line
per step (loss terms, seconds per step) and per validation. All randomness of step ``s`` (sample order, augmentation,
the reparameterisation noise) is derived from ``(seed, s, rank)``, so a resumed run continues exactly where its last
checkpoint stopped. Ctrl-C or SIGTERM saves before exiting.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from cvae.checkpoint import FORMAT, load_training_state, load_weights, training_step
from cvae.cli import Interrupted
from cvae.data.augment import AugmentParams, augment_batch
from cvae.data.randomise import WIDE_AFFINE, AcquisitionParams, randomise_acquisition
from cvae.data.dataset import PairDataset
from cvae.evaluation.metrics import mean_dice, negative_jacobian_fraction
from cvae.fields import image_tensor, warp_labels
from cvae.io.atomic import recover_folder, write_text
from cvae.model import CVAERegistration

__all__ = ["LoopSettings", "HeldOut", "RunState", "Monitor", "StopFlag", "collate", "rewind_log", "validate", "fit",
           "held_out_split", "holds_run", "check_run_folder", "resume_state", "run_summary"]


class LoopSettings(Protocol):
    """What :func:`fit` reads of a run's config (:class:`cvae.training.config.RunConfig` has all of it)."""

    steps: int
    batch_size: int
    seed: int
    augment: bool
    domain: str
    spacing: tuple[float, float, float]
    val_every: int
    save_every: int
    time_limit_min: float


class StopFlag:
    """Turns SIGTERM and a first Ctrl-C into a request to save and stop after the current step; ``signum`` is the
    signal that asked (``None`` for a stop for another reason, such as the time limit)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def collate(items: list[dict]) -> dict[str, Any]:
    keys = [k for k in items[0] if isinstance(items[0][k], torch.Tensor) and all(k in it for it in items)]
    return {k: torch.stack([it[k] for it in items]) for k in keys}


def rewind_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in kept))



@torch.no_grad()
def validate(model: torch.nn.Module, dataset: PairDataset, indices: list[int], device: torch.device
             ) -> dict[str, float]:
    """Mean Dice (five structures, warped ED labels vs ES labels) and negative-Jacobian fraction on ``indices``.

    For the CVAE also ``val_dice_other_code``: the Dice when each pair is decoded with the code ``mu`` of the next
    validation pair instead of its own. Equal to ``val_dice``, the code carries nothing about the pair (posterior
    collapse: the decoder predicts the motion from M alone); the gap is what the code adds.
    """
    model.eval()
    has_code = isinstance(model, CVAERegistration)
    dices, folding, others, codes = [], [], [], []
    items = [dataset[i] for i in indices]
    for item in items:
        fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
        result = model.register(fixed, moving, inverse=False)
        folding.append(negative_jacobian_fraction(result.jacobian))
        if has_code:
            codes.append(result.mu)
        dices.append(_label_dice(item, result.displacement))
    if has_code and len(items) > 1:
        for k, item in enumerate(items):
            other = model.decode(codes[(k + 1) % len(items)], item["moving"][None].to(device))
            others.append(_label_dice(item, other.displacement))
    model.train()
    dices, others = [d for d in dices if d is not None], [d for d in others if d is not None]
    scores = {"val_dice": float(np.mean(dices)) if dices else float("nan"),
              "val_negative_jacobian": float(np.mean(folding))}
    if others:
        scores["val_dice_other_code"] = float(np.mean(others))
    return scores


def _label_dice(item: dict, displacement: torch.Tensor) -> float | None:
    """Mean Dice of the five structures: ``item``'s ED labels warped by ``displacement`` against its ES labels."""
    if "moving_label" not in item:
        return None
    warped = warp_labels(image_tensor(item["moving_label"]), displacement)
    return mean_dice(warped[0, 0].cpu().numpy(), item["fixed_label"][0].numpy())



@dataclass
class RunState:
    """Where a run stands: optimiser steps done, best validation score (:attr:`Monitor.score`), seconds spent in
    steps (``wall``) and in steps and validations (``elapsed``)."""

    step: int = 0
    best: float = -math.inf
    wall: float = 0.0
    elapsed: float = 0.0


Validator = Callable[[torch.nn.Module, PairDataset, list[int], torch.device], dict[str, float]]


@dataclass(frozen=True)
class Monitor:
    """How :func:`fit` validates and when it stops early; the defaults are ``cvae train``'s.

    ``validate(model, dataset, indices, device)`` scores the held-out pairs; ``score`` names the score to maximise
    (``best/`` keeps the best); the run stops after ``patience`` validations in a row without a better score (0:
    never; a resumed run counts afresh) and once ``time_limit_s`` seconds of steps and validations have passed
    (``RunState.elapsed``, kept across resumes; 0: no limit), the progress bar then counting seconds instead of
    steps."""

    validate: Validator = validate
    score: str = "val_dice"
    patience: int = 0
    time_limit_s: float = 0.0


def fit(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer, split: HeldOut,
        cfg: LoopSettings, state: RunState, save: Callable[[RunState, str, dict | None], None], log: TextIO | None,
        device: torch.device, *, rank: int = 0, world: int = 1, progress: bool = False,
        schedule: Callable[[int], dict[str, float]] | None = None, labels: bool = False,
        monitor: Monitor = Monitor()) -> RunState:
    """The training loop shared by the CVAE and the VoxelMorph baseline.

    ``net`` (``model``, an objective around it, or their DDP wrapper) maps ``(fixed, moving)`` to a dict of loss
    terms with ``"loss"``; ``model.register(fixed, moving, inverse=False)`` serves validation on ``split.val``,
    training draws from ``split.train``. ``cfg`` gives the
    schedule (:class:`LoopSettings`). Rank 0 writes one JSON line per step and per validation to ``log``, keeps
    ``best`` and ``last`` through ``save(state, folder, metrics)``, and validates once more when the run stops
    between validations. ``schedule(step)`` gives extra keyword arguments of ``net`` for that step (the CVAE's KL
    and code warm-up weights); they are logged with the loss terms. With ``labels`` the batch's ``moving_label`` and
    ``fixed_label`` are passed to ``net`` too (the training split must then be labelled). A run stopped by SIGTERM
    or Ctrl-C saves ``last`` and then raises :class:`cvae.cli.Interrupted` (the command exits with 143 or 130).
    ``monitor`` says what validation scores and when the run stops early (:class:`Monitor`).
    """
    dataset, train_idx, val_idx = split
    sampler = DistributedSampler(train_idx, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size
    augment = WIDE_AFFINE if cfg.domain != "off" else AugmentParams() if cfg.augment else None
    acquisition = AcquisitionParams() if cfg.domain == "full" else None
    timed = monitor.time_limit_s > 0
    if (monitor.patience or timed) and world > 1:
        raise ValueError("the monitor's early stopping and time limit need a single process")
    validated, stale = state.step, 0  # stale: validations of this process since the best one

    def validate_and_keep_best() -> None:
        nonlocal stale
        tic = time.perf_counter()
        scores = monitor.validate(model, dataset, val_idx, device)
        stale += 1
        if scores[monitor.score] > state.best:
            state.best, stale = scores[monitor.score], 0
            save(state, "best", scores)
        seconds = time.perf_counter() - tic
        state.elapsed += seconds
        log.write(json.dumps({"kind": "val", "step": state.step, **scores, "sec": round(seconds, 4)}) + "\n")
        bar.set_postfix({monitor.score: f"{scores[monitor.score]:.4g}", "best": f"{state.best:.4g}"})
        if timed:
            bar.update(min(round(state.elapsed), bar.total) - bar.n)

    bar = tqdm(total=round(monitor.time_limit_s) if timed else cfg.steps,
               initial=min(round(state.elapsed), round(monitor.time_limit_s)) if timed else state.step,
               disable=not progress or rank != 0, unit="s" if timed else "step", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]" if timed else None)
    with StopFlag() as stop:
        net.train()
        while state.step < cfg.steps and not stop.requested:
            tic = time.perf_counter()
            step = state.step
            epoch, position = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            order = list(sampler)[position * cfg.batch_size:(position + 1) * cfg.batch_size]
            batch = collate([dataset[train_idx[i]] for i in order])
            torch.manual_seed((cfg.seed * 1_000_003 + step) * world + rank)
            gen = torch.Generator().manual_seed((cfg.seed * 7_919 + step) * world + rank)
            if augment is not None:
                batch = augment_batch(batch, augment, gen, cfg.spacing)
            if acquisition is not None:
                batch = randomise_acquisition(batch, acquisition, gen)
            extra = schedule(step) if schedule is not None else {}
            inputs = {k: batch[k].to(device) for k in ("moving_label", "fixed_label")} if labels else {}
            terms = net(batch["fixed"].to(device), batch["moving"].to(device), **inputs, **extra)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            state.step += 1
            elapsed = time.perf_counter() - tic
            state.wall += elapsed
            state.elapsed += elapsed
            values = {k: round(float(v.detach()), 6) for k, v in terms.items()} | extra
            if rank == 0:
                log.write(json.dumps({"kind": "train", "step": state.step, **values, "sec": round(elapsed, 4)})
                          + "\n")
                if timed:
                    bar.update(min(round(state.elapsed), bar.total) - bar.n)
                else:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, s_per_step=f"{elapsed:.2f}")
                    bar.update(1)
                if cfg.time_limit_min and state.wall > 60 * cfg.time_limit_min:
                    stop.requested = True
            if world > 1:  # every process stops, and knows which signal asked
                flag = torch.tensor([float(stop.requested), float(stop.signum or 0)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop.requested, stop.signum = bool(flag[0]), int(flag[1]) or None
            done = state.step == cfg.steps or stop.requested
            if rank == 0 and val_idx and (state.step % cfg.val_every == 0 or done):
                validate_and_keep_best()
                validated = state.step
                if monitor.patience and stale >= monitor.patience:
                    stop.requested = done = True
            if timed and state.elapsed > monitor.time_limit_s:  # steps and validations: checked after both
                stop.requested = done = True
            if rank == 0 and (state.step % cfg.save_every == 0 or done):
                save(state, "last")
    bar.close()
    if rank == 0 and val_idx and state.step > validated:
        validate_and_keep_best()
        save(state, "last")
    if stop.signum is not None:
        raise Interrupted(stop.signum, f"saved last/ at step {state.step} of {cfg.steps}: continue with --resume")
    return state



class HeldOut(NamedTuple):
    """A training cohort and the indices of its subjects used for training and held out for validation."""

    dataset: PairDataset
    train: list[int]
    val: list[int]


def held_out_split(data: str | os.PathLike, size: tuple[int, int, int], spacing: tuple[float, float, float],
                   cache_dir: str | os.PathLike | None, val_subjects: int, progress: bool = False,
                   workers: int = 1) -> HeldOut:
    """The training split of the cohort ``data`` preprocessed to ``size`` voxels of ``spacing`` mm, with its last
    ``val_subjects`` subjects (at least one subject is left to train on) held out for validation. Every subject is
    preprocessed (and cached) first, in ``workers`` processes with a progress bar, so that no step waits for it."""
    dataset = PairDataset(data, "training", size, spacing, cache_dir)
    dataset.prepare(progress=progress, workers=workers)
    n_val = min(val_subjects, len(dataset) - 1)
    return HeldOut(dataset, list(range(len(dataset) - n_val)), list(range(len(dataset) - n_val, len(dataset))))


def run_summary(out: Path) -> str:
    """The line a finished training command prints: where its checkpoints and log are."""
    return f"checkpoints in {out}/last and {out}/best; log in {out}/log.jsonl"


def holds_run(out: Path) -> bool:
    """Whether the run folder ``out`` holds (part of) a run: logged steps, ``best/``, ``last/`` or leftovers of a save
    of ``last/`` killed half-way."""
    log = out / "log.jsonl"
    return ((log.is_file() and log.stat().st_size > 0) or (out / "last").exists() or (out / "best").exists()
            or any(out.glob(".last.*")))


def check_run_folder(out: Path, resume: bool, fmt: str = FORMAT, rank: int = 0, world: int = 1) -> bool:
    """Whether the run in ``out`` is to be resumed from ``out/last``, decided before any data is read.

    With ``resume``, ``last/`` is first put back from the leftovers of a save killed between its renames (the newest
    checkpoint of format ``fmt`` that loads, :func:`cvae.io.atomic.recover_folder`). A run is never restarted
    silently: a run folder that :func:`holds_run` is a ``ValueError`` (one line) without ``resume``, and with
    ``resume`` when no checkpoint of it loads; nothing in the folder is changed then. ``False``: a new run.
    """
    last = out / "last"
    if resume and rank == 0:
        recover_folder(last, lambda folder: training_step(folder, fmt))
    if world > 1:
        dist.barrier()  # the other processes read last/ once rank 0 has put it back
    if resume and training_step(last, fmt) is not None:
        return True
    if holds_run(out):
        if resume:
            raise ValueError(f"--resume: {out} holds a run but no checkpoint of it loads ({last} is missing or "
                             "incomplete); nothing was changed: remove the folder to start over")
        raise ValueError(f"--out {out} holds a run already: continue it with --resume, or choose a new folder")
    return False


def resume_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 **group_overrides: float) -> RunState:
    """Load weights and optimiser of a training checkpoint ``folder`` into ``model`` / ``optimizer`` and return where
    the run stood; ``group_overrides`` (e.g. ``lr=1e-3``) replace the saved optimiser settings."""
    load_weights(model, folder)
    opt_state, trainer = load_training_state(folder)
    optimizer.load_state_dict(opt_state)
    for group in optimizer.param_groups:
        group.update(group_overrides)
    return RunState(trainer["step"], trainer["best_dice"], trainer["wall_time_s"], trainer.get("elapsed_s", 0.0))

