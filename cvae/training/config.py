"""What a training run depends on, and its command-line form.

:class:`SessionConfig` holds what every run of the training loop shares (batch, augmentation, seed, machine, cache,
resume; ``cvae adapt``'s config adds its own to it); :class:`RunConfig` adds a run's data, schedule and checkpoints;
:class:`TrainConfig` adds the CVAE's objective schedule and holds its :class:`~cvae.model.ModelConfig` (the VoxelMorph
baseline's ``VxmTrainConfig`` holds a ``VoxelMorphConfig`` the same way). A config is saved in its checkpoints'
``config.json`` under ``training``.

Every field carries its help line (:func:`cvae.config.option`), from which ``cvae train --help`` is built.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from cvae.config import at_least, option
from cvae.data.grid import DEFAULT_SPACING
from cvae.model_config import ModelConfig

__all__ = ["DOMAINS", "SessionConfig", "RunConfig", "TrainConfig", "AdaptConfig"]

#: Levels of ``--domain`` (:mod:`cvae.data.randomise`): off (the paper's setting), geometry only, geometry and
#: acquisition.
DOMAINS: tuple[str, ...] = ("off", "geometry", "full")


@dataclass
class SessionConfig:
    """What every run of the training loop shares, whatever it trains and from what: pairs per step, augmentation,
    randomness, machine, cache and resume (see the field help)."""

    batch_size: int = option(1, "pairs per step and process")
    augment: bool = option(True, "random shift, rotation, scaling and mirroring of every pair")
    domain: str = option("off", "domain randomisation (cvae.data.randomise): off; geometry (any in-plane rotation, "
                                "wider affine ranges, with or without --augment); full (geometry, then a random "
                                "contrast curve, bias field, slice thickness, blur and noise)")
    seed: int = option(0, "seed of the sample order, augmentation and noise (and of a new model's initialisation)")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda[:N]")
    threads: int = option(0, "torch intra-op threads per process; 0 = torch's default")
    cache_dir: str | None = option(None, "preprocessed-volume cache; None = $CVAE_CACHE or ~/.cache/cvae-reg")
    resume: bool = option(False, "continue the run in --out from its last/ checkpoint (cvae train and cvae adapt: "
                                 "with the command line's --lr, and cvae train's --weight-decay, from there on)")

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size")
        at_least(self, 0, "threads")
        if self.domain not in DOMAINS:
            raise ValueError(f"--domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")


@dataclass
class RunConfig(SessionConfig):
    """A training run from scratch: the shared settings, the data, schedule and checkpoints (see the field help)."""

    data: str | None = option(None, "ACDC-layout cohort root (real ACDC or `cvae synth` output); None = $CVAE_DATA "
                                    "or <repo>/data/synthetic-acdc")
    out: str = option("runs/cvae", "run folder: last/ and best/ checkpoints, log.jsonl")
    steps: int = option(20000, "optimiser steps (batches) in all, counting those of a resumed run")
    lr: float = option(5e-4, "Adam learning rate")
    spacing: tuple[float, float, float] = option(DEFAULT_SPACING, "voxel size of the preprocessed grid, mm (X Y Z)")
    val_subjects: int = option(10, "the last N training subjects are held out for validation")
    val_every: int = option(500, "steps between validations (best/ keeps the best one)")
    save_every: int = option(100, "steps between saves of last/ (a SIGKILL loses at most this many)")
    time_limit_min: float = option(0.0, "stop and save after this many minutes of steps; 0 = no limit")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "steps", "val_every", "save_every")
        at_least(self, 0, "val_subjects", "time_limit_min", "lr")
        if len(self.spacing) != 3 or not all(float(s) > 0 for s in self.spacing):
            raise ValueError(f"--spacing must be three voxel sizes > 0 mm, got {' '.join(map(str, self.spacing))}")


@dataclass
class TrainConfig(RunConfig):
    """A CVAE training run: the shared settings, the schedule of the objective's terms and the model."""

    weight_decay: float = option(1e-4, "Adam's L2 weight decay")
    kl_delay: int = option(1200, "steps without the KL term at the start (a deterministic autoencoder)")
    kl_warmup: int = option(800, "then steps over which the KL weight rises linearly from 0 to 1")
    code_warmup: int = option(1000, "steps of the code warm-up (cvae.training.warmup); 0 = off")
    code_warmup_weight: float = option(300.0, "weight of the code warm-up for its first half, then a fade to 0")
    seg_weight: float = option(0.0, "weight of 1 - soft Dice of the warped labels; needs labelled pairs "
                                    "(not the paper's unsupervised method); 0 = off")
    init: str | None = option(None, "start from this checkpoint's weights (name or folder): fine-tuning; the model "
                                    "options must match it")
    model: ModelConfig = option(ModelConfig(), "the network and its objective (cvae.model.ModelConfig)")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 0, "weight_decay", "kl_delay", "kl_warmup", "code_warmup", "code_warmup_weight", "seg_weight")


@dataclass
class AdaptConfig(SessionConfig):
    """An adaptation run: the settings every run shares and its own (see the field help; ``cvae adapt --help``)."""

    checkpoint: str = option("synthetic-acdc", "the trained model to adapt (name or folder)")
    data: str = option("", "the cohort to adapt to (ACDC layout: Info.cfg with ED and ES, the two frames as files "
                           "or in the cine _4d file; no Group needed; segmentations are never read)")
    out: str = option("runs/adapted", "run folder: best/ (the adapted checkpoint), last/, log.jsonl")
    split: str | None = option(None, "training, testing, or None for every subject of the cohort")
    minutes: float = option(10.0, "stop after this many minutes of steps and validations (preprocessing not "
                                  "counted); 0 = no limit")
    patience: int = option(4, "stop after this many validations in a row without a better score; 0 = never")
    steps: int = option(100000, "at most this many optimiser steps in all, counting those of a resumed run")
    lr: float = option(1e-4, "Adam learning rate")
    val_subjects: int = option(4, "the last N subjects are held out for the validation objective")
    val_every: int = option(25, "steps between validations")
    save_every: int = option(25, "steps between saves of last/")
    workers: int = option(0, "processes that preprocess the cohort first; 0 = one per CPU core")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("--data is required: the cohort to adapt to")
        if self.split not in (None, "training", "testing"):
            raise ValueError(f"--split must be training or testing (or left out for both), got {self.split!r}")
        at_least(self, 1, "steps", "val_subjects", "val_every", "save_every")
        at_least(self, 0, "minutes", "patience", "workers")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")

    def run_config(self, spacing: tuple[float, float, float]) -> RunConfig:
        """The loop's settings: this run's, on the checkpoint's grid ``spacing`` (mm), without ``cvae train``'s
        step-time limit (:class:`~cvae.training.loop.Monitor` keeps the time)."""
        shared = {f.name: getattr(self, f.name) for f in fields(SessionConfig)}
        return RunConfig(**shared, data=self.data, out=self.out, steps=self.steps, lr=self.lr, spacing=spacing,
                         val_subjects=self.val_subjects, val_every=self.val_every, save_every=self.save_every)
