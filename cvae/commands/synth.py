"""``cvae synth``: write a synthetic cohort in the ACDC layout, from the training generator
(:mod:`cvae.data.synthetic`, the default) or from the independent held-out one (:mod:`cvae.data.foreign`,
``--style foreign``)."""
from __future__ import annotations

import argparse
import time

from cvae.cli import run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (ACDC layout: training/, testing/; created)")
    parser.add_argument("--n-train", type=int, default=234, help="training subjects (default 234, as the paper)")
    parser.add_argument("--n-test", type=int, default=100, help="testing subjects (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cine", action="store_true", help="also write the cine patientNNN_4d.nii.gz with the exact "
                        "labels and maps of every frame (slower; either style)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default all CPUs)")
    parser.add_argument("--splits", nargs="+", choices=("training", "testing"), default=("training", "testing"),
                        help="write only these splits, each exactly as in the whole cohort (default both)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--style", choices=("acdc", "foreign"), default="acdc",
                        help="acdc: this generator (default); foreign: the independent held-out phantom generator "
                             "of cvae.data.foreign (never train or tune on it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``cvae synth``: write a cohort of either generator. Exit 0 on success, 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()

    counts = {"training": args.n_train, "testing": args.n_test}
    written = " + ".join(f"{counts[s]} {s}" for s in ("training", "testing") if s in args.splits)

    def body() -> str:
        from tqdm import tqdm
        with tqdm(desc=f"cvae synth ({args.style})", unit="subject", disable=args.no_progress, delay=1.0,
                  dynamic_ncols=True) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            if args.style == "foreign":
                from cvae.data.foreign import make_foreign_cohort
                out = make_foreign_cohort(args.out, args.n_train, args.n_test, args.seed, args.workers, progress,
                                          args.splits, args.cine)
                return (f"wrote {written} foreign (held-out) subjects to {out} in "
                        f"{time.perf_counter() - start:.1f} s")
            from cvae.data.synthetic import make_cohort
            out = make_cohort(args.out, args.n_train, args.n_test, args.seed, args.cine, args.workers, progress,
                              args.splits)
        return f"wrote {written} subjects to {out} in {time.perf_counter() - start:.1f} s"

    return run_command("cvae synth", body)
