"""Training of the CVAE: configuration on top, one loop below; single process or ``torchrun`` + DDP.

    cvae train --data data/synthetic-acdc --out runs/cvae --steps 20000
    torchrun --nproc_per_node=2 -m cvae.train --data ... --out ...     # DistributedDataParallel (gloo on CPU)

Every ``save_every`` steps the folder ``<out>/last`` is replaced atomically (weights, optimiser, step); every
``val_every`` steps the model is validated on held-out training subjects (mean Dice of the warped ED labels against
the ES labels over the five structures, fraction of negative Jacobians) and ``<out>/best`` keeps the best one.
``<out>/log.jsonl`` gets one line per step (loss terms, seconds per step) and per validation. All randomness of step
``s`` (sample order, augmentation, the reparameterisation noise) is derived from ``(seed, s, rank)``, so
``--resume`` continues exactly where the last checkpoint stopped. Ctrl-C or SIGTERM saves before exiting.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from .checkpoint import load_training_state, load_weights, read_config, save_checkpoint
from .data.augment import AugmentParams, augment_batch
from .data.dataset import PairDataset
from .data.labels import STRUCTURES
from .device import resolve_device
from .fields import warp
from .metrics import dice, negative_jacobian_fraction
from .model import CVAERegistration, ModelConfig
from .warmup import SummaryPCA, warmup_weight


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in the checkpoint's ``config.json`` under ``training``."""

    data: str = "data/synthetic-acdc"      # ACDC-layout root (real ACDC or `cvae synth` output)
    out: str = "runs/cvae"                 # run folder: last/, best/, log.jsonl
    steps: int = 20000                     # optimiser steps (batches)
    batch_size: int = 1                    # per process
    lr: float = 5e-4                       # Adam
    weight_decay: float = 1e-4             # L2
    latent_dim: int = 16                   # d
    lam: float = 5000.0                    # lambda of the Boltzmann likelihood
    kl_delay: int = 1200                   # steps without the KL term (a deterministic autoencoder) at the start
    kl_warmup: int = 800                   # then steps over which the KL weight rises linearly from 0 to 1
    encoder_lr_scale: float = 1.0          # the encoder learns this many times faster (against a lagging encoder)
    condition_dropout: float = 0.0         # probability that a step's decoder sees a blank image instead of M
    code_warmup: int = 1000                # steps of the code warm-up (cvae.warmup): mu pulled to a motion summary
    code_warmup_weight: float = 300.0      # its weight for the first half of those steps, then a fade to 0
    seg_weight: float = 0.0                # weight of 1 - soft Dice of the warped labels (not the paper's method)
    sigma_smooth: float = 3.0              # sigma_S of the velocity smoothing (voxels)
    sigma_lcc: float = 2.0                 # sigma_G of the LCC windows (voxels)
    n_steps: int = 4                       # N of scaling and squaring
    film: bool = True                      # the code also modulates every decoder stage (see cvae.model.Decoder)
    image_size: tuple[int, int, int] = (128, 128, 32)
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.15)
    model_overrides: dict = field(default_factory=dict)  # other ModelConfig fields (e.g. smaller channels)
    augment: bool = True                   # random shift / rotation / scaling / mirroring
    val_subjects: int = 10                 # last N training subjects held out for validation
    val_every: int = 500
    save_every: int = 100                  # a SIGKILL loses at most this many steps
    time_limit_min: float = 0.0            # stop (and save) after this many minutes; 0 = no limit
    seed: int = 0
    device: str = "auto"
    threads: int = 0                       # torch intra-op threads; 0 = torch's default
    cache_dir: str | None = None           # preprocessed-volume cache (default ~/.cache/cvae-reg)
    resume: bool = False                   # continue from <out>/last (lr and weight_decay from this config)
    init: str | None = None                # start from this checkpoint's weights (name or folder): fine-tuning

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({**ModelConfig().to_dict(), "image_size": self.image_size,
                                      "latent_dim": self.latent_dim, "lam": self.lam,
                                      "sigma_smooth": self.sigma_smooth, "sigma_lcc": self.sigma_lcc,
                                      "n_steps": self.n_steps, "film": self.film, **self.model_overrides})


class StopFlag:
    """Turns SIGTERM and a first Ctrl-C into a request to save and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

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
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


@torch.no_grad()
def validate(model: CVAERegistration, dataset: PairDataset, indices: list[int], device: torch.device) -> dict:
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
    warped = warp(item["moving_label"][None].float().to(displacement.device), displacement, mode="nearest")
    warped, ref = warped[0, 0].cpu().numpy(), item["fixed_label"][0].numpy()
    return float(np.nanmean([dice(np.isin(warped, v), np.isin(ref, v), name=s) for s, v in STRUCTURES.items()]))


def _param_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


@dataclass
class RunState:
    """Where a run stands: optimiser steps done, best validation Dice, seconds spent in steps."""

    step: int = 0
    best: float = -math.inf
    wall: float = 0.0


def fit(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: PairDataset,
        train_idx: list[int], val_idx: list[int], cfg: Any, state: RunState,
        save: Callable[[RunState, str, dict | None], None], log: Any, device: torch.device, *, rank: int = 0,
        world: int = 1, progress: bool = False,
        schedule: Callable[[int], dict[str, float]] | None = None, labels: bool = False) -> RunState:
    """The training loop shared by the CVAE and the VoxelMorph baseline.

    ``net`` (``model``, an objective around it, or their DDP wrapper) maps ``(fixed, moving)`` to a dict of loss
    terms with ``"loss"``; ``model.register(fixed, moving, inverse=False)`` serves validation. ``cfg`` gives
    ``steps``, ``batch_size``, ``seed``, ``augment``, ``spacing``, ``val_every``, ``save_every`` and
    ``time_limit_min``. Rank 0 writes one JSON line per step and per validation to ``log``, keeps ``best`` and
    ``last`` through ``save(state, folder, metrics)``, and validates once more when the run stops between
    validations. ``schedule(step)`` gives extra keyword arguments of ``net`` for that step (the CVAE's KL and code
    warm-up weights); they are logged with the loss terms. With ``labels`` the batch's ``moving_label`` and
    ``fixed_label`` are passed to ``net`` too (the training split must then be labelled).
    """
    sampler = DistributedSampler(train_idx, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size
    augment = AugmentParams() if cfg.augment else None
    validated = state.step

    def validate_and_keep_best() -> None:
        scores = validate(model, dataset, val_idx, device)
        log.write(json.dumps({"kind": "val", "step": state.step, **scores}) + "\n")
        if scores["val_dice"] > state.best:
            state.best = scores["val_dice"]
            save(state, "best", scores)

    bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress or rank != 0, unit="step",
               dynamic_ncols=True)
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
            if augment is not None:
                gen = torch.Generator().manual_seed((cfg.seed * 7_919 + step) * world + rank)
                batch = augment_batch(batch, augment, gen, cfg.spacing)
            extra = schedule(step) if schedule is not None else {}
            inputs = {k: batch[k].to(device) for k in ("moving_label", "fixed_label")} if labels else {}
            terms = net(batch["fixed"].to(device), batch["moving"].to(device), **inputs, **extra)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            state.step += 1
            elapsed = time.perf_counter() - tic
            state.wall += elapsed
            values = {k: round(float(v.detach()), 6) for k, v in terms.items()} | extra
            if rank == 0:
                log.write(json.dumps({"kind": "train", "step": state.step, **values, "sec": round(elapsed, 4)})
                          + "\n")
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, s_per_step=f"{elapsed:.2f}")
                bar.update(1)
                if cfg.time_limit_min and state.wall > 60 * cfg.time_limit_min:
                    stop.requested = True
            if world > 1:
                flag = torch.tensor([float(stop.requested)], device=device)
                dist.all_reduce(flag)
                stop.requested = bool(flag.item())
            done = state.step == cfg.steps or stop.requested
            if rank == 0 and val_idx and (state.step % cfg.val_every == 0 or done):
                validate_and_keep_best()
                validated = state.step
            if rank == 0 and (state.step % cfg.save_every == 0 or done):
                save(state, "last")
    bar.close()
    if rank == 0 and val_idx and state.step > validated:
        validate_and_keep_best()
        save(state, "last")
    return state


def make_optimizer(model: CVAERegistration, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with L2 weight decay; the encoder's learning rate is ``cfg.encoder_lr_scale`` times ``cfg.lr``.

    A decoder conditioned on M learns the average motion for an anatomy within a few hundred steps, before the
    encoder has found the subject-specific part; from then on the code gets little use and the posterior collapses
    (He et al., ICLR 2019, "lagging inference networks"). A faster encoder is meant to keep up with the decoder; on
    the synthetic cohort a factor of 3 did not help within 500 steps (model card of ``synthetic-acdc``).
    """
    encoder = list(model.encoder.parameters())
    inside = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in inside]
    groups = [{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale, "lr_scale": cfg.encoder_lr_scale},
              {"params": rest, "lr": cfg.lr, "lr_scale": 1.0}]
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Objective(nn.Module):
    """What a training step of the CVAE minimises: the model's loss terms, with the code warm-up target of each
    batch (:class:`cvae.warmup.SummaryPCA`) while ``code_weight > 0``. Holds no parameters of its own."""

    def __init__(self, model: CVAERegistration, target: SummaryPCA | None = None) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, kl_weight: float = 1.0,
                condition_dropout: float = 0.0, code_weight: float = 0.0, moving_label: torch.Tensor | None = None,
                fixed_label: torch.Tensor | None = None, seg_weight: float = 0.0) -> dict[str, torch.Tensor]:
        target = self.target(fixed, moving) if self.target is not None and code_weight > 0 else None
        labels = (moving_label, fixed_label) if moving_label is not None and fixed_label is not None else None
        return self.model(fixed, moving, kl_weight, condition_dropout, code_target=target, code_weight=code_weight,
                          labels=labels, seg_weight=seg_weight)


def loss_schedule(cfg: TrainConfig, step: int) -> dict[str, float]:
    """Keyword arguments of :class:`Objective` at step ``step`` (0-based): the KL weight is 0 for the first
    ``cfg.kl_delay`` steps, then rises linearly from 0 to 1 over ``cfg.kl_warmup`` steps; ``condition_dropout`` as
    configured; the code warm-up weight (:func:`cvae.warmup.warmup_weight`) when ``cfg.code_warmup`` is set;
    ``seg_weight`` when ``cfg.seg_weight`` is set.

    Why a delay and not only a ramp: Adam scales each parameter's step by its own gradient history, so on the
    code's parameters, whose similarity gradient is small and noisy while the code is still uninformative, even a
    KL weight of 0.001 moves them at full speed toward the prior and the code collapses before it carries anything.
    """
    ramp = step - cfg.kl_delay
    weight = 0.0 if ramp < 0 else min(1.0, ramp / cfg.kl_warmup) if cfg.kl_warmup > 0 else 1.0
    extra = {"kl_weight": weight, "condition_dropout": cfg.condition_dropout}
    if cfg.code_warmup > 0:
        extra["code_weight"] = warmup_weight(step, cfg.code_warmup, cfg.code_warmup_weight)
    if cfg.seg_weight > 0:
        extra["seg_weight"] = cfg.seg_weight
    return extra


def held_out_split(cfg: Any) -> tuple[PairDataset, list[int], list[int]]:
    """The training cohort of ``cfg`` (``data``, ``image_size``, ``spacing``, ``cache_dir``) with its last
    ``val_subjects`` subjects held out for validation: ``(dataset, train indices, validation indices)``."""
    dataset = PairDataset(cfg.data, "training", cfg.image_size, cfg.spacing, cfg.cache_dir)
    n_val = min(cfg.val_subjects, len(dataset) - 1)
    return dataset, list(range(len(dataset) - n_val)), list(range(len(dataset) - n_val, len(dataset)))


def resume_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 **group_overrides: float) -> RunState:
    """Load weights and optimiser of a training checkpoint ``folder`` into ``model`` / ``optimizer`` and return where
    the run stood; ``group_overrides`` (e.g. ``lr=1e-3``) replace the saved optimiser settings (a group's ``lr`` is
    multiplied by its ``lr_scale``)."""
    load_weights(model, folder)
    opt_state, trainer = load_training_state(folder)
    optimizer.load_state_dict(opt_state)
    for group in optimizer.param_groups:
        group.update(group_overrides)
        if "lr" in group_overrides:
            group["lr"] = group_overrides["lr"] * group.get("lr_scale", 1.0)
    return RunState(trainer["step"], trainer["best_dice"], trainer["wall_time_s"])


def init_weights(model: CVAERegistration, checkpoint: str | os.PathLike, spacing: Sequence[float]) -> None:
    """Load the weights of ``checkpoint`` into ``model`` (fine-tuning), after checking that it was trained with the
    same model settings and voxel spacing (mm) as this run; ``ValueError`` naming the differences otherwise."""
    config = read_config(checkpoint)
    ours = {**model.config.to_dict(), "spacing": [float(x) for x in spacing]}
    theirs = {**config["model"], "spacing": [float(x) for x in config.get("spacing", ours["spacing"])]}
    differ = [f"{k}={theirs.get(k)!r} (this run: {v!r})" for k, v in ours.items() if theirs.get(k) != v]
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
    out = Path(cfg.out)
    log_path = out / "log.jsonl"

    dataset, train_idx, val_idx = held_out_split(cfg)
    if len(train_idx) < world * cfg.batch_size:
        raise ValueError(f"{len(train_idx)} training subjects are too few for {world} x batch {cfg.batch_size}")

    torch.manual_seed(cfg.seed)
    model = CVAERegistration(cfg.model_config()).to(device)
    optimizer = make_optimizer(model, cfg)
    state = RunState()
    if cfg.resume and (out / "last").is_dir():  # the command line may continue with a new learning rate
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
                                       cfg.latent_dim).to(device)
    objective = Objective(model, target)
    net = DistributedDataParallel(objective) if world > 1 else objective
    training_info = {**asdict(cfg), "world_size": world, "hardware": f"{platform.processor() or platform.machine()}"
                     f", {os.cpu_count()} cores, {device.type}", "torch": torch.__version__}

    def save(state: RunState, folder: str, metrics: dict | None = None) -> None:
        info = {**training_info, "steps_done": state.step, "wall_time_s": round(state.wall, 1)}
        save_checkpoint(out / folder, model, spacing=cfg.spacing, training=info, metrics=metrics,
                        optimizer=optimizer if folder == "last" else None,
                        trainer={"step": state.step, "best_dice": state.best, "wall_time_s": state.wall})

    with open(log_path, "a", buffering=1) if rank == 0 else nullcontext() as log:
        state = fit(net, model, optimizer, dataset, train_idx, val_idx, cfg, state, save, log,
                    device, rank=rank, world=world, progress=progress, schedule=partial(loss_schedule, cfg),
                    labels=cfg.seg_weight > 0)
        if world > 1:
            checksums = [None] * world
            dist.all_gather_object(checksums, _param_checksum(model))
            if rank == 0:
                log.write(json.dumps({"kind": "ddp_check", "step": state.step, "checksums": checksums}) + "\n")
            # The DDP wrapper sits in a reference cycle that holds the Gloo process group. Left to the interpreter's
            # exit, the group's threads are torn down during finalisation and the process aborts ("terminate called
            # without an active exception", SIGABRT) in about 1 run in 3 of a minimal DDP script; collect it first.
            del net
            gc.collect()
            dist.destroy_process_group()
    return out


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--flag`` per field of a config dataclass, typed from its default (``tuple[int, ...]`` takes any count,
    booleans get ``--no-flag``, dicts take JSON)."""
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            nargs = "+" if "..." in str(f.type) else len(default)
            parser.add_argument(flag, nargs=nargs, type=type(default[0]), default=default)
        elif isinstance(default, dict):
            parser.add_argument(flag, type=json.loads, default=default, help="JSON object")
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default)


def config_from_arguments(config_class: type, values: dict) -> Any:
    """The config dataclass from parsed ``values`` (lists back to tuples)."""
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = config_from_arguments(TrainConfig, vars(args))
    try:
        out = train(cfg)
    except ValueError as exc:
        print(f"cvae train: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoints in {out}/last and {out}/best; log in {out}/log.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
