"""Tracking and the motion model against the exact cycles of a synthetic cine cohort; prints a Markdown section.

Needs a cohort written with ``cvae synth --cine`` (the exact labels and maps of every frame) and a motion checkpoint
(``cvae train-motion``). What is measured is in :mod:`cvae.motion.evaluate`. Usage::

    .venv/bin/python benchmarks/motion_eval.py --data data/synthetic-cine --motion checkpoints/motion-synthetic-acdc \
        [--limit 40] [--csv results/motion/cases.csv]
"""
from __future__ import annotations

import shlex
import sys
import time

import numpy as np
import pandas as pd

from cvae.checkpoint import load_checkpoint
from cvae.data.acdc import find_subjects
from cvae.data.cycle_truth import load_cycle_truth
from cvae.data.volumes import load_cine, load_label
from cvae.motion.cycle import load_motion_model
from cvae.motion.evaluate import evaluate_cycle
from cvae.motion.track import track_cine

from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script

#: LVEF (%) range of each group in the generator's definitions (cvae.data.synthetic's table).
GROUP_LVEF = {"NOR": (56, 70), "DCM": (14, 34), "HCM": (64, 80), "MINF": (18, 36), "RV": (54, 66)}


def rows(args) -> pd.DataFrame:
    registration, config = load_checkpoint(args.checkpoint, args.device)
    motion, _ = load_motion_model(args.motion, "cpu")
    spacing = tuple(config["spacing"])
    subjects = [s for s in find_subjects(args.data, args.split) if (s.directory / f"{s.subject}_4d.nii.gz").is_file()]
    if not subjects:
        raise ValueError(f"no cine under {args.data}/{args.split}: write the cohort with `cvae synth --cine`")
    out = []
    for info in subjects[args.skip:][:args.limit]:
        start = time.perf_counter()
        cine, affine, _, frame_ms = load_cine(info.directory / f"{info.subject}_4d.nii.gz")
        ed_label = load_label(info.ed_label)[0]
        truth_labels, truth_fields = load_cycle_truth(info.directory)
        tracked_at = time.perf_counter()
        tracking = track_cine(registration, cine, affine, spacing, info.ed_frame, ed_label, frame_ms,
                              batch_size=8, carry_labels=False, keep_fields=True)
        seconds = time.perf_counter() - tracked_at
        row = evaluate_cycle(registration, motion, tracking, affine, ed_label, truth_labels, truth_fields,
                             info.es_frame, spacing)
        low, high = GROUP_LVEF[info.group]
        row.update(subject=info.subject, group=info.group, track_seconds=seconds,
                   simulated_in_group=float(low - 5 <= row["simulated_LVEF"] <= high + 5),
                   seconds=time.perf_counter() - start)
        out.append(row)
        print(f"{info.subject} {info.group}: {row['track_EPE_mm']:.2f} mm, done in {row['seconds']:.0f} s",
              file=sys.stderr)
    return pd.DataFrame(out)


def report(table: pd.DataFrame, command: str) -> str:
    n = len(table)
    share = lambda mask: f"{100 * float(np.mean(mask)):.0f} % ({int(np.sum(mask))}/{n})"  # noqa: E731
    lines = [f"Command: `{command}`", "", f"{n} subjects.", "",
             "| tracking | EPE (mm) | ES within +-1 | abs. LVEF error vs true (mean) | within 5 points | "
             "LV curve roughness (mL) | max folding (%) |", "|---|---|---|---|---|---|---|"]
    for name, label in (("track", "pairwise ED -> t"), ("smooth", "with the motion model")):
        error = (table[f"{name}_LVEF"] - table["true_LVEF"]).abs()
        lines.append(f"| {label} | {table[f'{name}_EPE_mm'].mean():.3f} | {share(table[f'{name}_ES_off'] <= 1)} | "
                     f"{error.mean():.1f} | {share(error <= 5)} | {table[f'{name}_roughness_ml'].mean():.2f} | "
                     f"{table[f'{name}_folding_percent'].max():.3f} |")
    lines.append(f"| truth | 0 | | | | {table['true_roughness_ml'].mean():.2f} | |")
    lines += ["", "Interpolation, every second frame hidden (ED observed); errors on the hidden frames:", "",
              "| method | EPE (mm) | image RMSE |", "|---|---|---|"]
    for name, label in (("model", "motion model"), ("linear", "linear in time"), ("cubic", "cubic (periodic)"),
                        ("pairwise", "pairwise registration of the hidden frame (sees it)")):
        lines.append(f"| {label} | {table[f'interp_{name}_EPE_mm'].mean():.3f} | "
                     f"{table[f'interp_{name}_image_rmse'].mean():.4f} |")
    lines += ["", "Simulation from the ED frame alone (3 cycles per subject), LVEF (%) by group:", "",
              "| group | n | true LVEF | tracked LVEF | simulated LVEF (mean, min-max) | in the group's range +-5 |",
              "|---|---|---|---|---|---|"]
    for group, part in table.groupby("group", sort=False):
        lines.append(f"| {group} | {len(part)} | {part['true_LVEF'].mean():.1f} | {part['track_LVEF'].mean():.1f} | "
                     f"{part['simulated_LVEF'].mean():.1f} ({part['simulated_LVEF_min'].min():.1f}-"
                     f"{part['simulated_LVEF_max'].max():.1f}) | {100 * part['simulated_in_group'].mean():.0f} % |")
    lines += ["", f"Tracking time per cycle (model, batched 8 frames): median {table['track_seconds'].median():.2f} s "
              f"for a median of {int(table['frames'].median())} frames."]
    return "\n".join(lines)


def main() -> int:
    parser = report_parser(__doc__.split("\n")[0])
    parser.add_argument("--motion", default="motion-synthetic-acdc", help="motion checkpoint name or folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects with a cine")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N subjects with a cine (to share the "
                        "cohort between processes)")
    parser.add_argument("--csv", default=None, help="also write the per-subject table")
    parser.add_argument("--from-csv", nargs="+", default=None, help="report on these per-subject tables instead of "
                        "measuring")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    def make() -> str:
        table = pd.concat([pd.read_csv(p) for p in args.from_csv]) if args.from_csv else rows(args)
        if args.csv:
            table.to_csv(args.csv, index=False)
        return report(table, command)

    return print_report("motion_eval", make, args.out)


if __name__ == "__main__":
    sys.exit(main())
