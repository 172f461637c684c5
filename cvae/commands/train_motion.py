"""``cvae train-motion``: fit the motion model to a cohort's cines (:mod:`cvae.motion.train`)."""
from __future__ import annotations

import argparse

from cvae.cli import run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae train-motion", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="cohort with cines patientNNN_4d.nii.gz (ACDC layout)")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="registration checkpoint that tracks the cines")
    parser.add_argument("--split", default="training", help="split of --data to train on")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N cines")
    parser.add_argument("--cycles", default=None, help=".npz cache of the tracked cycles: read if it exists, else "
                        "written (the tracking runs once)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument("--validation", type=int, default=10, help="cycles held out to choose the best step")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="device of the tracking: auto, cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)

    def body() -> str:
        from pathlib import Path

        from tqdm import tqdm

        from cvae.checkpoint import load_checkpoint
        from cvae.motion.cycles import cohort_cycles, load_cycles, save_cycles
        from cvae.motion.train import MotionTraining, train_motion
        if args.cycles and Path(args.cycles).is_file():
            cycles = load_cycles(args.cycles)
        else:
            model, config = load_checkpoint(args.checkpoint, args.device)
            with tqdm(desc="tracking cines", unit="cine", disable=args.no_progress, dynamic_ncols=True) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)
                cycles = cohort_cycles(model, args.data, args.split, tuple(config["spacing"]), args.limit, progress)
            if args.cycles:
                save_cycles(args.cycles, cycles)
        settings = MotionTraining(steps=args.steps, validation=args.validation, seed=args.seed)
        source = {"registration_checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                  "cycles": len(cycles)}
        metrics = train_motion(cycles, args.out, settings, source=source,
                               log=(lambda line: None) if args.no_progress else print)
        return (f"trained the motion model on {metrics['train_cycles']} cycles in {metrics['minutes']:.1f} min: "
                f"validation NLL {metrics['validation_nll']:.3f} at step {metrics['best_step']}; wrote {args.out}")

    return run_command("cvae train-motion", body)
