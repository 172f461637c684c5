"""The computations the pages call, cached by Streamlit and keyed by names and paths (hashable, cheap keys).

* ``st.cache_resource``: the model of a checkpoint (one per weights file, re-read when the file changes);
* ``st.cache_data``: cohort listings, preprocessed pairs (themselves cached on disk by ``PairDataset``),
  registrations, decoded codes, the latent table and projections (also cached on disk by :mod:`cvae.latent`).

Each wrapper loads what it needs (model, pair) and calls a plain function of :mod:`cvae.app.compute`,
:mod:`cvae.latent` or :mod:`cvae.io`; ``checkpoint`` is a name or a folder, ``root`` a cohort folder, ``subject`` a
patient id of that cohort.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from cvae import latent
from cvae.app import compute
from cvae.app.checkpoints import default_checkpoint, file_stamp, grid_of
from cvae.app.cohort import cohort_root, list_subjects, study_split, tree_stamp
from cvae.app.compute import Decoded, Registration, Transported
from cvae.checkpoint import MODEL_FILE, load_checkpoint, resolve_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.preprocess import PreprocessedPair
from cvae.figures.slices import extract_slice
from cvae.io.uploads import Upload, staged_uploads
from cvae.latent import transport_study
from cvae.latent.analysis import ClassificationReport, classify, project
from cvae.latent.priors import CodePrior
from cvae.model import CVAERegistration

__all__ = [
    "TRANSPORT_SOURCES", "TRANSPORT_TARGETS", "active_checkpoint", "get_model", "cohort_subjects", "subject_options",
    "subject_pair", "pair_for", "register_subject", "register_uploads", "subject_posterior", "decode_subject",
    "walk_slices", "posterior_std", "transport_subjects", "cohort_table", "cohort_code_prior",
    "transport_study_cached", "group_transport", "projection", "classification",
]

#: Sources and targets per group of the Transport page's group table (as in ``benchmarks/latent_claims.py``).
TRANSPORT_SOURCES, TRANSPORT_TARGETS = 4, 2


# ---------------------------------------------------------------------------------------------------------------
# checkpoint and cohort


def active_checkpoint() -> str:
    """The checkpoint picked in the sidebar (session state ``checkpoint``), else the default."""
    return st.session_state.get("checkpoint") or default_checkpoint()


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _load_model(folder: str, stamp: tuple[int, int]) -> tuple[CVAERegistration, dict]:
    del stamp  # part of the cache key only: a rewritten weights file is loaded again
    return load_checkpoint(folder, "auto")


def get_model(checkpoint: str) -> tuple[CVAERegistration, dict]:
    """``(model in eval mode, config)`` of a checkpoint name or folder, cached per weights file."""
    folder = resolve_checkpoint(checkpoint)
    return _load_model(str(folder), file_stamp(folder / MODEL_FILE))


@st.cache_data(show_spinner=False, max_entries=4)
def _cohort_subjects(root: str, stamp: tuple) -> pd.DataFrame:
    del stamp
    return list_subjects(Path(root))


def cohort_subjects(root: Path | None = None) -> pd.DataFrame:
    """:func:`cvae.app.cohort.list_subjects` of ``root`` (default the app's cohort), re-read when it changes."""
    root = Path(root or cohort_root())
    return _cohort_subjects(str(root), tree_stamp(root))


def subject_options(root: Path | None = None) -> pd.DataFrame:
    """The subjects the pages offer: the test split when there is one (the codes the model did not train on),
    else every subject."""
    table = cohort_subjects(root)
    split = study_split(table)
    return (table[table["split"] == split] if split else table).reset_index(drop=True)


@st.cache_data(show_spinner="Preprocessing the subject…", max_entries=32)
def subject_pair(root: str, subject: str, size: tuple[int, ...], spacing: tuple[float, ...]) -> PreprocessedPair:
    """The preprocessed (fixed = ES, moving = ED) pair of one subject (also cached on disk by ``PairDataset``)."""
    return PairDataset(root, split=None, size=size, spacing=spacing, subjects=[subject]).pair(0)


def _model_and_pair(checkpoint: str, root: str, subject: str) -> tuple[CVAERegistration, PreprocessedPair]:
    model, config = get_model(checkpoint)
    return model, subject_pair(root, subject, *grid_of(model, config))


def pair_for(checkpoint: str, root: str, subject: str) -> PreprocessedPair:
    """The preprocessed pair of a subject on the grid of a checkpoint."""
    return _model_and_pair(checkpoint, root, subject)[1]


# ---------------------------------------------------------------------------------------------------------------
# registration


@st.cache_data(show_spinner="Registering…", max_entries=8)
def register_subject(checkpoint: str, root: str, subject: str, refine_steps: int = 0,
                     optimize_steps: int = 0) -> Registration:
    """Registration of one cohort subject, ED (moving) to ES (fixed); see :func:`cvae.app.compute.register_pair`."""
    return compute.register_pair(*_model_and_pair(checkpoint, root, subject), refine_steps, optimize_steps)


@st.cache_data(show_spinner="Registering the uploaded pair…", max_entries=4)
def register_uploads(checkpoint: str, uploads: tuple[Upload | None, ...], refine_steps: int = 0,
                     optimize_steps: int = 0) -> Registration:
    """Registration of uploaded files ``(fixed, moving, fixed_seg, moving_seg)``; ``UploadError`` for bad files.
    The files live in a temporary folder only while they are read."""
    model, config = get_model(checkpoint)
    with staged_uploads(*uploads) as staged:
        pair = staged.preprocess(*grid_of(model, config))
    return compute.register_pair(model, pair, refine_steps, optimize_steps)


# ---------------------------------------------------------------------------------------------------------------
# latent space of one subject


@st.cache_data(show_spinner="Encoding…", max_entries=32)
def subject_posterior(checkpoint: str, root: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` ``(d,)`` of ``q(z | ES, ED)`` for one subject (the encoder only: fast)."""
    model, pair = _model_and_pair(checkpoint, root, subject)
    with torch.inference_mode():
        mu, logvar = model.encode(latent.as_image(pair.fixed, model, "fixed"),
                                  latent.as_image(pair.moving, model, "moving"))
    return mu[0].cpu().numpy(), torch.exp(0.5 * logvar[0]).cpu().numpy()


@st.cache_data(show_spinner="Decoding…", max_entries=64)
def decode_subject(checkpoint: str, root: str, subject: str, z: tuple[float, ...]) -> Decoded:
    """:func:`cvae.app.compute.decode_pair` for a cohort subject's ED image (cached per code: moving a slider back
    is instant)."""
    model, pair = _model_and_pair(checkpoint, root, subject)
    return compute.decode_pair(model, z, pair.moving, pair.moving_label, pair.spacing)


@st.cache_data(show_spinner="Decoding the walk…", max_entries=8)
def walk_slices(checkpoint: str, root: str, subject: str, z: tuple[float, ...], dim: int,
                values: tuple[float, ...], view: str, index: int) -> list[np.ndarray]:
    """One 2-D slice of the deformed ED image per value of latent coordinate ``dim`` (0-based), others fixed at
    ``z``: the frames of the walk animation."""
    model, pair = _model_and_pair(checkpoint, root, subject)
    result = latent.walk(model, pair.moving, np.asarray(z, dtype=np.float32), dim, values)
    return [extract_slice(w[0], view, index) for w in result.warped.cpu().numpy()]


@st.cache_data(show_spinner="Sampling the posterior…", max_entries=8)
def posterior_std(checkpoint: str, root: str, subject: str, k: int, seed: int = 0) -> np.ndarray:
    """Per-voxel std (mm) ``(X, Y, Z)`` of the displacement over ``k`` codes drawn from ``q(z | ES, ED)``."""
    model, pair = _model_and_pair(checkpoint, root, subject)
    return latent.uncertainty(model, pair.fixed, pair.moving, k, seed=seed, spacing=pair.spacing).cpu().numpy()


@st.cache_data(show_spinner="Transporting the deformation…", max_entries=8)
def transport_subjects(checkpoint: str, root: str, source: str, target: str) -> Transported:
    """The source's code ``mu`` (its ED -> ES motion) decoded for the target's ED image: a simulated target ES
    (:func:`cvae.app.compute.transport_pair`)."""
    model, source_pair = _model_and_pair(checkpoint, root, source)
    mu, _ = subject_posterior(checkpoint, root, source)
    return compute.transport_pair(model, source_pair, pair_for(checkpoint, root, target), mu)


# ---------------------------------------------------------------------------------------------------------------
# latent space of the cohort


def _study_split(root: str) -> str | None:
    return study_split(cohort_subjects(Path(root)))


@st.cache_data(show_spinner="Encoding the cohort (cached on disk after the first time)…", max_entries=4)
def cohort_table(checkpoint: str, root: str) -> pd.DataFrame:
    """:func:`cvae.latent.encode_cohort` of the test split (or every subject if there is no test split)."""
    model, _ = get_model(checkpoint)
    return latent.encode_cohort(str(resolve_checkpoint(checkpoint)), root, split=_study_split(root),
                                device=model.device)


@st.cache_data(show_spinner="Fitting the cohort's code distribution…", max_entries=4)
def cohort_code_prior(checkpoint: str, root: str) -> CodePrior:
    """:func:`cvae.latent.cohort_prior` of :func:`cohort_table`: a Gaussian that draws codes like the cohort's."""
    return latent.cohort_prior(cohort_table(checkpoint, root))


def transport_study_cached(checkpoint: str, root: str) -> bool:
    """Whether the group transport table of this checkpoint and cohort is on disk already."""
    return transport_study.cached_path(resolve_checkpoint(checkpoint), root, _study_split(root), TRANSPORT_SOURCES,
                                       TRANSPORT_TARGETS).is_file()


@st.cache_data(show_spinner="Transporting every source code onto every target (cached on disk afterwards)…",
               max_entries=4)
def group_transport(checkpoint: str, root: str) -> pd.DataFrame:
    """:func:`cvae.latent.transport_study.cohort_transport` of the studied split: one row per (source, target)."""
    model, _ = get_model(checkpoint)
    return transport_study.cohort_transport(resolve_checkpoint(checkpoint), root, _study_split(root),
                                            sources_per_group=TRANSPORT_SOURCES, targets_per_group=TRANSPORT_TARGETS,
                                            device=str(model.device))


@st.cache_data(show_spinner="Projecting the codes…", max_entries=12)
def projection(checkpoint: str, root: str, method: str) -> pd.DataFrame:
    """:func:`cvae.latent.analysis.project` of the cohort table: ``x, y, subject, group``."""
    return project(cohort_table(checkpoint, root), method)


@st.cache_data(show_spinner="Cross-validating the SVM…", max_entries=4)
def classification(checkpoint: str, root: str, permutations: int = 0) -> ClassificationReport:
    """:func:`cvae.latent.analysis.classify` of the cohort table (leak-free and paper protocols; 10 folds, fewer
    when the smallest group is smaller: the report's notes say so, and the page shows them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return classify(cohort_table(checkpoint, root), permutations=permutations)
