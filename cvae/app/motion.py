"""What the Motion page computes: a cine tracked by the registration model (:mod:`cvae.motion.track`), cycles simulated
from its ED frame by the motion model and its motion transported onto another heart (:mod:`cvae.motion.cycle`), and
the 2-D trajectory of its codes.

Plain functions (tests call them) and their Streamlit caches, as :mod:`cvae.app.cached` does: ``st.cache_resource``
for the motion model, ``st.cache_data`` for cines, tracked cycles, simulations and transports, keyed by a
:class:`CineSource`. Everything is on the registration model's crop grid (``(X, Y, Z)`` volumes, voxels of
``spacing`` mm), volumes in mL, frames numbered from 1 as in ACDC. Volume curves are measured the same way for the
tracked, simulated and transported cycles: the ED segmentation carried by each frame's displacement on the crop grid
(:func:`cvae.motion.cycle.cycle_volumes`); ``cvae track`` measures on the cine's own grid instead.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch
from sklearn.decomposition import PCA

from cvae.app import cached as C
from cvae.app.checkpoints import file_stamp, grid_of
from cvae.app.cine import Cine, cohort_cine, uploaded_cine
from cvae.app.cohort import study_split
from cvae.checkpoint import MODEL_FILE, CheckpointError, resolve_checkpoint
from cvae.evaluation.clinical import label_volumes_ml
from cvae.fields import warp, warp_labels
from cvae.io.uploads import Upload
from cvae.latent.cohort import cached_table_path
from cvae.latent.table import mu_columns
from cvae.model import CVAERegistration
from cvae.motion.cycle import (cycle_volumes, decode_cycle, ejection_fraction, frame_volumes, load_motion_model,
                               simulate, transport_cycle)
from cvae.motion.model import MotionModel
from cvae.motion.track import track_cine

__all__ = ["ENV_MOTION_CHECKPOINT", "DEFAULT_MOTION_CHECKPOINT", "TRACK_SECONDS_PER_FRAME", "DECODE_SECONDS_PER_FRAME",
           "CURVES", "CineSource", "TrackedCycle", "track_cycle", "SimulatedCycles", "simulate_cycles",
           "TransportedCycle", "transport_onto", "Trajectory", "code_trajectory", "motion_checkpoint",
           "motion_model_missing", "trained_for", "get_motion_model", "load_cine", "tracked", "simulated",
           "transported", "cohort_codes"]

ENV_MOTION_CHECKPOINT = "CVAE_MOTION_CHECKPOINT"
DEFAULT_MOTION_CHECKPOINT = "motion-synthetic-acdc"
#: Seconds per frame of tracking (registration, warps, volumes) and of decoding a code into a measured frame, with the
#: shipped model on the idle 2-core CPU the project is developed on (measured 0.30 s for tracking without the labels,
#: 0.27-0.31 s for decoding; benchmarks/RESULTS.md section 13), rounded up for the warps and volumes.
TRACK_SECONDS_PER_FRAME = 0.4
DECODE_SECONDS_PER_FRAME = 0.35
#: The curves' names and the key of :func:`cvae.motion.cycle.cycle_volumes` each one holds.
CURVES: dict[str, str] = {"LV cavity": "LV cavity", "LV myocardium": "LV myocardium", "RV cavity": "RV"}


@dataclass(frozen=True)
class CineSource:
    """Which cine the page tracks: a cohort subject (``root``, ``subject``) or an upload (``cine``, ``ed_seg``,
    ``ed_frame``, 1-based). Hashable: the cache key of everything computed from it."""

    root: str = ""
    subject: str = ""
    cine: Upload | None = None
    ed_seg: Upload | None = None
    ed_frame: int = 1

    @property
    def name(self) -> str:
        return self.subject or (self.cine.name if self.cine is not None else "cine")


def _ed_first(values: np.ndarray, ed_frame: int) -> np.ndarray:
    """Rows of a cycle ``(T, ...)`` rotated so that the ED frame (1-based) comes first, as the motion model has it."""
    return np.roll(values, 1 - ed_frame, axis=0)


def _in_frame_order(values: np.ndarray, ed_frame: int, axis: int = -1) -> np.ndarray:
    """The inverse of :func:`_ed_first`, along ``axis`` (default the last: a curve ``(..., T)`` starting at ED)."""
    return np.roll(values, ed_frame - 1, axis=axis)


def _curves(fields: np.ndarray, ed_label: np.ndarray, spacing: tuple[float, ...], ed_frame: int
            ) -> dict[str, np.ndarray]:
    """:data:`CURVES` ``name -> (T,)`` mL of the ED labels carried by the displacements ``(T, 3, X, Y, Z)``."""
    volumes = cycle_volumes(fields, ed_label, spacing, ed_frame)  # type: ignore[arg-type]
    return {name: volumes[key] for name, key in CURVES.items()}


def _unit_bytes(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as uint8 0-255 (what the viewer shows; a quarter of the memory of float32)."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# plain computations


@dataclass
class TrackedCycle:
    """A tracked cine on the registration model's crop grid (voxels of ``spacing`` mm), ``T`` frames.

    ``frames`` and ``warped`` ``(T, X, Y, Z)`` uint8 (0-255 for [0, 1]): the cine's frames and the ED frame warped
    by each frame's transform (``ED o phi_t``); ``labels`` ``(T, X, Y, Z)`` uint8: the ED segmentation carried to
    every frame (``None`` without one); ``codes`` ``(T, d)``: the code of ED -> frame ``t``; ``volumes``: the
    :data:`CURVES` ``(T,)`` in mL (``None`` without a segmentation); ``motion_mm`` ``(T,)``: mean displacement;
    ``folding`` ``(T,)``: fraction of the grid's voxels where det J <= 0;
    ``es_frame``: the smallest LV cavity, else the largest mean displacement (as ``cvae track``); ``ed_crop``
    ``(X, Y, Z)`` float32 and ``crop_label``: the ED frame and its segmentation on the crop grid.
    """

    frames: np.ndarray
    warped: np.ndarray
    labels: np.ndarray | None
    codes: np.ndarray
    volumes: dict[str, np.ndarray] | None
    motion_mm: np.ndarray
    folding: np.ndarray
    ed_frame: int
    es_frame: int
    frame_ms: float | None
    spacing: tuple[float, float, float]
    ed_crop: np.ndarray
    crop_label: np.ndarray | None
    seconds: float

    @property
    def count(self) -> int:
        """Number of frames ``T``."""
        return len(self.codes)

    def ejection_fraction(self, curve: str = "LV cavity") -> float:
        """Ejection fraction (%) of a volume curve: ``100 (V_ED - min V) / V_ED``."""
        if self.volumes is None:
            raise ValueError("no volume curves without the ED segmentation")
        return ejection_fraction(_ed_first(self.volumes[curve], self.ed_frame))


@torch.no_grad()
def track_cycle(model: CVAERegistration, spacing: tuple[float, float, float], cine: Cine, chunk: int = 8
                ) -> TrackedCycle:
    """Track ``cine`` with ``model`` (grid voxels of ``spacing`` mm; :func:`cvae.motion.track.track_cine`), warp its
    ED frame and segmentation by every frame's transform and measure the volumes, ``chunk`` frames at a time."""
    start = time.perf_counter()
    tracking = track_cine(model, cine.images, cine.affine, spacing, cine.ed_frame, cine.ed_label, cine.frame_ms,
                          carry_labels=False, keep_fields=True)
    crop_label = None if cine.ed_label is None else tracking.crop_labels(cine.ed_label, cine.affine)
    ed = torch.from_numpy(tracking.ed_crop)[None, None]
    warped, labels = [], []
    for first in range(0, tracking.frames, chunk):
        fields = torch.from_numpy(tracking.fields[first:first + chunk])
        warped.append(_unit_bytes(warp(ed, fields)[:, 0]))
        if crop_label is not None:
            labels.append(warp_labels(torch.from_numpy(crop_label)[None, None], fields)[:, 0].numpy())
    carried, volumes, es_frame = None, None, tracking.es_frame
    if crop_label is not None:
        carried = np.concatenate(labels)
        carried[cine.ed_frame - 1] = crop_label  # the ED frame keeps the segmentation itself, as in cvae track
        measured = frame_volumes(carried, spacing)  # type: ignore[arg-type]
        volumes = {name: measured[key] for name, key in CURVES.items()}
        es_frame = int(np.argmin(volumes["LV cavity"])) + 1
    return TrackedCycle(
        frames=_unit_bytes(torch.from_numpy(tracking.crop_frames)), warped=np.concatenate(warped), labels=carried,
        codes=tracking.codes.astype(np.float32), volumes=volumes,
        motion_mm=tracking.motion_mm, folding=tracking.folding, ed_frame=cine.ed_frame, es_frame=es_frame,
        frame_ms=cine.frame_ms, spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        ed_crop=tracking.ed_crop, crop_label=crop_label, seconds=time.perf_counter() - start)


@dataclass
class SimulatedCycles:
    """``n`` cycles simulated from the ED frame alone: ``codes`` ``(n, T, d)`` and LV cavity volumes ``lv``
    ``(n, T)`` mL, both in the tracked cycle's frame order; ``lvef`` ``(n,)`` %; ``seconds``."""

    codes: np.ndarray
    lv: np.ndarray
    lvef: np.ndarray
    seconds: float


def simulate_cycles(motion: MotionModel, model: CVAERegistration, cycle: TrackedCycle, n: int, seed: int = 0
                    ) -> SimulatedCycles:
    """``n`` cycles of the tracked cycle's length simulated by ``motion`` from its ED frame alone
    (:func:`cvae.motion.cycle.simulate`, styles of ``seed``), decoded on that frame and measured like the tracked
    one. ``ValueError`` without an ED segmentation."""
    if cycle.crop_label is None:
        raise ValueError("simulated volumes need the ED segmentation: pick a subject with one, or upload it")
    start = time.perf_counter()
    codes = simulate(motion, model, cycle.ed_crop, cycle.count, n, seed)
    lv = np.stack([_curves(decode_cycle(model, z, cycle.ed_crop), cycle.crop_label, cycle.spacing, 1)["LV cavity"]
                   for z in codes])
    return SimulatedCycles(codes=_in_frame_order(codes, cycle.ed_frame, axis=1), lv=_in_frame_order(lv, cycle.ed_frame),
                           lvef=np.array([ejection_fraction(v) for v in lv]), seconds=time.perf_counter() - start)


@dataclass
class TransportedCycle:
    """A tracked cycle's motion on another heart's ED frame: the target's :data:`CURVES` ``(T,)`` mL in the tracked
    cycle's frame order, the LVEF (%) of the transported cycle, of the target's own ED and ES segmentations and
    ``seconds``."""

    volumes: dict[str, np.ndarray]
    lvef: float
    target_lvef: float
    seconds: float


def transport_onto(model: CVAERegistration, cycle: TrackedCycle, target_ed: np.ndarray, target_label: np.ndarray,
                   target_es_label: np.ndarray | None, spacing: tuple[float, float, float]) -> TransportedCycle:
    """The tracked cycle's codes decoded on a target's ED frame ``(X, Y, Z)`` on the model's grid (its segmentation
    ``target_label``, voxels of ``spacing`` mm; :func:`cvae.motion.cycle.transport_cycle`), measured."""
    start = time.perf_counter()
    fields = transport_cycle(model, _ed_first(cycle.codes, cycle.ed_frame), target_ed)
    volumes = _curves(fields, target_label, spacing, 1)
    own = float("nan") if target_es_label is None else ejection_fraction(
        np.array([label_volumes_ml(label, spacing)["LV cavity"] for label in (target_label, target_es_label)]))
    return TransportedCycle(volumes={k: _in_frame_order(v, cycle.ed_frame) for k, v in volumes.items()},
                            lvef=ejection_fraction(volumes["LV cavity"]), target_lvef=own,
                            seconds=time.perf_counter() - start)


@dataclass
class Trajectory:
    """The codes ``(T, d)`` of a cycle in 2-D: ``points`` ``(T, 2)``, the cohort's codes ``background`` (columns
    ``x, y, subject, group``) or ``None``, and the explained variance ratio ``(2,)`` of the two axes."""

    points: np.ndarray
    background: pd.DataFrame | None
    explained: np.ndarray


def code_trajectory(codes: np.ndarray, cohort: pd.DataFrame | None = None, extra: np.ndarray | None = None
                    ) -> tuple[Trajectory, np.ndarray | None]:
    """PCA of the codes ``(T, d)``: fitted on the cohort table's codes ``mu_1..mu_d`` when given (the Embedding
    page's table), else on the codes themselves; ``extra`` ``(..., d)`` codes are projected on the same axes."""
    basis = codes if cohort is None else cohort[mu_columns(codes.shape[1])].to_numpy(dtype=np.float64)
    k = min(2, *basis.shape)
    pca = PCA(n_components=k).fit(basis)

    def project(z: np.ndarray) -> np.ndarray:
        flat = pca.transform(z.reshape(-1, z.shape[-1]))
        return np.pad(flat, ((0, 0), (0, 2 - k))).reshape(*z.shape[:-1], 2)

    background = None
    if cohort is not None:
        xy = project(basis)
        background = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "subject": cohort["subject"].to_numpy(),
                                   "group": cohort["group"].fillna("").to_numpy()})
    explained = np.pad(pca.explained_variance_ratio_, (0, 2 - k))
    return Trajectory(project(codes), background, explained), None if extra is None else project(extra)


# ---------------------------------------------------------------------------------------------------------------
# Streamlit caches


def motion_checkpoint() -> str:
    """The motion model of the page: ``$CVAE_MOTION_CHECKPOINT`` (a name or a folder) or ``motion-synthetic-acdc``."""
    return os.environ.get(ENV_MOTION_CHECKPOINT) or DEFAULT_MOTION_CHECKPOINT


def motion_model_missing(name: str) -> bool:
    """Whether the motion checkpoint ``name`` (a name or a folder) does not exist."""
    try:
        resolve_checkpoint(name)
    except CheckpointError:
        return True
    return False


def trained_for(checkpoint: str, config: dict) -> str | None:
    """The registration checkpoint a motion model was trained on (its model card), when it is not ``checkpoint``:
    the motion model's codes are then those of another latent space. ``None`` when it is, or is not recorded."""
    source = config.get("training", {}).get("registration_checkpoint")
    if not source:
        return None
    try:
        same = resolve_checkpoint(source).resolve() == resolve_checkpoint(checkpoint).resolve()
    except CheckpointError:
        same = False
    return None if same else str(source)


@st.cache_resource(show_spinner="Loading the motion model…", max_entries=2)
def _load_motion(folder: str, stamp: tuple[int, int]) -> tuple[MotionModel, dict]:
    del stamp  # part of the cache key only: a rewritten weights file is loaded again
    return load_motion_model(folder, "auto")


def get_motion_model(checkpoint: str, name: str) -> tuple[MotionModel, dict]:
    """``(motion model, config)`` of the motion checkpoint ``name``, checked against the registration checkpoint
    ``checkpoint`` (same latent size); ``CheckpointError`` when it does not exist."""
    folder = resolve_checkpoint(name)
    motion, config = _load_motion(str(folder), file_stamp(folder / MODEL_FILE))
    model, _ = C.get_model(checkpoint)
    if motion.config.latent_dim != model.config.latent_dim:
        raise ValueError(f"the motion model `{name}` models {motion.config.latent_dim}-D codes but the registration "
                         f"checkpoint has {model.config.latent_dim}-D ones: train one on this checkpoint's codes "
                         "(`cvae train-motion --checkpoint ...`)")
    return motion, config


@st.cache_data(show_spinner=False, max_entries=3)
def load_cine(source: CineSource) -> Cine:
    """The cine of ``source`` (:func:`cvae.app.cine.cohort_cine` or :func:`cvae.app.cine.uploaded_cine`)."""
    if source.cine is not None:
        return uploaded_cine(source.cine, source.ed_seg, source.ed_frame)
    return cohort_cine(source.root, source.subject)


@st.cache_data(show_spinner=False, max_entries=6)
def tracked(checkpoint: str, source: CineSource) -> TrackedCycle:
    """:func:`track_cycle` of the cine of ``source`` with the registration checkpoint."""
    model, config = C.get_model(checkpoint)
    return track_cycle(model, grid_of(model, config)[1], load_cine(source))


@st.cache_data(show_spinner=False, max_entries=8)
def simulated(checkpoint: str, motion_name: str, source: CineSource, n: int, seed: int = 0) -> SimulatedCycles:
    """:func:`simulate_cycles` of the tracked cycle of ``source``."""
    motion, _ = get_motion_model(checkpoint, motion_name)
    return simulate_cycles(motion, C.get_model(checkpoint)[0], tracked(checkpoint, source), n, seed)


@st.cache_data(show_spinner=False, max_entries=8)
def transported(checkpoint: str, source: CineSource, root: str, target: str) -> TransportedCycle:
    """:func:`transport_onto` the ED frame of the cohort subject ``target`` (its preprocessed pair)."""
    pair = C.pair_for(checkpoint, root, target)
    if pair.moving_label is None:
        raise ValueError(f"{target} has no ED segmentation: pick a target with one")
    return transport_onto(C.get_model(checkpoint)[0], tracked(checkpoint, source), pair.moving, pair.moving_label,
                          pair.fixed_label, pair.spacing)


def cohort_codes(checkpoint: str, root: str) -> pd.DataFrame | None:
    """The Embedding page's table of the cohort's codes when it is on disk already (never computed here), else
    ``None``."""
    split = study_split(C.cohort_subjects(Path(root)))
    if not cached_table_path(resolve_checkpoint(checkpoint), root, split).is_file():
        return None
    return C.cohort_table(checkpoint, root)
