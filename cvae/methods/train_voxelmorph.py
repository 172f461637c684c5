"""Training of the VoxelMorph baseline on the same data, grid, augmentation and hold-out as the CVAE.

    python -m cvae.methods.train_voxelmorph --data data/synthetic-acdc --out runs/voxelmorph --time-limit-min 60
    python -m cvae.methods.train_voxelmorph --export runs/voxelmorph checkpoints/voxelmorph-synthetic-acdc
    python -m cvae.methods.train_voxelmorph --init voxelmorph-synthetic-acdc --domain full --lr 1e-4 ...   # fine-tuning

Data: ``PairDataset(data, "training")`` at ``image_size`` / ``spacing`` (fixed = ES, moving = ED), the last
``val_subjects`` subjects held out for validation (as for the CVAE), online augmentation ``augment_batch`` with
``AugmentParams()``, batch 1, Adam (lr 1e-4, VoxelMorph's default), loss ``-NCC(9) + 1.5 * Grad`` (see
:mod:`cvae.methods.voxelmorph`). The loop is the CVAE's own (:func:`cvae.training.loop.fit`): every ``save_every``
steps ``<out>/last`` is replaced atomically (weights, optimiser, step); every ``val_every`` steps and when stopping,
the mean Dice of the warped ED labels against the ES labels over the five structures is measured on the held-out
subjects (:func:`cvae.training.loop.validate`) and ``<out>/best`` keeps the best model; ``<out>/log.jsonl`` gets one
line per step and per validation; randomness of step ``s`` derives from ``(seed, s)``, so ``--resume`` continues
where ``last`` stopped; ``--time-limit-min`` counts the time spent in steps; Ctrl-C or SIGTERM saves and stops.

``--export RUN DEST`` copies the best weights of a run (``RUN`` = run folder or its ``best/``) to ``DEST`` with a
``README.md`` model card built from the checkpoint's config and the run's ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import voxelmorph as vxm
from safetensors.torch import save as safetensors_bytes

from cvae.cli import run_command
from cvae.config import add_config_arguments, config_from_arguments, option
from cvae.device import resolve_device
from cvae.io.atomic import check_writable
from cvae.methods.voxelmorph import (FORMAT, VoxelMorph, VoxelMorphConfig, load_voxelmorph_checkpoint,
                                     read_voxelmorph_config, save_voxelmorph)
from cvae.paths import data_root
from cvae.training.config import RunConfig
from cvae.training.loop import (RunState, check_run_folder, fit, held_out_split, resume_state, rewind_log,
                                run_summary)

__all__ = ["VxmTrainConfig", "init_voxelmorph", "train_voxelmorph", "export_voxelmorph", "main"]


@dataclass
class VxmTrainConfig(RunConfig):
    """A VoxelMorph run: the settings every run shares (:class:`~cvae.training.config.RunConfig`), with the defaults
    of this baseline, and the model; saved in its checkpoints' ``config.json`` under ``training``."""

    out: str = option("runs/voxelmorph", "run folder: last/ and best/ checkpoints, log.jsonl")
    steps: int = option(100_000, "optimiser steps in all (an upper bound: a time limit usually stops the run first)")
    lr: float = option(1e-4, "Adam learning rate (VoxelMorph's default)")
    val_every: int = option(200, "steps between validations (best/ keeps the best one)")
    save_every: int = option(50, "steps between saves of last/ (a SIGKILL loses at most this many)")
    init: str | None = option(None, "start from this VoxelMorph checkpoint's weights (name or folder): fine-tuning; "
                                    "its model options and spacing must match this run's")
    model: VoxelMorphConfig = option(VoxelMorphConfig(), "the network and its loss (VoxelMorphConfig)")


def init_voxelmorph(model: VoxelMorph, checkpoint: str | os.PathLike, spacing: Sequence[float]) -> None:
    """Load the weights of the VoxelMorph ``checkpoint`` into ``model`` (fine-tuning), after checking that it has the
    same model options and voxel spacing (mm); ``ValueError`` naming the differences otherwise."""
    source, config = load_voxelmorph_checkpoint(checkpoint, "cpu")
    ours = {**asdict(model.config), "spacing": [float(x) for x in spacing]}
    theirs = {**asdict(source.config), "spacing": [float(x) for x in config.get("spacing", spacing)]}
    differ = [f"{k}={theirs[k]!r} (this run: {v!r})" for k, v in ours.items() if theirs[k] != v]
    if differ:
        raise ValueError(f"--init {checkpoint} was trained with {', '.join(differ)}; pass the same options")
    model.load_state_dict(source.state_dict())


def train_voxelmorph(cfg: VxmTrainConfig, command: str = "") -> Path:
    """Run (or resume) training; returns the run folder. ``command`` is recorded in the checkpoints."""
    cfg = dataclasses.replace(cfg, data=str(cfg.data or data_root()))
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = check_writable(cfg.out)
    log_path = out / "log.jsonl"
    resumed = check_run_folder(out, cfg.resume, FORMAT)
    split = held_out_split(cfg.data, cfg.model.image_size, cfg.spacing, cfg.cache_dir, cfg.val_subjects,
                           progress=True, workers=os.cpu_count() or 1)
    dataset, train_idx, val_idx = split

    torch.manual_seed(cfg.seed)
    model = VoxelMorph(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if resumed:
        state = resume_state(out / "last", model, optimizer)
    else:
        state = RunState()
        if cfg.init:
            init_voxelmorph(model, cfg.init, cfg.spacing)
    out.mkdir(parents=True, exist_ok=True)
    rewind_log(log_path, state.step)
    info = {**asdict(cfg), "command": command, "torch": torch.__version__, "voxelmorph": vxm.__version__,
            "train_subjects": [dataset.subjects[i] for i in train_idx],
            "val_subjects_ids": [dataset.subjects[i] for i in val_idx],
            "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device.type}, "
                        f"{torch.get_num_threads()} torch threads", "niceness": os.nice(0)}

    def save(state: RunState, folder: str, metrics: dict | None = None) -> None:
        save_voxelmorph(out / folder, model, spacing=cfg.spacing, metrics=metrics,
                        training={**info, "steps_done": state.step, "wall_time_s": round(state.wall, 1)},
                        optimizer=optimizer if folder == "last" else None,
                        trainer={"step": state.step, "best_dice": state.best, "wall_time_s": state.wall})

    with open(log_path, "a", buffering=1) as log:  # line-buffered: readable while running
        fit(model, model, optimizer, split, cfg, state, save, log, device)
    return out


# --------------------------------------------------------------------------------------------------------- export


def _log_summary(log_path: Path, window: int = 20) -> dict:
    """Steps logged, median seconds per step, mean loss of the first and last ``window`` steps, and the validation
    history ``[(step, dice, negative Jacobian fraction)]`` of a ``log.jsonl``."""
    train, val = [], []
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("kind") == "train":
                train.append(entry)
            elif entry.get("kind") == "val":
                val.append(entry)
    losses = [e["loss"] for e in train]
    return {"steps_logged": len(train),
            "median_sec_per_step": statistics.median(e["sec"] for e in train) if train else math.nan,
            "first_loss": statistics.fmean(losses[:window]) if losses else math.nan,
            "last_loss": statistics.fmean(losses[-window:]) if losses else math.nan, "window": window,
            "validations": [(e["step"], e["val_dice"], e["val_negative_jacobian"]) for e in val]}


def _model_card(config: dict, run: dict, summary: dict, n_parameters: int, weight_bytes: int,
                cohort_seed: int, note: str = "", name: str = "voxelmorph-synthetic-acdc") -> str:
    """Markdown model card from the exported checkpoint's ``config``, the ``training`` section ``run`` of the run's
    ``last`` checkpoint (the whole run: steps, wall time), the ``log.jsonl`` summary and a free-text ``note``;
    ``name`` is the checkpoint's folder name."""
    model, best, metrics = config["model"], config.get("training", {}), config.get("metrics", {})
    if model["integration_steps"]:
        variant = (f"diffeomorphic VoxelMorph (stationary velocity integrated by scaling and squaring in "
                   f"{model['integration_steps']} steps)")
    else:
        variant = ("VoxelMorph as in Balakrishnan et al. CVPR 2018 (displacement predicted directly, no integration), "
                   "the variant the CVAE paper (Krebs et al. DLMIA 2018) compared with")
    lr_note = "" if run.get("lr") == VxmTrainConfig.lr else f" (VoxelMorph's default: {VxmTrainConfig.lr})"
    default = " (VxmPairwise's default)" if tuple(model["nb_features"]) == VoxelMorphConfig().nb_features else ""
    train_ids, val_ids = run.get("train_subjects", []), run.get("val_subjects_ids", [])
    done, planned, wall = run.get("steps_done", 0), run.get("steps", 0), run.get("wall_time_s", math.nan)
    limit = run.get("time_limit_min") or 0
    if done >= planned:
        stopped = f"It ran all {planned} planned steps."
    elif limit and wall >= 60 * limit:
        stopped = (f"Time-boxed: stopped by its time limit ({limit} min) after {done} of at most {planned} steps, "
                   "not by convergence.")
    else:
        stopped = (f"Not finished: {done} of at most {planned} steps at this export (the run was still going, or "
                   "was stopped by a signal).")
    shared = (" The run had lowered priority beside other jobs: its time per step is that "
              "of a loaded machine." if run.get("niceness", 0) > 0 else "")
    val_rows = "\n".join(f"| {s} | {100 * d:.2f} | {100 * j:.3f} |" for s, d, j in summary["validations"])
    model_bullets = [
        f"Architecture: `VxmPairwise(ndim=3)`: a neurite `BasicUNet` on the concatenated (moving, fixed) pair with "
        f"{list(model['nb_features'])} features per level{default}, ReLU, max-pooling down and trilinear up-sampling "
        f"with skip connections, then a 3x3x3 flow layer with 3 outputs. {n_parameters:,} parameters; "
        f"`model.safetensors` is {weight_bytes / 1e6:.2f} MB.",
        f"Variant: {variant}.",
        f"Loss: `-NCC(M o phi, F) + lambda * Grad(flow)` with neurite's `NCC` (squared local correlation, box window "
        f"of {model['ncc_window']}^3 voxels) and `SpatialGradient('l2')` (mean squared forward differences of the "
        f"flow, in voxels); lambda = {model['lam']}.",
        f"Input grid: {tuple(model['image_size'])} voxels of {tuple(config.get('spacing', []))} mm, intensities in "
        "[0, 1] (`cvae.data.preprocess`); fixed = ES, moving = ED."]
    training_bullets = [
        f"Data: `{run.get('data')}`, the synthetic ACDC-like cohort of `cvae synth` (seed {cohort_seed}), split "
        f"`training`: {len(train_ids)} subjects for training ({', '.join(train_ids[:1])} to "
        f"{', '.join(train_ids[-1:])}), the last {len(val_ids)} held out for validation ({', '.join(val_ids[:1])} "
        f"to {', '.join(val_ids[-1:])}).",
        "The CVAE's pipeline (`cvae.training.loop`): `PairDataset`, online augmentation "
        "`augment_batch(AugmentParams())` "
        f"(shift, rotation, tilt, scaling, mirroring) {'on' if run.get('augment', True) else 'off'}, batch 1; Adam, "
        f"lr {run.get('lr')}{lr_note}, no weight decay; seed {run.get('seed')}.",
        *([f"Domain randomisation `--domain {run['domain']}` (`cvae.data.randomise`), drawn anew for every step."]
          if run.get("domain", "off") != "off" else []),
        *([f"Fine-tuned: started from the weights of `{run['init']}`; the steps below are this run's only."]
          if run.get("init") else []),
        f"Run: {done} steps in {wall:.0f} s of wall time ({wall / 3600:.2f} h, periodic validation and saving "
        f"included), i.e. {wall / max(done, 1):.1f} s per step overall; median "
        f"{summary['median_sec_per_step']:.2f} s per training step. Mean loss {summary['first_loss']:.4f} over the "
        f"first {summary['window']} steps, {summary['last_loss']:.4f} over the last {summary['window']}. {stopped}",
        f"Hardware: {run.get('hardware')}, niceness {run.get('niceness', 0)}.{shared}",
        f"Command: `{run.get('command')}`"]
    return "\n".join([
        f"# VoxelMorph baseline `{name}`, trained on the synthetic ACDC-like cohort", "",
        f"Baseline of cvae-reg: `voxelmorph` {run.get('voxelmorph', '?')} (PyTorch backend), "
        "`voxelmorph.nn.models.VxmPairwise`, trained by `cvae.methods.train_voxelmorph`. Load it with "
        f'`cvae.methods.voxelmorph.load_voxelmorph("{name}")`, or evaluate it with '
        f"`cvae evaluate` (method `voxelmorph`, `--voxelmorph-checkpoint {name}`). Displacements are in voxels on "
        "the preprocessed grid, with `M o (id + u) ~ F`.", "",
        "## Model", *[f"- {b}" for b in model_bullets], "",
        "## Training", *[f"- {b}" for b in training_bullets], "",
        "## Validation (held-out training subjects)",
        "Mean Dice over the five structures (LV blood pool, LV myocardium, LV epicardium, RV, whole heart) of the "
        "warped ED labels against the ES labels, and the fraction of voxels whose Jacobian determinant is <= 0.", "",
        "| step | mean Dice % | negative Jacobian % |", "|---|---|---|", val_rows, "",
        f"These weights are the best of these validations: step {best.get('steps_done')}, mean Dice "
        f"{100 * metrics.get('val_dice', math.nan):.2f} %, negative Jacobians "
        f"{100 * metrics.get('val_negative_jacobian', math.nan):.3f} %.", "",
        *(["## Notes", note.strip(), ""] if note.strip() else [])])


def export_voxelmorph(run: str | os.PathLike, dest: str | os.PathLike, cohort_seed: int = 0, note: str = "") -> Path:
    """Copy the best weights of a run (``run`` = run folder or its ``best/``) into ``dest`` with a ``README.md`` model
    card; ``cohort_seed`` is the seed the synthetic training cohort was made with, ``note`` free text for the card."""
    run = Path(run)
    folder = run.parent if run.name in ("best", "last") else run
    model, config = load_voxelmorph_checkpoint(folder / "best", "cpu")
    last = read_voxelmorph_config(folder / "last") if (folder / "last").is_dir() else config
    weight_bytes = len(safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))
    card = _model_card(config, last["training"], _log_summary(folder / "log.jsonl"), model.num_parameters(),
                       weight_bytes, cohort_seed, note, Path(dest).name)
    return save_voxelmorph(dest, model, spacing=config["spacing"], training=config["training"],
                           metrics=config["metrics"], extra_files={"README.md": card})


# ------------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cvae.methods.train_voxelmorph", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--export", nargs=2, metavar=("RUN", "DEST"), help="export the best weights of RUN to DEST")
    p.add_argument("--cohort-seed", type=int, default=0, help="seed of the synthetic cohort (model card of --export)")
    p.add_argument("--note", default="", help="free text for a Notes section of the model card (--export)")
    add_config_arguments(p, VxmTrainConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    export, cohort_seed, note = args.pop("export"), args.pop("cohort_seed"), args.pop("note")

    def body() -> str:
        if export:
            dest = export_voxelmorph(*export, cohort_seed=cohort_seed, note=note)
            return f"exported {export[0]} to {dest} (model.safetensors, config.json, README.md)"
        command = "python -m cvae.methods.train_voxelmorph " + shlex.join(argv)
        return run_summary(train_voxelmorph(config_from_arguments(VxmTrainConfig, args), command))

    return run_command("train_voxelmorph", body)


if __name__ == "__main__":
    sys.exit(main())
