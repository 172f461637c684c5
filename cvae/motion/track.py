"""Tracking a cine: the ED frame registered to every frame of the cardiac cycle, its labels carried along.

    cvae track --cine patient001_4d.nii.gz --out DIR [--ed-frame 1] [--ed-seg patient001_frame01_gt.nii.gz]

Every frame ``t`` is registered as the fixed image with the ED frame as the moving one (the convention of ED -> ES:
``ED o phi_t ~ frame t``), in batched forward passes of the trained CVAE. All frames share one crop grid and one
intensity mapping: those of the preprocessing of the ED frame with the frame that differs most from it (the
contracted heart; the ED segmentation, when given, centres the crop). So the per-frame codes ``z_t`` form the cycle's
*motion matrix* and the transforms are comparable across frames.

With the ED segmentation, the labels are carried to every other frame on the cine's own grid (nearest neighbour,
the way ``cvae register`` warps a segmentation; the ED frame keeps the segmentation itself) and measured: LV cavity,
LV myocardium and RV cavity volumes (mL) per frame; the ES frame is the one of the smallest LV cavity, and the
ejection fractions follow. Without it the ES frame is the one of the largest mean displacement.

DIR then holds ``tracked_seg_4d.nii.gz`` (with ``--ed-seg``: uint8 ``(X, Y, Z, T)`` on the cine's grid),
``volumes.csv`` (with ``--ed-seg``), ``codes.csv`` (``z_t`` per frame, with the frame's folding and mean motion over
the crop grid; at the ED frame these are what the network predicts for the pair (ED, ED), ideally no motion at all)
and ``summary.json`` (frames, ED and detected ES frame, LVEDV, LVESV, LVEF, RVEDV, RVESV, RVEF, folding per frame,
seconds).
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvae.checkpoint import load_checkpoint
from cvae.data.volumes import load_cine, load_label
from cvae.data.preprocess import preprocess_image_pair, resample_to_grid
from cvae.evaluation.clinical import label_volumes_ml
from cvae.fields import jacobian_determinant
from cvae.io.atomic import atomic_folder, check_writable, earlier_outputs
from cvae.io.nifti import save_volume
from cvae.io.register import field_to_world, warp_to_grid
from cvae.model import CVAERegistration

__all__ = ["Tracking", "track_cine", "track_files", "OUTPUT_FILES", "VOLUME_COLUMNS"]

#: Every file :func:`track_files` may write (the first two only with an ED segmentation).
OUTPUT_FILES: tuple[str, ...] = ("tracked_seg_4d.nii.gz", "volumes.csv", "codes.csv", "summary.json")
#: ``volumes.csv``'s volume columns (mL) and the label-volume key of :func:`label_volumes_ml` each one holds.
VOLUME_COLUMNS: dict[str, str] = {"lv_cavity_ml": "LV cavity", "lv_myocardium_ml": "LV myocardium",
                                  "rv_cavity_ml": "RV"}


@dataclass
class Tracking:
    """The tracked cycle of one cine of ``T`` frames (frames numbered from 1, as ACDC does).

    ``codes`` ``(T, d)``: the code ``mu`` of the registration ED -> frame; ``folding`` ``(T,)``: fraction of crop
    voxels with det J <= 0; ``motion_mm`` ``(T,)``: mean displacement (mm) over the crop grid; ``labels`` ``(X, Y,
    Z, T)`` uint8 on the cine's grid and ``volumes`` (one dict of :data:`VOLUME_COLUMNS` per frame, mL) when an ED
    segmentation was given; ``frame_ms``: the frame interval, if the file says it; ``ed_crop`` ``(X, Y, Z)``: the
    ED frame on the model's crop grid (voxel-to-world ``crop_affine``), the image the codes decode on; ``fields``
    ``(T, 3, X, Y, Z)`` and ``crop_frames`` ``(T, X, Y, Z)``: the displacements (voxels) and the frames on that grid,
    when asked for.
    """

    ed_frame: int
    codes: np.ndarray
    folding: np.ndarray
    motion_mm: np.ndarray
    labels: np.ndarray | None = None
    volumes: list[dict[str, float]] | None = None
    frame_ms: float | None = None
    ed_crop: np.ndarray | None = None
    crop_affine: np.ndarray | None = None
    fields: np.ndarray | None = None
    crop_frames: np.ndarray | None = None

    @property
    def frames(self) -> int:
        return len(self.codes)

    @property
    def es_frame(self) -> int:
        """The detected ES frame: smallest LV cavity with labels, else the largest mean displacement."""
        if self.volumes is not None:
            return int(np.argmin([v["lv_cavity_ml"] for v in self.volumes])) + 1
        return int(np.argmax(self.motion_mm)) + 1

    def crop_labels(self, label: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """A label map ``(X, Y, Z)`` of the cine's grid (voxel-to-world ``affine``) on the crop grid (nearest)."""
        return resample_to_grid(label, affine, self.crop_affine, self.ed_crop.shape, order=0).astype(np.uint8)

    def times_ms(self) -> list[float | None]:
        """Each frame's time after the first frame (ms), or ``None`` when the interval is unknown."""
        return [None if self.frame_ms is None else round(k * self.frame_ms, 3) for k in range(self.frames)]

    def summary(self) -> dict[str, Any]:
        """Frames, ED and detected ES frame, volumes and ejection fractions (with labels), folding per frame."""
        out: dict[str, Any] = {"frames": self.frames, "ed_frame": self.ed_frame, "es_frame": self.es_frame,
                               "es_frame_from": "smallest LV cavity" if self.volumes is not None
                               else "largest mean displacement", "frame_ms": self.frame_ms}
        if self.volumes is not None:
            ed, es = self.volumes[self.ed_frame - 1], self.volumes[self.es_frame - 1]
            for side, key in (("LV", "lv_cavity_ml"), ("RV", "rv_cavity_ml")):
                out[f"{side}EDV_ml"], out[f"{side}ESV_ml"] = round(ed[key], 3), round(es[key], 3)
                out[f"{side}EF_percent"] = round(100 * (ed[key] - es[key]) / ed[key], 3) if ed[key] > 0 else None
        out["folding_percent"] = [round(100 * float(f), 5) for f in self.folding]
        out["max_motion_mm"] = round(float(self.motion_mm.max()), 4)
        out["ed_motion_mm"] = round(float(self.motion_mm[self.ed_frame - 1]), 4)  # ED -> ED: ideally 0
        return out


def _crop_frames(cine: np.ndarray, affine: np.ndarray, ed_frame: int, ed_label: np.ndarray | None,
                 size: tuple[int, int, int], spacing: tuple[float, float, float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame on one crop grid with one intensity mapping: ``(frames (T, X, Y, Z) in [0, 1], ED (X, Y, Z),
    crop affine)``, both from the preprocessing of the ED frame with the frame that differs most from it."""
    ed = cine[..., ed_frame - 1]
    change = [float(np.abs(cine[..., t] - ed).mean()) for t in range(cine.shape[3])]
    if max(change) == 0:
        raise ValueError("every frame of the cine equals the ED frame: there is no motion to track")
    far = int(np.argmax(change))
    pair = preprocess_image_pair(cine[..., far], ed, affine, None, ed_label, size, spacing)
    low, high = pair.intensity_range
    frames = np.stack([resample_to_grid(np.clip((cine[..., t] - low) / (high - low), 0, 1).astype(np.float32),
                                        affine, pair.affine, size, order=1) for t in range(cine.shape[3])])
    return frames, pair.moving, pair.affine


@torch.no_grad()
def track_cine(model: CVAERegistration, cine: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float],
               ed_frame: int = 1, ed_label: np.ndarray | None = None, frame_ms: float | None = None,
               batch_size: int = 4, carry_labels: bool = True, keep_fields: bool = False) -> Tracking:
    """Track the cine ``(X, Y, Z, T)`` (voxel-to-world ``affine``) with ``model``, whose grid has voxels of
    ``spacing`` mm: the ED frame ``ed_frame`` (1-based) registered to every frame, ``batch_size`` frames per forward
    pass; ``ed_label`` ``(X, Y, Z)`` (ACDC labels on the cine's grid) centres the crop and, with ``carry_labels``, is
    carried to every frame; ``keep_fields`` keeps the crop-grid displacements and frames. One-line ``ValueError`` on bad
    input."""
    cine = np.asarray(cine, dtype=np.float32)
    if cine.ndim != 4 or cine.shape[3] < 2:
        raise ValueError(f"a cine is (X, Y, Z, T) with at least 2 frames, got shape {cine.shape}")
    if not 1 <= ed_frame <= cine.shape[3]:
        raise ValueError(f"--ed-frame must be one of the cine's frames 1-{cine.shape[3]}, got {ed_frame}")
    if ed_label is not None and tuple(ed_label.shape) != cine.shape[:3]:
        raise ValueError(f"the ED segmentation's shape {tuple(ed_label.shape)} is not the cine's frame shape "
                         f"{cine.shape[:3]}: give the segmentation of the ED frame on the cine's grid")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    size = tuple(int(n) for n in model.config.image_size)
    frames, ed, crop_affine = _crop_frames(cine, affine, ed_frame, ed_label, size, spacing)  # type: ignore[arg-type]
    device = model.device
    moving = torch.from_numpy(ed)[None, None].to(device)
    voxel_mm = torch.tensor(spacing, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)
    codes, folding, motion, labels, volumes, fields = [], [], [], [], [], []
    label_spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    for start in range(0, len(frames), batch_size):
        fixed = torch.from_numpy(frames[start:start + batch_size])[:, None].to(device)
        pair_moving = moving.expand(len(fixed), -1, -1, -1, -1)
        mu, _ = model.encode(fixed, pair_moving)  # model.register without the warped image, which is not needed
        displacement = model.exponentiate(model.velocity(mu, pair_moving))
        codes.append(mu.cpu().numpy())
        folding += [float((j <= 0).float().mean()) for j in jacobian_determinant(displacement)]
        motion += (displacement * voxel_mm).norm(dim=1).mean(dim=(1, 2, 3)).cpu().tolist()
        if keep_fields:
            fields.append(displacement.cpu().numpy())
        if ed_label is not None and carry_labels:
            world = field_to_world(displacement.cpu(), crop_affine, affine, cine.shape[:3])
            for frame, field in enumerate(world, start=start + 1):
                # the ED frame is the reference: its labels are the segmentation itself (the identity), whatever
                # the network predicts for the pair (ED, ED), which it never saw in training
                carried = ed_label if frame == ed_frame else warp_to_grid(ed_label, affine, affine, cine.shape[:3],
                                                                          field, order=0)
                labels.append(carried)
                measured = label_volumes_ml(carried, label_spacing)
                volumes.append({column: measured[key] for column, key in VOLUME_COLUMNS.items()})
    return Tracking(ed_frame=ed_frame, codes=np.concatenate(codes), folding=np.asarray(folding),
                    motion_mm=np.asarray(motion), labels=np.stack(labels, axis=-1) if labels else None,
                    volumes=volumes or None, frame_ms=frame_ms, ed_crop=ed, crop_affine=crop_affine,
                    fields=np.concatenate(fields) if fields else None, crop_frames=frames if keep_fields else None)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else "" if v is None else v for v in row] for row in rows])
    return text.getvalue()


def track_files(cine: str | os.PathLike, out: str | os.PathLike, checkpoint: str | os.PathLike = "synthetic-acdc",
                ed_frame: int = 1, ed_seg: str | os.PathLike | None = None, device: str | torch.device = "auto",
                batch_size: int = 4, overwrite: bool = False) -> dict[str, Any]:
    """``cvae track``: track the cine file, write the outputs of the module docstring into ``out`` (atomically) and
    return the content of ``summary.json``. Inputs and ``out`` are checked before the model runs."""
    start = time.perf_counter()
    out = check_writable(out)
    earlier = earlier_outputs(out, OUTPUT_FILES, "summary.json", ("es_frame", "frames"), "cvae track", overwrite)
    volume, affine, _, frame_ms = load_cine(cine)
    ed_label = None
    if ed_seg is not None:
        ed_label, label_affine = load_label(ed_seg)
        if ed_label.shape == volume.shape[:3] and not np.allclose(label_affine, affine, atol=1e-3):
            raise ValueError(f"{ed_seg}: the ED segmentation's affine differs from the cine's: give it on the cine's "
                             "grid")
    model, config = load_checkpoint(checkpoint, device)
    tracking = track_cine(model, volume, affine, tuple(config["spacing"]), ed_frame, ed_label, frame_ms, batch_size)
    summary = {"cine": str(cine), "checkpoint": str(checkpoint), "ed_seg": None if ed_seg is None else str(ed_seg),
               **tracking.summary()}
    times = tracking.times_ms()
    d = tracking.codes.shape[1]

    def write(tmp: Path) -> None:
        rows = [[t + 1, times[t], *map(float, tracking.codes[t]), 100 * float(tracking.folding[t]),
                 float(tracking.motion_mm[t])] for t in range(tracking.frames)]
        (tmp / "codes.csv").write_text(_table(["frame", "time_ms", *(f"mu_{k + 1}" for k in range(d)),
                                               "folding_percent", "motion_mm"], rows))
        if tracking.labels is not None and tracking.volumes is not None:
            save_volume(tmp / "tracked_seg_4d.nii.gz", tracking.labels, affine, np.uint8, frame_ms)
            (tmp / "volumes.csv").write_text(_table(
                ["frame", "time_ms", *VOLUME_COLUMNS],
                [[t + 1, times[t], *(v[c] for c in VOLUME_COLUMNS)] for t, v in enumerate(tracking.volumes)]))
        summary["files"] = sorted(p.name for p in tmp.iterdir()) + ["summary.json"]
        summary["seconds"] = round(time.perf_counter() - start, 3)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    atomic_folder(out, write, merge_into=earlier)
    return summary
