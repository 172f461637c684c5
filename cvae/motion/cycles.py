"""A cohort's cycles as motion matrices: every cine tracked once, kept as codes and the ED frame on the crop grid.

The motion model trains on these, and its evaluation starts from them. ``save_cycles``/``load_cycles`` keep them in
one ``.npz`` file (codes of all cycles concatenated, frame counts, ED crops as float16), so that the registration
model runs over a cohort once.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.data.acdc import find_subjects
from cvae.data.volumes import load_cine, load_label
from cvae.model import CVAERegistration
from cvae.motion.track import track_cine

__all__ = ["Cycle", "cohort_cycles", "save_cycles", "load_cycles"]


@dataclass
class Cycle:
    """One subject's tracked cycle: ``codes`` ``(T, d)`` (ED -> frame ``t``), ``ed`` ``(X, Y, Z)`` float32 in
    [0, 1] on the registration grid, the ES frame of Info.cfg (1-based, 0 if unknown) and the frame interval (ms)."""

    subject: str
    group: str
    codes: np.ndarray
    ed: np.ndarray
    es_frame: int = 0
    frame_ms: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.codes)


def cohort_cycles(model: CVAERegistration, root: str | os.PathLike, split: str | None, spacing: tuple[float, ...],
                  limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> list[Cycle]:
    """Track the cine of every subject of ``root`` (``split``; the first ``limit``) that has one: the ED frame
    of Info.cfg registered to every frame, its segmentation (when present) centring the crop as in ``cvae track``.
    ``ValueError`` when no subject has a cine."""
    subjects = [s for s in find_subjects(root, split) if (s.directory / f"{s.subject}_4d.nii.gz").is_file()]
    if not subjects:
        raise ValueError(f"no subject under {root} has a cine patientNNN_4d.nii.gz: write one with "
                         "`cvae synth --cine` or use the ACDC cines")
    subjects = subjects[:limit]
    cycles = []
    for done, info in enumerate(subjects, start=1):
        cine, affine, _, frame_ms = load_cine(info.directory / f"{info.subject}_4d.nii.gz")
        label = load_label(info.ed_label)[0] if info.ed_label is not None else None
        tracked = track_cine(model, cine, affine, spacing, info.ed_frame, label, frame_ms, carry_labels=False)
        cycles.append(Cycle(info.subject, info.group, tracked.codes.astype(np.float32), tracked.ed_crop,
                            info.es_frame, frame_ms or 0.0))
        if progress is not None:
            progress(done, len(subjects))
    return cycles


def save_cycles(path: str | os.PathLike, cycles: list[Cycle]) -> Path:
    """Write ``cycles`` to one ``.npz`` file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, codes=np.concatenate([c.codes for c in cycles]),
                        frames=np.array([c.frames for c in cycles]),
                        ed=np.stack([c.ed for c in cycles]).astype(np.float16),
                        subject=np.array([c.subject for c in cycles]), group=np.array([c.group for c in cycles]),
                        es_frame=np.array([c.es_frame for c in cycles]),
                        frame_ms=np.array([c.frame_ms for c in cycles]))
    return path


def load_cycles(path: str | os.PathLike) -> list[Cycle]:
    """The cycles :func:`save_cycles` wrote."""
    with np.load(path) as f:
        bounds = np.concatenate([[0], np.cumsum(f["frames"])])
        return [Cycle(str(f["subject"][k]), str(f["group"][k]), f["codes"][bounds[k]:bounds[k + 1]],
                      f["ed"][k].astype(np.float32), int(f["es_frame"][k]), float(f["frame_ms"][k]))
                for k in range(len(f["frames"]))]
