"""Training the CVAE, single process or under ``torchrun`` + DistributedDataParallel: :func:`train` (the command
line, ``cvae train`` and ``torchrun -m cvae.commands.train``, is :mod:`cvae.commands.train`).

The run's settings are a :class:`~cvae.training.config.TrainConfig` (``cvae train --help`` lists every option with
its unit and default); the loop, its checkpoints (``<out>/last``, ``<out>/best``), its log (``<out>/log.jsonl``) and
``--resume`` are those of :mod:`cvae.training.loop`; what a step minimises is
:class:`~cvae.training.objective.Objective`.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cvae.checkpoint import load_weights, read_config, save_checkpoint
from cvae.device import resolve_device
from cvae.model import CVAERegistration
from cvae.paths import data_root
from cvae.training.config import TrainConfig
from cvae.io.atomic import check_writable
from cvae.training.loop import (RunState, check_run_folder, fit, held_out_split, resume_state, rewind_log)
from cvae.training.objective import Objective, loss_schedule
from cvae.training.warmup import SummaryPCA

__all__ = ["train", "model_changes", "init_weights"]


def _param_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def model_changes(model: CVAERegistration, checkpoint: str | os.PathLike, spacing: Sequence[float]
                  ) -> list[tuple[str, object, object]]:
    """``(name, this run's value, the checkpoint's value)`` of each model setting and of the voxel spacing (mm) in
    which this run differs from what ``checkpoint`` was trained with."""
    config = read_config(checkpoint)
    ours = {**model.config.to_dict(), "spacing": [float(x) for x in spacing]}
    theirs = {**config["model"], "spacing": [float(x) for x in config.get("spacing", ours["spacing"])]}
    return [(k, v, theirs.get(k)) for k, v in ours.items() if theirs.get(k) != v]


def init_weights(model: CVAERegistration, checkpoint: str | os.PathLike, spacing: Sequence[float]) -> None:
    """Load the weights of ``checkpoint`` into ``model`` (fine-tuning), after checking that it was trained with the
    same model settings and voxel spacing (mm) as this run; ``ValueError`` naming the differences otherwise."""
    differ = [f"{name}={theirs!r} (this run: {ours!r})"
              for name, ours, theirs in model_changes(model, checkpoint, spacing)]
    if differ:
        raise ValueError(f"--init {checkpoint} was trained with {', '.join(differ)}; pass the same options")
    load_weights(model, checkpoint)


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training; returns the run folder. Works under ``torchrun`` (DDP) and alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg = dataclasses.replace(cfg, data=str(cfg.data or data_root()))
    out = check_writable(cfg.out)
    log_path = out / "log.jsonl"
    resumed = check_run_folder(out, cfg.resume, rank=rank, world=world)

    if world > 1 and rank > 0:
        dist.barrier()  # rank 0 preprocesses the cohort first, on every core; the others then read its cache
    split = held_out_split(cfg.data, cfg.model.image_size, cfg.spacing, cfg.cache_dir, cfg.val_subjects,
                           progress=progress and rank == 0, workers=os.cpu_count() or 1)
    if world > 1 and rank == 0:
        dist.barrier()
    dataset, train_idx, _ = split
    if len(train_idx) < world * cfg.batch_size:
        raise ValueError(f"{len(train_idx)} training subjects are too few for {world} x batch {cfg.batch_size}")

    torch.manual_seed(cfg.seed)
    model = CVAERegistration(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = RunState()
    if resumed:  # the command line may continue with a new lr, lam, ...
        if rank == 0:
            for name, ours, theirs in model_changes(model, out / "last", cfg.spacing):
                print(f"cvae train: note: resuming with {name}={ours!r} (the run had {theirs!r})", file=sys.stderr)
        state = resume_state(out / "last", model, optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.init:
        init_weights(model, cfg.init, cfg.spacing)
    if cfg.seg_weight > 0:
        unlabelled = [dataset.infos[i].subject for i in train_idx
                      if dataset.infos[i].ed_label is None or dataset.infos[i].es_label is None]
        if unlabelled:
            raise ValueError(f"--seg-weight needs labelled training pairs; {len(unlabelled)} have no labels "
                             f"(e.g. {unlabelled[0]})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        rewind_log(log_path, state.step)
    target = None
    if cfg.code_warmup > 0 and state.step < cfg.code_warmup:
        target = SummaryPCA.from_pairs(((dataset[i]["fixed"], dataset[i]["moving"]) for i in train_idx),
                                       cfg.model.latent_dim).to(device)
    objective = Objective(model, target)
    net = DistributedDataParallel(objective) if world > 1 else objective
    training_info = {**asdict(cfg), "world_size": world, "hardware": f"{platform.processor() or platform.machine()}"
                     f", {os.cpu_count()} cores, {device.type}", "torch": torch.__version__}

    def save(state: RunState, folder: str, metrics: dict | None = None) -> None:
        info = {**training_info, "steps_done": state.step, "wall_time_s": round(state.wall, 1)}
        save_checkpoint(out / folder, model, spacing=cfg.spacing, training=info, metrics=metrics,
                        optimizer=optimizer if folder == "last" else None,
                        trainer={"step": state.step, "best_dice": state.best, "wall_time_s": state.wall,
                                 "elapsed_s": state.elapsed})

    try:
        with open(log_path, "a", buffering=1) if rank == 0 else nullcontext() as log:
            state = fit(net, model, optimizer, split, cfg, state, save, log,
                        device, rank=rank, world=world, progress=progress, schedule=partial(loss_schedule, cfg),
                        labels=cfg.seg_weight > 0)
            if world > 1:
                checksums = [None] * world
                dist.all_gather_object(checksums, _param_checksum(model))
                if rank == 0:
                    log.write(json.dumps({"kind": "ddp_check", "step": state.step, "checksums": checksums}) + "\n")
    finally:
        if world > 1:
            # The DDP wrapper sits in a reference cycle that holds the Gloo process group. Left to the interpreter's
            # exit, the group's threads are torn down during finalisation and the process may abort ("terminate
            # called without an active exception", SIGABRT); collect it first.
            del net
            gc.collect()
            dist.destroy_process_group()
    return out


if __name__ == "__main__":  # the command moved; say where rather than do nothing
    sys.exit("python -m cvae.training.train: the command is `cvae train` (under torchrun: -m cvae.commands.train)")
