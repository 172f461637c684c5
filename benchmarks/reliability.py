"""Hostile-input and interruption cases of the command line, run for real; prints a Markdown table.

Every case runs the real ``cvae`` command in a subprocess (or, for the app's upload path, the function the page calls)
on a tiny synthetic cohort, a tiny random checkpoint and hand-made NIfTI files in a scratch folder, and checks what a
user is promised (``docs/DESIGN.md``, section 10): one line on stderr, the conventional exit code (0 done, 2 bad
input, 130 Ctrl-C, 143 SIGTERM), no temporary files left, nothing of the user's lost, a resume that never restarts
silently. Usage::

    .venv/bin/python benchmarks/reliability.py [--out table.md]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from cvae.checkpoint import save_checkpoint
from cvae.data.synthetic import make_cohort
from cvae.io.uploads import Upload, UploadError, stage_uploads
from cvae.model import CVAERegistration, ModelConfig

TINY = ["--image-size", "32", "32", "16", "--spacing", "6", "6", "6.3", "--sigma-smooth", "1.5", "--kernel-smooth",
        "9", "--encoder-channels", "8", "8", "8", "4", "--decoder-channels", "8", "8", "4", "--head-channels", "4",
        "--threads", "1", "--device", "cpu", "--val-subjects", "1"]


class Scratch:
    """The scratch folder: a tiny cohort, a tiny checkpoint, NIfTI files, and a runner of ``cvae`` commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cohort = make_cohort(root / "cohort", n_train=3, n_test=2, seed=3, workers=1)
        torch.manual_seed(0)
        self.checkpoint = save_checkpoint(root / "tiny", CVAERegistration(ModelConfig(
            image_size=(32, 32, 16), encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
            kernel_smooth=9, sigma_smooth=1.5)), spacing=(6.0, 6.0, 6.3))
        subject = sorted((self.cohort / "testing").iterdir())[0]
        frames = sorted(p for p in subject.glob("*_frame??.nii.gz"))
        self.fixed, self.moving = frames[1], frames[0]

    def large_pair(self) -> tuple[Path, Path]:
        """The cohort's test pair resampled to 256 x 256 x 100 voxels (6.6 M): a registration that takes seconds."""
        from scipy import ndimage

        paths = []
        for name, frame in (("large-fixed", self.fixed), ("large-moving", self.moving)):
            image = nib.load(frame)
            zoom = [n / m for n, m in zip((256, 256, 100), image.shape)]
            data = ndimage.zoom(image.get_fdata().astype(np.float32), zoom, order=1)
            paths.append(self.root / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(data, image.affine @ np.diag([*(1 / z for z in zoom), 1.0])), paths[-1])
        return paths[0], paths[1]

    def run(self, *args: str, wait: float | None = None, send: int | None = None,
            ready: Callable[[], bool] | None = None) -> tuple[int, list[str], float]:
        """``cvae ARGS``: ``(exit code, stderr lines without progress bars, seconds)``; with ``send``, that signal is
        sent once ``ready()`` holds (or after ``wait`` seconds)."""
        env = {**os.environ, "CVAE_CACHE": str(self.root / "cache"), "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cvae.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            if send is not None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    if (ready is not None and ready()) or (ready is None and time.perf_counter() - start > wait):
                        proc.send_signal(send)
                        break
                    time.sleep(0.2)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "step/s" not in line
                 and "subject/s" not in line and "|" not in line]
        return proc.returncode, lines, time.perf_counter() - start

    def train(self, out: Path, *extra: str, **signal_at: object) -> tuple[int, list[str], float]:
        """``cvae train`` of the tiny model on the tiny cohort into ``out``; ``signal_at``: see :meth:`run`."""
        return self.run("train", "--data", str(self.cohort), "--out", str(out), "--cache-dir",
                        str(self.root / "cache"), *TINY, *extra, **signal_at)

    def register(self, out: Path, *extra: str, fixed: Path | None = None, moving: Path | None = None,
                 **signal_at: object) -> tuple[int, list[str], float]:
        """``cvae register`` with the tiny checkpoint (the cohort's test pair unless ``fixed`` / ``moving``)."""
        return self.run("register", "--fixed", str(fixed or self.fixed), "--moving", str(moving or self.moving),
                        "--out", str(out), "--checkpoint", str(self.checkpoint), "--device", "cpu", *extra,
                        **signal_at)


def nifti(path: Path, shape: tuple[int, ...], datatype: int | None = None, header_dims: tuple[int, ...] | None = None,
          keep: int | None = None) -> Path:
    """A small NIfTI file, optionally with its header's datatype code or dimensions overwritten and its bytes cut."""
    raw = bytearray(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4)).to_bytes())
    if datatype is not None:
        struct.pack_into("<h", raw, 70, datatype)
    if header_dims is not None:
        struct.pack_into("<8h", raw, 40, len(header_dims), *header_dims, *([1] * (7 - len(header_dims))))
    path.write_bytes(bytes(raw[:keep] if keep else raw))
    return path


def one_line(code: int, lines: list[str], expected: int, prefix: str) -> bool:
    return code == expected and len(lines) == 1 and lines[0].startswith(prefix)


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*tmp-*")) + sorted(p.name for p in folder.glob(".*.old"))


def cases(s: Scratch) -> list[tuple[str, str, str, bool]]:
    """``(case, promised, observed, kept)`` rows."""
    rows = []

    def row(case: str, promised: str, observed: str, ok: bool) -> None:
        rows.append((case, promised, observed, ok))
        print(("ok  " if ok else "FAIL") + f"  {case}: {observed}", file=sys.stderr)

    # ---- training: resume and interruptions
    run = s.root / "run"
    s.train(run, "--steps", "4", "--save-every", "2", "--val-every", "2")
    shutil.copytree(run / "last", s.root / "step4")
    s.train(run, "--steps", "6", "--save-every", "2", "--val-every", "2", "--resume")
    os.replace(run / "last", run / ".last.tmp-killed")
    shutil.copytree(s.root / "step4", run / ".last.old")
    code, lines, _ = s.train(run, "--steps", "7", "--save-every", "2", "--val-every", "2", "--resume")
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    row("training killed between the two renames of a save (no last/, .last.old at step 4, complete .last.tmp-* at "
        "step 6)", "--resume continues from the newest complete one", f"exit {code}, logged steps {steps}, leftovers "
        f"{debris(run)}", code == 0 and steps == list(range(1, 8)) and not debris(run))

    (run / ".last.tmp-sigkill").mkdir()
    (run / ".last.tmp-sigkill" / "model.safetensors").write_bytes(b"half")
    code, _, _ = s.train(run, "--steps", "8", "--save-every", "2", "--val-every", "2", "--resume")
    row("a save killed by SIGKILL leaves .last.tmp-*", "swept at the next save", f"exit {code}, leftovers "
        f"{debris(run)}", code == 0 and not debris(run))

    before = sorted(p.name for p in run.iterdir())
    shutil.rmtree(run / "last")
    listing = sorted(p.name for p in run.iterdir())
    code, lines, _ = s.train(run, "--steps", "9", "--resume")
    row("--resume of a run folder that holds a run but no loadable checkpoint", "one line, exit 2, nothing changed",
        f"exit {code}: {lines[-1] if lines else ''}", one_line(code, lines, 2, "cvae train: error: --resume")
        and sorted(p.name for p in run.iterdir()) == listing and len(before) > len(listing))
    code, lines, _ = s.train(run, "--steps", "9")
    row("a new run into a folder that holds a run", "one line, exit 2, nothing changed", f"exit {code}",
        one_line(code, lines, 2, "cvae train: error: --out"))

    for signum, expected in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = s.root / f"run-{signum}"
        log = out / "log.jsonl"
        code, lines, _ = s.train(out, "--steps", "100000", "--save-every", "1000", "--val-every", "1000",
                                 send=signum, ready=lambda log=log: log.is_file() and log.stat().st_size > 2000)
        step = json.loads((out / "last" / "trainer.json").read_text())["step"] if (out / "last").is_dir() else None
        row(f"{signal.Signals(signum).name} during training", f"saves last/, one line, exit {expected}",
            f"exit {code}, last/ at step {step}: {lines[-1] if lines else ''}",
            one_line(code, lines[-1:], expected, "cvae train: ") and f"at step {step} " in lines[-1]
            and not debris(out))

    for flags, name in ((["--batch-size", "0"], "--batch-size 0"), (["--save-every", "0"], "--save-every 0"),
                        (["--steps", "-5"], "--steps -5"), (["--lam", "-1"], "--lam -1"),
                        (["--kernel-lcc", "4"], "--kernel-lcc 4")):
        code, lines, seconds = s.train(s.root / "never", *flags)
        row(f"cvae train {name}", "one line naming the option, exit 2", f"exit {code} in {seconds:.1f} s: "
            f"{lines[-1] if lines else ''}", one_line(code, lines, 2, "cvae train: error: --")
            and not (s.root / "never").exists())
    blocker = s.root / "a-file"
    blocker.write_text("mine")
    for out, what in ((blocker, "an existing file"), (Path("/proc/cvae-out"), "a read-only place (/proc)")):
        code, lines, seconds = s.train(out, "--steps", "2")
        row(f"cvae train --out {what}", "one line, exit 2, before reading the data", f"exit {code} in {seconds:.1f} s",
            one_line(code, lines, 2, "cvae train: error: --out"))

    # ---- malformed and oversized inputs
    for name, path in (("datatype code 999", nifti(s.root / "dt999.nii", (8, 8, 4), datatype=999)),
                       ("header of 30000 x 30000 x 1000 voxels over 8 bytes of data",
                        nifti(s.root / "huge.nii", (2, 2, 2), header_dims=(30000, 30000, 1000), keep=360))):
        out = s.root / "reg-bad"
        code, lines, seconds = s.register(out, fixed=path)
        row(f"cvae register, {name}", "one line, exit 2, nothing written", f"exit {code} in {seconds:.1f} s: "
            f"{lines[-1][:90] if lines else ''}...", one_line(code, lines, 2, "cvae register: error:")
            and not out.exists())
    big = nifti(s.root / "big.nii", (2, 2, 2), header_dims=(512, 512, 200))
    code, lines, seconds = s.register(s.root / "reg-big", fixed=big, moving=big)
    row("cvae register of a 512 x 512 x 200 pair (above the default limit of 2^24 voxels)",
        "refused from the header: one line, exit 2", f"exit {code} in {seconds:.1f} s",
        one_line(code, lines, 2, "cvae register: error:") and "above the limit" in lines[0])
    code, lines, _ = s.register(s.root / "reg-limit", "--max-voxels", "1000")
    row("cvae register --max-voxels 1000 of a 0.1 M voxel pair", "one line naming the limit, exit 2", f"exit {code}",
        one_line(code, lines, 2, "cvae register: error:") and "1,000" in lines[0])
    blob = nib.Nifti1Image(np.zeros((1024, 1024, 128), np.int16), np.eye(4)).to_bytes()
    packed = gzip.compress(blob, 9)
    tic = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as folder:
            stage_uploads(folder, Upload("a.nii.gz", packed), Upload("b.nii.gz", packed))
        observed, ok = "accepted", False
    except UploadError as exc:
        observed, ok = f"UploadError: {str(exc)[:80]}...", "\n" not in str(exc) and "above the limit" in str(exc)
    row(f"app upload of two 1024 x 1024 x 128 volumes ({len(packed) / 2**20:.1f} MB gzip each)",
        "refused from the header with one line", f"{observed} ({time.perf_counter() - tic:.1f} s)", ok)

    # ---- interrupting cvae register while it writes its outputs (a 256 x 256 x 100 pair: seconds of writing)
    fixed, moving = s.large_pair()
    for signum, expected in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = s.root / f"reg-{signum}"
        code, lines, _ = s.register(out, fixed=fixed, moving=moving, send=signum,
                                    ready=lambda out=out: any(out.parent.glob(f".{out.name}.tmp-*")))
        row(f"{signal.Signals(signum).name} during cvae register, while it writes its outputs",
            f"one line, exit {expected}, no temporary files, no output folder", f"exit {code}, leftovers "
            f"{debris(s.root)}", one_line(code, lines, expected, "cvae register: ") and not debris(s.root)
            and not out.exists())

    # ---- output folders
    for args, name in ((["synth", "--out", str(blocker), "--n-train", "1", "--n-test", "1"], "cvae synth --out a file"),
                       (["synth", "--out", "/proc/cvae-out", "--n-train", "1", "--n-test", "1"],
                        "cvae synth --out a read-only place"),
                       (["evaluate", "--data", str(s.cohort), "--methods", "identity", "--out", str(blocker)],
                        "cvae evaluate --out a file"),
                       (["embed", "--data", str(s.cohort), "--checkpoint", str(s.checkpoint), "--out", str(s.root)],
                        "cvae embed --out a directory")):
        code, lines, seconds = s.run(*args)
        row(name, "one line, exit 2, before any work", f"exit {code} in {seconds:.1f} s",
            one_line(code, lines, 2, f"cvae {args[0]}: error:"))
    mine = s.root / "mine"
    mine.mkdir()
    (mine / "warped.nii.gz").write_text("my own file")
    code, lines, _ = s.register(mine)
    kept = (mine / "warped.nii.gz").read_text() == "my own file"
    row("cvae register --out a folder holding the user's files", "refused unless --overwrite, files kept",
        f"exit {code}, user's file kept: {kept}", one_line(code, lines, 2, "cvae register: error:") and kept)
    (mine / "notes.txt").write_text("notes")
    code, _, _ = s.register(mine, "--overwrite")
    row("... with --overwrite", "replaces only files named like its outputs", f"exit {code}, notes.txt kept: "
        f"{(mine / 'notes.txt').exists()}", code == 0 and (mine / "notes.txt").exists())
    out = s.root / "reg-twice"
    s.register(out, "--moving-seg", str(s.moving).replace(".nii.gz", "_gt.nii.gz"))
    (out / "notes.txt").write_text("notes")
    code, _, _ = s.register(out)
    row("cvae register twice into one folder, the second time without --moving-seg",
        "the first run's warped_seg.nii.gz removed, the user's notes.txt kept",
        f"exit {code}, warped_seg: {(out / 'warped_seg.nii.gz').exists()}, notes.txt: {(out / 'notes.txt').exists()}",
        code == 0 and not (out / "warped_seg.nii.gz").exists() and (out / "notes.txt").exists())
    mask = os.umask(0o022)
    os.umask(mask)
    mode = (out.stat().st_mode & 0o777)
    row("permissions of an output folder", f"the user's umask ({0o777 & ~mask:o})", f"{mode:o}",
        mode == 0o777 & ~mask)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cvae-reliability-") as folder:
        rows = cases(Scratch(Path(folder)))
    kept = sum(ok for *_, ok in rows)
    lines = [f"`.venv/bin/python benchmarks/reliability.py`: {kept} of {len(rows)} cases behave as promised.", "",
             "| case | promised | observed | kept? |", "|---|---|---|---|"]
    lines += [f"| {case} | {promised} | {observed.replace('|', '/')} | {'yes' if ok else '**no**'} |"
              for case, promised, observed, ok in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if kept == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
