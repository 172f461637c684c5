"""The ceiling of the transport claims' LVEF measure, on the synthetic cohort; prints a Markdown section.

The transport and sampling checks (``latent_claims.py``) measure the LVEF of a simulated ES: the ED labels warped
(nearest) by a transform on the model's 1.5 x 1.5 x 3.15 mm crop grid. On thick slices that measure is biased even
for a perfect transform. The synthetic cohort ships the exact ED -> ES transform of every subject
(``*_gt_displacement.nii.gz``), so per group this gives:
- the true LVEF (from the ES labels);
- the LVEF of the ED labels warped by the exact transform, which is the best any registration can score;
- the LVEF of the checkpoint's own registration of each pair (optionally with MAP-refined codes).

Usage::

    .venv/bin/python benchmarks/lvef_ceiling.py --data data/synthetic-acdc --checkpoint synthetic-acdc
"""
from __future__ import annotations

import shlex
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cvae.checkpoint import load_checkpoint
from cvae.data.acdc import SubjectInfo
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SPACING
from cvae.data.preprocess import PreprocessedPair, displacement_to_crop_grid
from cvae.evaluation.clinical import clinical_measures
from cvae.latent import as_image, group_order, simulated_es_measures
from cvae.latent.refine import DEFAULT_LR, register_refined

from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script

#: The transport claims' LVEF thresholds (%).
HIGH, LOW = 50.0, 40.0


def exact_displacement(info: SubjectInfo, pair: PreprocessedPair) -> torch.Tensor:
    """The synthetic cohort's exact ED -> ES transform of a subject on its crop grid, ``(1, 3, X, Y, Z)`` voxels;
    ``ValueError`` when the subject has none (real ACDC)."""
    path = info.directory / f"{info.subject}_gt_displacement.nii.gz"
    if not path.is_file():
        raise ValueError(f"{path} not found: this check needs the synthetic cohort (cvae synth --out DIR)")
    truth = nib.load(path).get_fdata(dtype=np.float32)
    return torch.from_numpy(displacement_to_crop_grid(truth, pair))[None]


def lvef_table(model, dataset: PairDataset, refine_steps: int = 0, refine_lr: float = DEFAULT_LR) -> pd.DataFrame:
    """One row per labelled subject: ``subject, group``, ``true`` (ES labels), ``exact`` (ED labels warped by the
    exact transform) and ``checkpoint`` (warped by the model's registration) LVEFs in %."""
    rows = []
    for i, info in enumerate(dataset.infos):
        pair = dataset.pair(i)
        if pair.moving_label is None or pair.fixed_label is None:
            continue
        fixed, moving = as_image(pair.fixed, model, "fixed"), as_image(pair.moving, model, "moving")
        label = as_image(pair.moving_label, model, "moving_label")
        if refine_steps:
            result = register_refined(model, fixed, moving, refine_steps, refine_lr, inverse=False)[0]
        else:
            with torch.no_grad():
                result = model.register(fixed, moving, inverse=False)
        exact = exact_displacement(info, pair).to(model.device)
        lvef = {name: float(simulated_es_measures(label, u, pair.spacing)["LVEF"].iloc[0])
                for name, u in (("exact", exact), ("checkpoint", result.displacement))}
        true = clinical_measures(pair.moving_label, pair.fixed_label, pair.spacing)["LVEF"]
        rows.append({"subject": info.subject, "group": info.group, "true": float(true), **lvef})
    if not rows:
        raise ValueError(f"no labelled subjects in {dataset.root}")
    return pd.DataFrame(rows)


def report(argv: list[str], split: str, table: pd.DataFrame, seconds: float) -> str:
    lines = ["### The ceiling of the simulated-ES LVEF", "",
             f"`{' '.join(['python', 'benchmarks/lvef_ceiling.py', *map(shlex.quote, argv)])}` "
             f"({len(table)} subjects of `{split}`, {seconds:.0f} s).", "",
             "| group | n | true LVEF | exact transform | checkpoint | "
             f"> {HIGH:.0f} %: true / exact / checkpoint | < {LOW:.0f} %: true / exact / checkpoint |",
             "|---|---|---|---|---|---|---|"]
    columns = ("true", "exact", "checkpoint")
    for group in group_order(table["group"]):
        part = table[table["group"] == group]
        mean = {c: part[c].mean() for c in columns}
        high = " / ".join(str(int((part[c] > HIGH).sum())) for c in columns)
        low = " / ".join(str(int((part[c] < LOW).sum())) for c in columns)
        lines.append(f"| {group} | {len(part)} | {mean['true']:.1f} | {mean['exact']:.1f} "
                     f"({mean['exact'] - mean['true']:+.1f}) | {mean['checkpoint']:.1f} "
                     f"({mean['checkpoint'] - mean['true']:+.1f}) | {high} | {low} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = report_parser(__doc__.split("\n")[0])
    parser.add_argument("--refine-steps", type=int, default=0, help="MAP-refine each pair's code first (default 0)")
    args = parser.parse_args(argv)

    def make_text() -> str:
        start = time.perf_counter()
        model, config = load_checkpoint(args.checkpoint, args.device)
        dataset = PairDataset(args.data, split=args.split, size=model.config.image_size,
                              spacing=config.get("spacing", DEFAULT_SPACING))
        table = lvef_table(model, dataset, args.refine_steps)
        return report(sys.argv[1:] if argv is None else argv, args.split, table, time.perf_counter() - start)

    return print_report("lvef_ceiling", make_text, args.out)

if __name__ == "__main__":
    raise SystemExit(main())
