"""Seconds per training step in the real loop against the forward + backward micro-benchmark (issue 17, item 3).

Usage (the shipped model's architecture and grid; the training split of the synthetic cohort)::

    .venv/bin/python benchmarks/loop_speed.py --data data/synthetic-acdc --split training --steps 40 --threads 2

Both use the same model (the checkpoint's weights and settings), the same objective (:class:`Objective`, KL at full
weight) and the same number of threads:

* **micro-benchmark**: forward + backward of one preprocessed pair already in memory, ``--repeats`` times after a
  warm-up; the median;
* **in the loop**: :func:`cvae.training.loop.fit` for ``--steps`` steps as ``cvae adapt`` and ``cvae train`` run it
  (sample order, loading the cached pair, augmentation, forward, backward, Adam, the log line), the cohort
  preprocessed before; the median of the seconds per step the loop logs, the first step left out, and the wall-clock
  seconds of the whole loop divided by its steps (saves of ``last/`` and the log included).

Prints a Markdown table: both medians, their ratio (target <= 1.3) and the loop's steps per minute.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvae.checkpoint import load_checkpoint
from cvae.data.dataset import PairDataset
from cvae.device import resolve_device
from cvae.training.config import RunConfig
from cvae.training.loop import HeldOut, RunState, fit
from cvae.training.objective import Objective

from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script
from timing import timed


def loop_speed(data: str, checkpoint: str, split: str, device: str, steps: int, repeats: int, threads: int,
               subjects: int) -> str:
    torch.set_num_threads(threads)
    model, config = load_checkpoint(checkpoint, resolve_device(device))
    spacing = tuple(float(s) for s in config["spacing"])
    dataset = PairDataset(data, split, model.config.image_size, spacing)
    dataset.infos = dataset.infos[:subjects]
    dataset.prepare(workers=threads)
    model.train()
    objective = Objective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    item = dataset[0]
    fixed, moving = item["fixed"][None].to(model.device), item["moving"][None].to(model.device)

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective(fixed, moving)["loss"].backward()

    micro, micro_min = timed(forward_backward, repeats)
    with tempfile.TemporaryDirectory() as folder:
        cfg = RunConfig(data=data, out=folder, steps=steps, spacing=spacing, val_every=steps, save_every=steps,
                        threads=threads)
        tic = time.perf_counter()
        with open(Path(folder) / "log.jsonl", "w") as log:
            fit(objective, model, optimizer, HeldOut(dataset, list(range(len(dataset))), []), cfg, RunState(),
                lambda state, name, metrics=None: None, log, model.device)
        wall = time.perf_counter() - tic
        seconds = [json.loads(line)["sec"] for line in (Path(folder) / "log.jsonl").read_text().splitlines()]
    loop = statistics.median(seconds[1:])
    return "\n".join([
        f"{steps} steps of batch 1 on {len(dataset)} cached {split} pairs of `{data}`, checkpoint `{checkpoint}` "
        f"({model.config.image_size[0]} x {model.config.image_size[1]} x {model.config.image_size[2]} voxels), "
        f"{threads} thread(s), augmentation on.", "",
        "| measure | seconds per step |", "|---|---|",
        f"| forward + backward, pair in memory (median of {repeats}; min {micro_min:.3f}) | {micro:.3f} |",
        f"| in the loop: load, augment, forward, backward, Adam, log (median of steps 2-{steps}) | {loop:.3f} |",
        f"| in the loop: wall clock of the whole loop / steps | {wall / steps:.3f} |", "",
        f"Ratio loop / micro-benchmark: **{loop / micro:.2f}** (target <= 1.3); {60 / loop:.0f} steps per minute.",
    ])


def main() -> int:
    parser = report_parser(__doc__.splitlines()[0])
    parser.set_defaults(split="training")
    parser.add_argument("--steps", type=int, default=40, help="steps of the loop")
    parser.add_argument("--repeats", type=int, default=20, help="runs of the micro-benchmark")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--subjects", type=int, default=20, help="the first N subjects of the split")
    args = parser.parse_args()
    if min(args.steps, args.repeats, args.subjects) < 2 or args.threads < 1:
        print("loop_speed: error: --steps, --repeats and --subjects must be >= 2, --threads >= 1", file=sys.stderr)
        return 2
    return print_report("loop_speed", lambda: loop_speed(args.data, args.checkpoint, args.split, args.device,
                                                         args.steps, args.repeats, args.threads, args.subjects),
                        args.out)


if __name__ == "__main__":
    raise SystemExit(main())
