"""``cvae evaluate``: the paper's table (Dice, HD95, intensity error, folding, time) of registration methods on a
cohort (:func:`cvae.evaluation.evaluate.run_evaluation`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cvae.cli import run_command
from cvae.methods import METHODS
from cvae.paths import data_root, results_root

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="ACDC-layout cohort (default: $CVAE_DATA or data/synthetic-acdc)")
    parser.add_argument("--split", default="testing", choices=["training", "testing"],
                        help="which subjects (default testing)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default all; unavailable ones are "
                        "skipped with a note)")
    parser.add_argument("--out", default=None, help="output folder (default: $CVAE_RESULTS or results/)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N labelled subjects (default all)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (name or folder) of cvae and cvae-opt "
                        "(default synthetic-acdc)")
    parser.add_argument("--voxelmorph-checkpoint", default=None,
                        help="VoxelMorph checkpoint (default voxelmorph-synthetic-acdc)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N] (default auto)")
    parser.add_argument("--cache", default=None, help="preprocessed-volume cache (default $CVAE_CACHE or "
                        "~/.cache/cvae-reg)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)
    data = Path(args.data).expanduser() if args.data else data_root()
    out = Path(args.out).expanduser() if args.out else results_root()
    start = time.perf_counter()

    def body() -> str:
        from cvae.evaluation.evaluate import build_methods, run_evaluation
        methods, skipped = build_methods(args.methods.split(","), args.checkpoint, args.voxelmorph_checkpoint,
                                         args.device)
        for message in skipped:
            print(f"cvae evaluate: {message}", file=sys.stderr)
        cases, paths = run_evaluation(data, methods, out, args.split, args.limit, args.cache, skipped=skipped,
                                      progress=not args.no_progress)
        return (f"evaluated {', '.join(m.name for m in methods)} on {cases['subject'].nunique()} cases in "
                f"{time.perf_counter() - start:.1f} s; wrote {', '.join(sorted(paths))} to {out}")

    return run_command("cvae evaluate", body)
