"""What the motion model does with a cycle: interpolate missing frames, simulate a cycle, transport one, decode it.

Everything is on the registration model's crop grid (:attr:`cvae.motion.track.Tracking.ed_crop`): codes ``(T, d)``
decode on the ED frame ``(X, Y, Z)`` into displacements ``(T, 3, X, Y, Z)`` in voxels (``ED o (id + u_t) ~ frame
t``), which carry the ED labels (crop grid, nearest neighbour) to every frame for the volume curves.

- :func:`interpolate`: the codes of hidden frames from the observed ones (observed codes kept);
- :func:`simulate`: ``n`` cycles of ``T`` frames from the ED frame alone (its code is that of the pair (ED, ED)),
  styles drawn from the prior, or conditioned on a few observed frames;
- :func:`transport_cycle`: one subject's motion matrix decoded on another subject's ED frame, with no inter-subject
  registration (the decoder is conditioned on the moving image);
- :func:`decode_cycle`, :func:`cycle_volumes`: fields, and LV cavity / myocardium / RV volumes per frame.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from cvae.checkpoint import build_checkpoint
from cvae.evaluation.clinical import label_volumes_ml
from cvae.fields import warp_labels
from cvae.latent.codes import as_image, decode_codes
from cvae.model import CVAERegistration
from cvae.motion.model import MOTION_FORMAT, MotionConfig, MotionModel

__all__ = ["load_motion_model", "ed_code", "interpolate", "simulate", "transport_cycle", "decode_cycle",
           "cycle_volumes", "frame_volumes", "ejection_fraction"]


def load_motion_model(name_or_path: str | os.PathLike = "motion-synthetic-acdc", device: str | torch.device = "auto"
                      ) -> tuple[MotionModel, dict]:
    """``(motion model in eval mode, config)`` of a motion checkpoint (a name under ``checkpoints/`` or a folder)."""
    return build_checkpoint(name_or_path, lambda c: MotionModel(MotionConfig.from_dict(c)), MOTION_FORMAT, device)


@torch.no_grad()
def ed_code(registration: CVAERegistration, ed: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(d,)``: the code of the pair (ED, ED), the ED frame's row of a motion matrix."""
    image = as_image(ed, registration, "ED")
    return registration.encode(image, image)[0][0].cpu().numpy()


def interpolate(motion: MotionModel, codes: np.ndarray, observed: np.ndarray, ed: np.ndarray) -> np.ndarray:
    """``(T, d)``: the observed rows of ``codes`` ``(T, d)`` kept, the others (mask ``observed`` ``(T,)`` False)
    predicted by ``motion`` from them and the ED frame ``(X, Y, Z)``."""
    return motion.complete(codes, observed, torch.from_numpy(np.asarray(ed, np.float32))[None, None])


def simulate(motion: MotionModel, registration: CVAERegistration, ed: np.ndarray, frames: int, n: int = 1,
             seed: int | None = 0, observed: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """``(n, frames, d)``: ``n`` cycles simulated from the ED frame ``(X, Y, Z)`` (frame 1) alone, or also
    conditioned on ``observed`` (1-based frame -> code ``(d,)``); styles from the prior (``seed`` repeatable)."""
    if frames < 2 or n < 1:
        raise ValueError(f"simulate at least 2 frames and 1 cycle, got {frames} frames and {n} cycles")
    codes = np.zeros((frames, motion.config.latent_dim), np.float32)
    mask = np.zeros(frames, bool)
    codes[0], mask[0] = ed_code(registration, ed), True
    for frame, code in (observed or {}).items():
        if not 1 <= frame <= frames:
            raise ValueError(f"observed frame {frame} is not one of the frames 1-{frames}")
        codes[frame - 1], mask[frame - 1] = code, True
    return motion.complete(codes, mask, torch.from_numpy(np.asarray(ed, np.float32))[None, None], n, seed)


def decode_cycle(registration: CVAERegistration, codes: np.ndarray, ed: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Displacements ``(T, 3, X, Y, Z)`` (voxels, float32) of the codes ``(T, d)`` on the ED frame ``(X, Y, Z)``."""
    with torch.no_grad():
        return decode_codes(registration, codes, ed, chunk).displacement.cpu().numpy()


def transport_cycle(registration: CVAERegistration, source_codes: np.ndarray, target_ed: np.ndarray,
                    chunk: int = 8) -> np.ndarray:
    """One subject's motion matrix ``(T, d)`` on another subject's ED frame ``(X, Y, Z)``: displacements
    ``(T, 3, X, Y, Z)``; the target's own ED code replaces the source's at the first frame."""
    codes = np.array(source_codes, dtype=np.float32)
    codes[0] = ed_code(registration, target_ed)
    return decode_cycle(registration, codes, target_ed, chunk)


def cycle_volumes(fields: np.ndarray, ed_label: np.ndarray, spacing: tuple[float, float, float], ed_frame: int = 1
                  ) -> dict[str, np.ndarray]:
    """Volumes (mL) per frame of the ED labels ``(X, Y, Z)`` (crop grid, voxels of ``spacing`` mm) carried by the
    displacements ``(T, 3, X, Y, Z)``: ``{"LV cavity", "LV myocardium", "RV"} -> (T,)``. The ED frame (1-based
    ``ed_frame``) is the reference and keeps the labels themselves, as in ``cvae track``."""
    labels = torch.from_numpy(np.asarray(ed_label, np.uint8))[None, None]
    moved = warp_labels(labels, torch.from_numpy(np.asarray(fields, np.float32)))[:, 0].numpy()
    moved[ed_frame - 1] = ed_label
    return frame_volumes(moved, spacing)


def frame_volumes(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Volumes (mL) of label maps ``(T, X, Y, Z)`` (voxels of ``spacing`` mm): ``{"LV cavity", "LV myocardium",
    "RV"} -> (T,)``."""
    volumes = [label_volumes_ml(m, spacing) for m in labels]
    return {key: np.array([v[key] for v in volumes]) for key in volumes[0]}


def ejection_fraction(volumes: np.ndarray) -> float:
    """Ejection fraction (%) of a volume curve ``(T,)`` that starts at ED: ``100 (V_ED - min V) / V_ED``."""
    volumes = np.asarray(volumes, dtype=np.float64)
    return float(100 * (volumes[0] - volumes.min()) / volumes[0]) if volumes[0] > 0 else float("nan")
