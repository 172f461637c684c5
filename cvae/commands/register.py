"""``cvae register``: register two NIfTI images and write the warped image, the fields and the metrics
(:func:`cvae.io.register.register_files`), or many pairs listed in a CSV file (:func:`cvae.io.pairs.register_pairs`)."""
from __future__ import annotations

import argparse
import time

from cvae.cli import run_command
from cvae.data.limits import ENV_MAX_VOXELS, MAX_VOXELS
from cvae.optimize_settings import OptimizeSettings

__all__ = ["main", "own_process", "optimize_steps"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae register", description=__doc__.split("\n")[0])
    parser.add_argument("--fixed", help="fixed image (NIfTI, 3-D), e.g. the ES frame")
    parser.add_argument("--moving", help="moving image (NIfTI, 3-D), e.g. the ED frame")
    parser.add_argument("--pairs", help="instead of --fixed/--moving: a CSV file with columns fixed, moving "
                        "(optional fixed_seg, moving_seg, name), one pair per row; one model load for all, each "
                        "pair's outputs in OUT/<name>/, a summary in OUT/pairs.csv")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or one an earlier cvae register "
                        "wrote (its outputs are replaced)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder holding other files, "
                        "replacing only those named like the outputs")
    parser.add_argument("--fixed-seg", help="segmentation of the fixed image (ACDC labels 0-3), for Dice/HD95")
    parser.add_argument("--moving-seg", help="segmentation of the moving image, warped to warped_seg.nii.gz")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="checkpoint name or folder (default "
                        "synthetic-acdc)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N] (default auto)")
    parser.add_argument("--refine-steps", type=int, default=0, help="refine the pair's code by N gradient steps "
                        "before decoding (default 0: one forward pass; 20 is a good start, about 0.5 s each on a CPU)")
    parser.add_argument("--optimize", action="store_true", help="optimise the velocity on the pair after the "
                        f"forward pass (test-time optimisation, {OptimizeSettings().coarse_steps} steps at most; "
                        "seconds on a CPU; the result stays a diffeomorphism)")
    parser.add_argument("--optimize-steps", type=int, default=None, help="with --optimize, at most this many steps "
                        f"(default {OptimizeSettings().coarse_steps}; implies --optimize)")
    parser.add_argument("--max-voxels", type=int, default=None, help="refuse volumes larger than this many voxels, "
                        f"read from their headers (default ${ENV_MAX_VOXELS} or {MAX_VOXELS:,})")
    return parser


def own_process() -> None:
    """The console script's process, before NumPy and torch are imported: freed volumes are kept for the next ones
    and NumPy's BLAS stays on one thread (:mod:`cvae.process`); 0.2-0.3 s less on 2 cores, the same outputs."""
    from cvae.process import keep_freed_memory, single_threaded_blas
    keep_freed_memory()
    single_threaded_blas()


def optimize_steps(optimize: bool, steps: int | None) -> int:
    """The velocity optimisation steps of the command line: 0 without ``--optimize`` or ``--optimize-steps``."""
    if steps is not None:
        return steps
    return OptimizeSettings().coarse_steps if optimize else 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 with a one-line message on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    one_pair = args.fixed is not None or args.moving is not None
    if (args.pairs is not None) == one_pair or (one_pair and (args.fixed is None or args.moving is None)):
        parser.error("give --fixed and --moving, or --pairs (a CSV file of pairs), not both")
    if args.pairs and (args.fixed_seg or args.moving_seg):
        parser.error("with --pairs, give the segmentations in the CSV's fixed_seg and moving_seg columns")
    if args.pairs:
        return run_command("cvae register", lambda: _register_pairs(args))

    def body() -> str:
        from cvae.io.register import register_files
        metrics = register_files(args.fixed, args.moving, args.out, args.checkpoint, args.fixed_seg,
                                 args.moving_seg, args.device, args.refine_steps, args.max_voxels, args.overwrite,
                                 optimize_steps(args.optimize, args.optimize_steps))
        line = (f"wrote {len(metrics['outputs'])} files to {args.out} in {metrics['seconds']['total']:.1f} s "
                f"(registration {metrics['seconds']['registration']:.2f} s); "
                f"folding {100 * metrics['negative_jacobian_fraction']:.3f} %")
        seg = metrics.get("segmentation")
        if seg and seg["dice_mean"] is not None:
            line += f"; mean Dice {seg['dice_mean']:.3f} (unregistered {seg['dice_unregistered_mean']:.3f})"
        return line

    return run_command("cvae register", body)


def _register_pairs(args: argparse.Namespace) -> str:
    from cvae.io.pairs import register_pairs
    start = time.perf_counter()
    rows = register_pairs(args.pairs, args.out, args.checkpoint, args.device, args.refine_steps, args.max_voxels,
                          args.overwrite, optimize_steps(args.optimize, args.optimize_steps))
    failed = [row for row in rows if row["status"] != "ok"]
    done = f"{len(rows) - len(failed)} of {len(rows)} pairs in {time.perf_counter() - start:.1f} s"
    if failed:
        raise ValueError(f"registered {done}; {len(failed)} failed, first {failed[0]['name']}: {failed[0]['error']} "
                         f"(see {args.out}/pairs.csv)")
    return f"registered {done}; outputs in {args.out}/<name>/, summary in {args.out}/pairs.csv"
