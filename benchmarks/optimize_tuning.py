"""How to set :class:`cvae.optimize.OptimizeSettings`: Dice, LCC, folding and seconds of candidate settings on
TRAINING pairs (never test subjects); prints a Markdown table for RESULTS.md.

Usage (the shipped checkpoint, six training pairs of the synthetic cohort spread over the five groups)::

    .venv/bin/python benchmarks/optimize_tuning.py --data data/synthetic-acdc --split training \\
        --subjects 0,50,100,150,200,223

Each row is one setting: mean Dice (%) of the five structures over the pairs, one forward pass beside the optimised
field; the pairs' mean symmetric LCC before and after; the largest folding fraction (%) of any pair; the median
seconds per pair (the optimisation alone, after one untimed warm-up pair); the mean number of steps taken. With
``--demons`` the same pairs registered by demons give a reference row. With ``--domain full`` every pair is first given
the random geometry and acquisition of training's domain randomisation (:mod:`cvae.data.randomise`; one draw per pair,
seeded by its index, labels carried by nearest neighbour): settings chosen on such pairs are chosen for images unlike
the generator's without looking at any held-out cohort.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch

from cvae.checkpoint import load_checkpoint
from cvae.data.augment import augment_batch
from cvae.data.dataset import PairDataset
from cvae.data.preprocess import PreprocessedPair
from cvae.data.randomise import WIDE_AFFINE, AcquisitionParams, randomise_acquisition
from cvae.device import resolve_device
from cvae.evaluation.metrics import mean_dice, negative_jacobian_fraction
from cvae.fields import image_tensor, warp_labels
from cvae.methods import get_method
from cvae.optimize import OptimizeSettings, register_optimized

from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script

#: The candidate settings: the number of coarse steps, the learning rate, the prior's weight, a fine level and the
#: residual's smoothing (residual_sigma=6.0: as before 2026-12-02's change; None: the model's sigma_S, 3 voxels).
CANDIDATES: tuple[OptimizeSettings, ...] = (
    OptimizeSettings(coarse_steps=10), OptimizeSettings(coarse_steps=20), OptimizeSettings(coarse_steps=40),
    OptimizeSettings(coarse_steps=20, lr=0.1), OptimizeSettings(coarse_steps=20, lr=0.4),
    OptimizeSettings(coarse_steps=20, weight=0.0), OptimizeSettings(coarse_steps=20, weight=0.5),
    OptimizeSettings(coarse_steps=20, fine_steps=10), OptimizeSettings(coarse_steps=0, fine_steps=20, coarse=1),
    OptimizeSettings(residual_sigma=None), OptimizeSettings(residual_sigma=5.0), OptimizeSettings(residual_sigma=6.0),
)


def _label(settings: OptimizeSettings) -> str:
    changed = [f"{name}={getattr(settings, name)}" for name in ("coarse_steps", "fine_steps", "lr", "weight", "coarse",
                                                                     "residual_sigma")
               if getattr(settings, name) != getattr(OptimizeSettings(), name)]
    return ", ".join(changed) or "defaults"


def randomised(pair: PreprocessedPair, seed: int) -> PreprocessedPair:
    """``pair`` with the random geometry and acquisition of ``--domain full`` drawn from ``seed``."""
    batch = {key: torch.from_numpy(np.asarray(getattr(pair, key), dtype=np.float32))[None, None]
             for key in ("fixed", "moving", "fixed_label", "moving_label")}
    generator = torch.Generator().manual_seed(seed)
    batch = randomise_acquisition(augment_batch(batch, WIDE_AFFINE, generator, tuple(pair.spacing)),
                                  AcquisitionParams(), generator)
    images = {key: batch[key][0, 0].numpy() for key in ("fixed", "moving")}
    labels = {key: batch[key][0, 0].round().numpy().astype(np.uint8) for key in ("fixed_label", "moving_label")}
    return dataclasses.replace(pair, **images, **labels)


def tuning_table(data: str, checkpoint: str, split: str, subjects: list[int], device: str, demons: bool,
                 domain: str = "off") -> str:
    model, config = load_checkpoint(checkpoint, resolve_device(device))
    dataset = PairDataset(data, split, model.config.image_size, tuple(config["spacing"]))
    if max(subjects) >= len(dataset) or min(subjects) < 0:
        raise ValueError(f"--subjects must be indices in [0, {len(dataset)}) of the {split} split")
    pairs = [dataset.pair(i) for i in subjects]
    if domain == "full":
        pairs = [randomised(pair, index) for pair, index in zip(pairs, subjects)]
    if any(p.moving_label is None or p.fixed_label is None for p in pairs):
        raise ValueError("every picked subject needs ED and ES labels")
    tensors = [(image_tensor(p.fixed).to(model.device), image_tensor(p.moving).to(model.device)) for p in pairs]

    def dice(pair, displacement: torch.Tensor) -> float:
        displacement = torch.as_tensor(displacement)
        warped = warp_labels(image_tensor(pair.moving_label).to(displacement.device), displacement)
        return 100 * mean_dice(warped[0, 0].cpu().numpy(), pair.fixed_label)

    with torch.no_grad():
        plain = [model.register(f, m, inverse=False).displacement for f, m in tensors]
    plain_dice = float(np.mean([dice(p, u) for p, u in zip(pairs, plain)]))
    register_optimized(model, *tensors[0], OptimizeSettings(coarse_steps=2), inverse=False)  # warm-up
    lines = [f"{len(pairs)} {split} pairs (indices {','.join(map(str, subjects))}, domain {domain}); one forward pass: "
             f"mean Dice {plain_dice:.2f} %.", "",
             "| setting | Dice (%) | LCC before -> after | max folding (%) | median s / pair | mean steps |",
             "|---|---|---|---|---|---|"]
    for settings in CANDIDATES:
        rows = []
        for pair, (f, m) in zip(pairs, tensors):
            start = time.perf_counter()
            result, report = register_optimized(model, f, m, settings, inverse=False)
            rows.append((dice(pair, result.displacement), float(report.lcc_before[0]), float(report.lcc_after[0]),
                         100 * negative_jacobian_fraction(result.jacobian), time.perf_counter() - start,
                         sum(report.steps)))
        a = np.asarray(rows)
        lines.append(f"| {_label(settings)} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.4f} -> {a[:, 2].mean():.4f} | "
                     f"{a[:, 3].max():.4f} | {statistics.median(a[:, 4]):.2f} | {a[:, 5].mean():.1f} |")
    if demons:
        method = get_method("demons")
        results = [method.register(image_tensor(p.fixed), image_tensor(p.moving), p.spacing) for p in pairs]
        lines.append(f"| demons (reference) | {np.mean([dice(p, r.displacement) for p, r in zip(pairs, results)]):.2f}"
                     f" | | | {statistics.median(r.seconds for r in results):.2f} | |")
    return "\n".join(lines)


def main() -> int:
    parser = report_parser(__doc__.splitlines()[0])
    parser.set_defaults(split="training")
    parser.add_argument("--subjects", default="0,50,100,150,200,223", help="indices of the split's pairs")
    parser.add_argument("--demons", action="store_true", help="add demons on the same pairs as a reference row")
    parser.add_argument("--domain", choices=("off", "full"), default="off", help="full: randomise every pair as "
                        "training's --domain full does (seeded by the pair's index)")
    args = parser.parse_args()
    subjects = [int(s) for s in args.subjects.split(",")]
    return print_report("optimize_tuning", lambda: tuning_table(args.data, args.checkpoint, args.split, subjects,
                                                                  args.device, args.demons, args.domain), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
