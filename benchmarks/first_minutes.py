"""What a newcomer waits for, as whole processes (issue 19): `cvae --help`, every `cvae COMMAND --help`,
`cvae register` on one pair, `cvae register --pairs` on several, and `cvae synth` of 100 subjects.

Usage::

    .venv/bin/python benchmarks/first_minutes.py --data data/synthetic-acdc --runs 5 --synth-runs 3

Every figure is the median (and the range) over ``--runs`` fresh processes of the installed ``cvae`` entry point,
after one warm-up run (the operating system's file cache is warm, as for a user's second command); beside the wall
time, the CPU time (user + system, all threads and child processes), which other work on the machine disturbs less,
and the load averages before and after, to judge how idle the machine was. `cvae register`
registers the first test subject's ED frame to its ES frame with both segmentations, on the CPU, into a new folder
each time; its `metrics.json` splits the time inside the process (preprocessing, registration, resampling, writing),
the rest is start-up (Python, imports, the checkpoint). `cvae synth` writes the 100 subjects of the test split
(`--splits testing`) of the default cohort on all cores. Prints a Markdown table.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cvae.cli import COMMANDS
from cvae.data.acdc import find_subjects
from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script

CVAE = str(Path(sys.executable).with_name("cvae"))
TIME = "/usr/bin/time"  # GNU time: the peak resident memory and the CPU time of the child

#: Per run: wall seconds, CPU seconds (user + system), peak resident memory (MB).
Runs = tuple[list[float], list[float], list[float]]


def _wall(argv: list[str], runs: int, before: Callable[[int], None] | None = None) -> Runs:
    """Wall and CPU seconds and peak memory (MB, resident) of ``runs`` fresh processes of ``argv`` after a warm-up
    run; ``before(k)`` prepares run ``k``."""
    seconds, cpu, memory = [], [], []
    for k in range(runs + 1):
        if before is not None:
            before(k)
        tic = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M %U %S", *argv], capture_output=True, text=True)
        elapsed = time.perf_counter() - tic
        if proc.returncode != 0:
            raise ValueError(f"{' '.join(argv[:2])} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        if k:  # run 0 warms the caches
            peak, user, system = proc.stderr.strip().splitlines()[-1].split()
            seconds.append(elapsed)
            cpu.append(float(user) + float(system))
            memory.append(int(peak) / 1024)
    return seconds, cpu, memory


def _row(name: str, measured: Runs, note: str = "") -> str:
    seconds, cpu, memory = measured
    return (f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f}-{max(seconds):.2f} | "
            f"{statistics.median(cpu):.2f} | {statistics.median(memory):.0f} | {len(seconds)} | {note} |")


def _load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def report(data: str, runs: int, synth_runs: int) -> str:
    subject = find_subjects(data, "testing")[0]
    scratch = Path(tempfile.mkdtemp(prefix="first-minutes-"))
    load_before = _load()
    lines = ["| command | median (s) | range (s) | CPU, median (s) | peak memory (MB) | runs | note |",
             "|---|---|---|---|---|---|---|"]
    lines.append(_row("`cvae --help`", _wall([CVAE, "--help"], runs)))
    helps = {name: _wall([CVAE, name, "--help"], runs) for name in COMMANDS}
    slowest = max(helps, key=lambda n: statistics.median(helps[n][0]))
    lines.append(_row(f"`cvae COMMAND --help`, slowest ({slowest})", helps[slowest],
                      ", ".join(f"{n} {statistics.median(s):.2f}" for n, (s, _, _) in helps.items())))
    pair = ["--fixed", str(subject.es_image), "--moving", str(subject.ed_image), "--fixed-seg", str(subject.es_label),
            "--moving-seg", str(subject.ed_label), "--device", "cpu"]
    one = _wall([CVAE, "register", *pair, "--out", str(scratch / "one")], runs,
                before=lambda k: _clear(scratch / "one"))
    inside = json.loads((scratch / "one" / "metrics.json").read_text())["seconds"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in inside.items() if k != "total")
    lines.append(_row("`cvae register` (one pair, with segmentations)", one,
                      f"inside the process (last run): {parts}; start-up and imports: the rest"))
    n_pairs = 10
    rows = ["name,fixed,moving,fixed_seg,moving_seg"]
    for k, info in enumerate(find_subjects(data, "testing")[:n_pairs]):
        rows.append(f"p{k},{info.es_image},{info.ed_image},{info.es_label},{info.ed_label}")
    (scratch / "pairs.csv").write_text("\n".join(rows) + "\n")
    many = _wall([CVAE, "register", "--pairs", str(scratch / "pairs.csv"), "--device", "cpu", "--out",
                  str(scratch / "many")], max(1, runs // 2), before=lambda k: _clear(scratch / "many"))
    lines.append(_row(f"`cvae register --pairs` ({n_pairs} pairs)", many,
                      f"{statistics.median(many[0]) / n_pairs:.2f} s per pair"))
    if synth_runs:
        synth = _wall([CVAE, "synth", "--out", str(scratch / "cohort"), "--splits", "testing", "--no-progress"],
                      synth_runs, before=lambda k: _clear(scratch / "cohort"))
        lines.append(_row("`cvae synth --splits testing` (100 subjects)", synth,
                          f"{os.cpu_count()} workers; memory: the largest process"))
    _clear(scratch)
    lines.append(f"\nLoad averages (1 / 5 / 15 min): {load_before} before, {_load()} after.")
    return "\n".join(lines)


def _clear(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)


def main() -> int:
    parser = report_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command (after a warm-up)")
    parser.add_argument("--synth-runs", type=int, default=3, help="runs of cvae synth (0: skip it)")
    args = parser.parse_args()
    return print_report("first_minutes", lambda: report(args.data, args.runs, args.synth_runs), args.out)


if __name__ == "__main__":
    sys.exit(main())
