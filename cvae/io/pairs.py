"""``cvae register --pairs pairs.csv --out DIR``: many pairs in one process, with one model load and a progress bar.

The pairs file is a CSV with a header: columns ``fixed`` and ``moving`` (NIfTI paths), optionally ``fixed_seg``,
``moving_seg`` and ``name`` (the pair's output folder; default its row number, ``001``, ``002``...). Relative paths
are relative to the CSV's folder; an empty cell is no file. Every pair gets the outputs of
:func:`cvae.io.register.register_files` in ``DIR/<name>/``, and ``DIR/pairs.csv`` lists each pair's result: folding,
mean Dice when both segmentations are given, seconds, and the one-line error of a pair that failed (the others are
still registered; nothing of theirs is lost).
"""
from __future__ import annotations

import csv
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cvae.checkpoint import load_checkpoint
from cvae.io.atomic import check_writable, write_text
from cvae.io.register import register_files

__all__ = ["Pair", "read_pairs", "register_pairs", "SUMMARY_COLUMNS"]

#: Columns of ``DIR/pairs.csv``.
SUMMARY_COLUMNS: tuple[str, ...] = ("name", "fixed", "moving", "status", "folding_percent", "dice_mean",
                                    "dice_unregistered_mean", "seconds", "error")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Pair:
    """One row of a pairs file: the output folder's ``name`` and the paths (``None``: not given)."""

    name: str
    fixed: Path
    moving: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a CSV file (module docstring), every file checked to exist; one-line ``ValueError`` naming the
    row otherwise."""
    path = Path(path).expanduser()
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
            header = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"--pairs {path}: cannot read it as a CSV file ({exc})") from None
    missing = [c for c in ("fixed", "moving") if c not in header]
    if missing:
        raise ValueError(f"--pairs {path}: the header needs columns fixed and moving (optional: fixed_seg, "
                         f"moving_seg, name); {', '.join(missing)} missing")
    if not rows:
        raise ValueError(f"--pairs {path}: no pairs (only a header)")
    pairs, names = [], set()
    for number, row in enumerate(rows, start=1):
        where = f"--pairs {path}, row {number}"

        def file(column: str, required: bool) -> Path | None:
            text = (row.get(column) or "").strip()
            if not text:
                if required:
                    raise ValueError(f"{where}: no {column} image")
                return None
            found = (path.parent / Path(text).expanduser()).resolve()
            if not found.is_file():
                raise ValueError(f"{where}: {column} file {text} not found (relative paths start at {path.parent})")
            return found

        name = (row.get("name") or "").strip() or f"{number:03d}"
        if not _NAME.match(name) or name in names:
            raise ValueError(f"{where}: name {name!r} is {'used twice' if name in names else 'not a folder name'}: "
                             "use letters, digits, '.', '_' and '-'")
        names.add(name)
        pairs.append(Pair(name, file("fixed", True), file("moving", True), file("fixed_seg", False),
                          file("moving_seg", False)))
    return pairs


def _summary_row(pair: Pair, metrics: dict[str, Any] | None, seconds: float, error: str = "") -> dict[str, Any]:
    seg = (metrics or {}).get("segmentation") or {}
    folding = None if metrics is None else 100 * metrics["negative_jacobian_fraction"]
    return {"name": pair.name, "fixed": str(pair.fixed), "moving": str(pair.moving),
            "status": "failed" if error else "ok", "folding_percent": folding, "dice_mean": seg.get("dice_mean"),
            "dice_unregistered_mean": seg.get("dice_unregistered_mean"), "seconds": round(seconds, 3),
            "error": error}


def register_pairs(pairs_file: str | os.PathLike, out: str | os.PathLike, checkpoint: str | os.PathLike =
                   "synthetic-acdc", device: str | torch.device = "auto", refine_steps: int = 0,
                   max_voxels: int | None = None, overwrite: bool = False, optimize_steps: int = 0,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Register every pair of ``pairs_file`` with one load of ``checkpoint``; returns the rows of ``DIR/pairs.csv``
    (:data:`SUMMARY_COLUMNS`). The pairs file and the output folder are checked before any work; a pair that fails
    later is recorded with its one-line error and the others go on."""
    pairs = read_pairs(pairs_file)
    out = check_writable(out)
    loaded = load_checkpoint(checkpoint, device)
    rows = []
    for pair in tqdm(pairs, desc="registering", unit="pair", disable=not progress, dynamic_ncols=True):
        tic = time.perf_counter()
        try:
            metrics = register_files(pair.fixed, pair.moving, out / pair.name, checkpoint, pair.fixed_seg,
                                     pair.moving_seg, device, refine_steps, max_voxels, overwrite, optimize_steps,
                                     loaded=loaded)
            rows.append(_summary_row(pair, metrics, time.perf_counter() - tic))
        except (ValueError, OSError) as exc:
            text = str(exc).strip()
            rows.append(_summary_row(pair, None, time.perf_counter() - tic,
                                     text.splitlines()[0] if text else type(exc).__name__))
        finally:
            write_text(out / "pairs.csv", _csv_text(rows))  # after every pair: an interruption keeps the list
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return text.getvalue()
