"""Merge the ``cases.csv`` of several ``cvae evaluate`` runs into one summary (tables and box plots).

Demons takes ~15 s per case on one core, so it is run once and the learnt methods, re-trained more often, in their own
runs; this puts them in one table. A method present in several runs is taken from the first run that has it. Only
subjects present in every run are kept, so that every method is scored on the same cases.

    python benchmarks/merge_evaluations.py results/full results/demons-full --out results/final
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cvae.evaluation.evaluate import write_results


def merge(folders: list[Path]) -> pd.DataFrame:
    """The rows of every run's ``cases.csv``, each method from the first run that has it, common subjects only."""
    parts, seen = [], set()
    for folder in folders:
        path = folder / "cases.csv"
        if not path.is_file():
            raise ValueError(f"{path} not found: give folders written by `cvae evaluate`")
        cases = pd.read_csv(path, dtype={"subject": str})
        new = cases[~cases["method"].isin(seen)]
        seen |= set(new["method"])
        parts.append(new)
    common = set.intersection(*(set(p["subject"]) for p in parts if not p.empty))
    merged = pd.concat(parts, ignore_index=True)
    return merged[merged["subject"].isin(common)].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of `cvae evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged tables and plots")
    args = parser.parse_args(argv)
    try:
        cases = merge(args.runs)
    except ValueError as exc:
        print(f"merge_evaluations: error: {exc}", file=sys.stderr)
        return 2
    notes = [f"merged from {', '.join(str(r) for r in args.runs)}: {cases['subject'].nunique()} common cases; "
             "each method's time per case was measured in its own run"]
    write_results(cases, args.out, "Registration evaluation", notes)
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
