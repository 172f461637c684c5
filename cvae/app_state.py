"""What the Streamlit pages share: the active checkpoint and cohort, cached loaders and computations, the page guard.

Pages only read widgets, call the functions here (or in :mod:`cvae.figures`) and show what comes back. The
computations are plain functions of a model and arrays (``register_pair``, ``decode_pair``...) that tests call
directly; the ``st.cache_*`` wrappers around them take names and paths (hashable, cheap keys):

* ``st.cache_resource``: the model of a checkpoint (one per weights file, re-read when the file changes);
* ``st.cache_data``: cohort listings, preprocessed pairs (themselves cached on disk by ``PairDataset``),
  registrations, decoded codes, the latent table and projections (also cached on disk by :mod:`cvae.latent` and
  :mod:`cvae.analysis`).

Environment: ``CVAE_DATA`` (cohort, :func:`cvae.paths.data_root`), ``CVAE_CHECKPOINT`` (default checkpoint name or
folder, ``synthetic-acdc``), ``CVAE_CHECKPOINTS`` (extra folder of named checkpoints), ``CVAE_CACHE``,
``CVAE_RESULTS``.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from cvae import latent, transport_study
from cvae.analysis import classify, project
from cvae.checkpoint import CHECKPOINT_DIRS, CONFIG_FILE, MODEL_FILE, load_checkpoint, read_config, resolve_checkpoint
from cvae.clinical import clinical_measures
from cvae.data.acdc import ACDCError, find_subjects
from cvae.data.dataset import PairDataset
from cvae.data.labels import STRUCTURES
from cvae.data.preprocess import PreprocessedPair
from cvae.data.synthetic import make_cohort
from cvae.figures import RegistrationVolumes, extract_slice
from cvae.fields import warp
from cvae.metrics import mean_displacement_mm, negative_jacobian_fraction, structure_scores
from cvae.model import CVAERegistration
from cvae.paths import data_root
from cvae.priors import CodePrior
from cvae.refine import register_refined
from cvae.register import register_files
from cvae.uploads import Upload, staged_uploads

__all__ = [
    "ENV_CHECKPOINT", "DEFAULT_CHECKPOINT", "DEMO_COHORT", "LOG", "default_checkpoint", "checkpoint_choices",
    "active_checkpoint", "model_card", "get_model", "grid_of", "cohort_root", "is_default_cohort", "cohort_missing",
    "create_demo_cohort", "cohort_subjects", "subject_options", "subject_pair", "pair_for", "Registration",
    "register_pair", "register_subject", "register_uploads", "outputs_zip", "subject_outputs_zip", "uploads_zip",
    "Decoded", "decode_pair", "subject_posterior", "decode_subject", "walk_slices", "posterior_std", "Transported",
    "transport_subjects", "TRANSPORT_SOURCES", "TRANSPORT_TARGETS", "transport_study_cached", "transport_pairs",
    "cohort_table", "cohort_code_prior", "projection", "classification", "friendly_message", "show_error", "guard",
    "subject_select", "selected_subject", "ensure_app_entry",
]

LOG = logging.getLogger("cvae.app")
ENV_CHECKPOINT = "CVAE_CHECKPOINT"
DEFAULT_CHECKPOINT = "synthetic-acdc"
#: The demo cohort written on first start when the default cohort folder is missing (``make cohort`` writes the
#: full 234 + 100 subjects instead): 10 test subjects per group, enough for the 10-fold classification.
DEMO_COHORT: dict[str, int] = {"n_train": 0, "n_test": 50, "seed": 0}
_COHORT_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# checkpoint


def default_checkpoint() -> str:
    """``$CVAE_CHECKPOINT`` (a name or a folder) or ``synthetic-acdc``."""
    return os.environ.get(ENV_CHECKPOINT) or DEFAULT_CHECKPOINT


def _is_cvae_checkpoint(folder: Path) -> bool:
    try:
        read_config(folder)
    except ValueError:  # CheckpointError: another model's folder (e.g. VoxelMorph's) or a broken one
        return False
    return True


def checkpoint_choices() -> list[str]:
    """The default checkpoint first, then every named cvae-reg checkpoint found in the checkpoint folders."""
    roots = list(CHECKPOINT_DIRS)
    if os.environ.get("CVAE_CHECKPOINTS"):
        roots.insert(0, Path(os.environ["CVAE_CHECKPOINTS"]).expanduser())
    names = [default_checkpoint()]
    for root in roots:
        if root.is_dir():
            names += sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file() and _is_cvae_checkpoint(p))
    return list(dict.fromkeys(names))


def active_checkpoint() -> str:
    """The checkpoint picked in the sidebar (session state ``checkpoint``), else the default."""
    return st.session_state.get("checkpoint") or default_checkpoint()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat() if path.exists() else None
    return (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)


def model_card(checkpoint: str) -> dict[str, Any]:
    """``{"folder", "config", "readme"}`` of a checkpoint, without loading its weights (``CheckpointError`` if
    it does not exist)."""
    folder = resolve_checkpoint(checkpoint)
    readme = folder / "README.md"
    return {"folder": folder, "config": read_config(folder),
            "readme": readme.read_text(errors="replace") if readme.is_file() else ""}


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _load_model(folder: str, stamp: tuple[int, int]) -> tuple[CVAERegistration, dict]:
    del stamp  # part of the cache key only: a rewritten weights file is loaded again
    model, config = load_checkpoint(folder, "auto")
    return model, config


def get_model(checkpoint: str) -> tuple[CVAERegistration, dict]:
    """``(model in eval mode, config)`` of a checkpoint name or folder, cached per weights file."""
    folder = resolve_checkpoint(checkpoint)
    return _load_model(str(folder), _stamp(folder / MODEL_FILE))


def grid_of(model: CVAERegistration, config: dict) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(size in voxels, spacing in mm)`` of the preprocessing grid a checkpoint was trained on."""
    return (tuple(int(n) for n in model.config.image_size),  # type: ignore[return-value]
            tuple(float(s) for s in config["spacing"]))


# ---------------------------------------------------------------------------------------------------------------
# cohort


def cohort_root() -> Path:
    """The cohort folder of the app: :func:`cvae.paths.data_root` (``$CVAE_DATA`` or the synthetic demo)."""
    return data_root()


def is_default_cohort(root: Path) -> bool:
    """Whether ``root`` is the synthetic demo cohort's default place (the app may create it)."""
    return not os.environ.get("CVAE_DATA") and root == data_root()


def cohort_missing(root: Path) -> bool:
    """True when ``root`` holds no patient folder (missing or empty)."""
    try:
        find_subjects(root, None, skip_bad=True)
    except ACDCError:
        return True
    return False


def create_demo_cohort(root: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the synthetic demo cohort (:data:`DEMO_COHORT`) to ``root``: into a temporary sibling, renamed at the
    end, so an interrupted start leaves no half cohort. Only one session of the server writes it."""
    with _COHORT_LOCK:
        if not cohort_missing(root):
            return root
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            make_cohort(tmp, workers=min(2, os.cpu_count() or 1), progress=progress, **DEMO_COHORT)
            if root.exists():
                root.rmdir()  # an empty folder (cohort_missing said so)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return root


def _tree_stamp(root: Path) -> tuple:
    return tuple(_stamp(p) for p in (root, root / "training", root / "testing", root / "database"))


@st.cache_data(show_spinner=False, max_entries=4)
def _cohort_subjects(root: str, stamp: tuple) -> pd.DataFrame:
    del stamp
    infos = find_subjects(root, None, skip_bad=True)
    return pd.DataFrame([{"subject": i.subject, "split": i.split, "group": i.group, "height": i.height,
                          "weight": i.weight, "labels": i.ed_label is not None and i.es_label is not None}
                         for i in infos])


def cohort_subjects(root: Path | None = None) -> pd.DataFrame:
    """One row per patient folder: ``subject, split, group, height (cm), weight (kg), labels`` (both ED/ES
    segmentations present). ``ACDCError`` (one line) when the folder is missing or holds no patient."""
    root = Path(root or cohort_root())
    return _cohort_subjects(str(root), _tree_stamp(root))


def subject_options(root: Path | None = None) -> pd.DataFrame:
    """The subjects the pages offer: the test split when there is one (the codes the model did not train on),
    else every subject."""
    table = cohort_subjects(root)
    testing = table[table["split"] == "testing"]
    return (testing if len(testing) else table).reset_index(drop=True)


@st.cache_data(show_spinner="Preprocessing the subject…", max_entries=32)
def subject_pair(root: str, subject: str, size: tuple[int, ...], spacing: tuple[float, ...]) -> PreprocessedPair:
    """The preprocessed (fixed = ES, moving = ED) pair of one subject (also cached on disk by ``PairDataset``)."""
    return PairDataset(root, split=None, size=size, spacing=spacing, subjects=[subject]).pair(0)


def _pair_of(checkpoint: str, root: str, subject: str) -> tuple[CVAERegistration, dict, PreprocessedPair]:
    model, config = get_model(checkpoint)
    size, spacing = grid_of(model, config)
    return model, config, subject_pair(root, subject, size, spacing)


def pair_for(checkpoint: str, root: str, subject: str) -> PreprocessedPair:
    """The preprocessed pair of a subject on the grid of a checkpoint."""
    return _pair_of(checkpoint, root, subject)[2]


def _tensor(volume: np.ndarray, model: CVAERegistration) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(model.device)


def _warp_label(label: np.ndarray | None, displacement: torch.Tensor) -> np.ndarray | None:
    """Nearest-neighbour warp of a label map ``(X, Y, Z)`` by ``(1, 3, X, Y, Z)`` voxels; uint8."""
    if label is None:
        return None
    moved = warp(torch.from_numpy(label.astype(np.float32))[None, None].to(displacement.device), displacement,
                 mode="nearest")
    return moved[0, 0].round().to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# registration


@dataclass
class Registration:
    """A registration on the model grid: what the viewer shows, the metrics table and a summary.

    ``metrics`` has one row per structure with Dice (%) and HD95 (mm) before and after registration (empty without
    both segmentations); ``summary`` holds ``folding %``, ``mean |u| mm``, ``seconds`` (and, for a refined code,
    ``refine steps``, ``LCC before`` and ``LCC after``); ``mu``/``sigma`` ``(d,)`` are the posterior of the code
    (``mu`` the refined code after a refinement).
    """

    volumes: RegistrationVolumes
    metrics: pd.DataFrame
    summary: dict[str, float]
    mu: np.ndarray
    sigma: np.ndarray


def _structure_table(moving_label: np.ndarray, warped_label: np.ndarray, fixed_label: np.ndarray,
                     spacing: Sequence[float]) -> pd.DataFrame:
    before = structure_scores(moving_label, fixed_label, spacing)
    after = structure_scores(warped_label, fixed_label, spacing)
    rows = [{"structure": name, "Dice before (%)": 100 * before[name]["dice"],
             "Dice after (%)": 100 * after[name]["dice"], "HD95 before (mm)": before[name]["hd95"],
             "HD95 after (mm)": after[name]["hd95"]} for name in STRUCTURES]
    table = pd.DataFrame(rows)
    mean = table.drop(columns="structure").mean(numeric_only=True, skipna=True)
    return pd.concat([table, pd.DataFrame([{"structure": "mean", **mean.to_dict()}])], ignore_index=True)


def register_pair(model: CVAERegistration, pair: PreprocessedPair, refine_steps: int = 0) -> Registration:
    """Register ``pair.moving`` (ED) to ``pair.fixed`` (ES) in one forward pass, or with the code refined by
    ``refine_steps`` gradient steps first (:func:`cvae.refine.register_refined`), and measure the result."""
    fixed, moving = _tensor(pair.fixed, model), _tensor(pair.moving, model)
    start = time.perf_counter()
    refinement = None
    if refine_steps:
        result, refinement = register_refined(model, fixed, moving, refine_steps, inverse=False)
    else:
        with torch.no_grad():
            result = model.register(fixed, moving, inverse=False)
    seconds = time.perf_counter() - start
    spacing = tuple(float(s) for s in pair.spacing)
    warped_label = _warp_label(pair.moving_label, result.displacement)
    metrics = pd.DataFrame()
    if pair.fixed_label is not None and pair.moving_label is not None:
        metrics = _structure_table(pair.moving_label, warped_label, pair.fixed_label, spacing)
    volumes = RegistrationVolumes(
        fixed=pair.fixed, moving=pair.moving, warped=result.warped[0, 0].cpu().numpy(),
        displacement=result.displacement[0].cpu().numpy(), jacobian=result.jacobian[0].cpu().numpy(),
        spacing=spacing, fixed_label=pair.fixed_label, moving_label=pair.moving_label, warped_label=warped_label)
    summary = {"folding %": 100 * negative_jacobian_fraction(result.jacobian),
               "mean |u| mm": mean_displacement_mm(result.displacement, spacing), "seconds": seconds}
    if refinement is not None:
        summary.update({"refine steps": float(refine_steps), "LCC before": float(refinement.lcc_before[0]),
                        "LCC after": float(refinement.lcc_after[0])})
    with torch.no_grad():
        logvar = result.logvar if result.logvar is not None else model.encode(fixed, moving)[1]
    return Registration(volumes, metrics, summary, result.mu[0].cpu().numpy(),
                        torch.exp(0.5 * logvar[0]).cpu().numpy())


@st.cache_data(show_spinner="Registering…", max_entries=8)
def register_subject(checkpoint: str, root: str, subject: str, refine_steps: int = 0) -> Registration:
    """Registration of one cohort subject, ED (moving) to ES (fixed); see :func:`register_pair`."""
    model, _, pair = _pair_of(checkpoint, root, subject)
    return register_pair(model, pair, refine_steps)


@st.cache_data(show_spinner="Registering the uploaded pair…", max_entries=4)
def register_uploads(checkpoint: str, uploads: tuple[Upload | None, ...], refine_steps: int = 0) -> Registration:
    """Registration of uploaded files ``(fixed, moving, fixed_seg, moving_seg)``; ``UploadError`` for bad files.
    The files live in a temporary folder only while they are read."""
    model, config = get_model(checkpoint)
    size, spacing = grid_of(model, config)
    with staged_uploads(*uploads) as staged:
        pair = staged.preprocess(size, spacing)
    return register_pair(model, pair, refine_steps)


def outputs_zip(checkpoint: str, fixed: Path, moving: Path, fixed_seg: Path | None = None,
                moving_seg: Path | None = None, refine_steps: int = 0) -> bytes:
    """The NIfTI outputs and ``metrics.json`` of ``cvae register`` as a zip archive (bytes); the outputs are
    written to a temporary folder that is removed before returning."""
    with tempfile.TemporaryDirectory(prefix="cvae-register-") as tmp:
        out = Path(tmp) / "outputs"
        register_files(fixed, moving, out, checkpoint=str(resolve_checkpoint(checkpoint)), fixed_seg=fixed_seg,
                       moving_seg=moving_seg, refine_steps=refine_steps)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, path.name)
    return buffer.getvalue()


def subject_outputs_zip(checkpoint: str, root: str, subject: str, refine_steps: int = 0) -> bytes:
    """:func:`outputs_zip` of a cohort subject: ES fixed, ED moving, with their segmentations when present."""
    infos = [i for i in find_subjects(root, None, skip_bad=True) if i.subject == subject]
    if not infos:
        raise ValueError(f"subject {subject} is not in the cohort {root}")
    info = infos[0]
    labels = info.es_label is not None and info.ed_label is not None
    return outputs_zip(checkpoint, info.es_image, info.ed_image, info.es_label if labels else None,
                       info.ed_label if labels else None, refine_steps)


def uploads_zip(checkpoint: str, uploads: tuple[Upload | None, ...], refine_steps: int = 0) -> bytes:
    """:func:`outputs_zip` of uploaded files (staged in a temporary folder removed afterwards)."""
    with staged_uploads(*uploads) as staged:
        return outputs_zip(checkpoint, staged.paths["fixed"], staged.paths["moving"], staged.paths.get("fixed_seg"),
                           staged.paths.get("moving_seg"), refine_steps)


# ---------------------------------------------------------------------------------------------------------------
# latent space


@dataclass
class Decoded:
    """The deformation decoded from one code for one ED image: ``warped`` and ``jacobian`` ``(X, Y, Z)``,
    ``displacement`` ``(3, X, Y, Z)`` voxels, ``warped_label`` (the ED labels carried along, a simulated ES) or
    ``None``, and the LV/RV volumes (mL) and ejection fractions (%) of ED -> simulated ES."""

    warped: np.ndarray
    displacement: np.ndarray
    jacobian: np.ndarray
    warped_label: np.ndarray | None
    measures: dict[str, float]
    seconds: float


@torch.inference_mode()
def decode_pair(model: CVAERegistration, z: Sequence[float], moving: np.ndarray, moving_label: np.ndarray | None,
                spacing: Sequence[float]) -> Decoded:
    """Decode ``z (d,)`` for the ED image ``moving (X, Y, Z)``; carry its labels along to a simulated ES."""
    start = time.perf_counter()
    result = latent.decode_codes(model, np.asarray(z, dtype=np.float32), moving)
    seconds = time.perf_counter() - start
    warped_label = _warp_label(moving_label, result.displacement)
    measures = {} if warped_label is None else {
        k: v for k, v in clinical_measures(moving_label, warped_label, spacing).items()
        if k in latent.WARPED_MEASURES}
    return Decoded(result.warped[0, 0].cpu().numpy(), result.displacement[0].cpu().numpy(),
                   result.jacobian[0].cpu().numpy(), warped_label, measures, seconds)


@st.cache_data(show_spinner="Encoding…", max_entries=32)
def subject_posterior(checkpoint: str, root: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` ``(d,)`` of ``q(z | ES, ED)`` for one subject (the encoder only: fast)."""
    model, _, pair = _pair_of(checkpoint, root, subject)
    with torch.inference_mode():
        mu, logvar = model.encode(_tensor(pair.fixed, model), _tensor(pair.moving, model))
    return mu[0].cpu().numpy(), torch.exp(0.5 * logvar[0]).cpu().numpy()


@st.cache_data(show_spinner="Decoding…", max_entries=64)
def decode_subject(checkpoint: str, root: str, subject: str, z: tuple[float, ...]) -> Decoded:
    """:func:`decode_pair` for a cohort subject's ED image (cached per code: moving a slider back is instant)."""
    model, _, pair = _pair_of(checkpoint, root, subject)
    return decode_pair(model, z, pair.moving, pair.moving_label, pair.spacing)


@st.cache_data(show_spinner="Decoding the walk…", max_entries=8)
def walk_slices(checkpoint: str, root: str, subject: str, z: tuple[float, ...], dim: int,
                values: tuple[float, ...], view: str, index: int) -> list[np.ndarray]:
    """One 2-D slice of the deformed ED image per value of latent coordinate ``dim`` (0-based), others fixed at
    ``z``: the frames of the walk animation."""
    model, _, pair = _pair_of(checkpoint, root, subject)
    result = latent.walk(model, pair.moving, np.asarray(z, dtype=np.float32), dim, values)
    return [extract_slice(w[0], view, index) for w in result.warped.cpu().numpy()]


@st.cache_data(show_spinner="Sampling the posterior…", max_entries=8)
def posterior_std(checkpoint: str, root: str, subject: str, k: int, seed: int = 0) -> np.ndarray:
    """Per-voxel std (mm) ``(X, Y, Z)`` of the displacement over ``k`` codes drawn from ``q(z | ES, ED)``."""
    model, _, pair = _pair_of(checkpoint, root, subject)
    return latent.uncertainty(model, pair.fixed, pair.moving, k, seed=seed, spacing=pair.spacing).cpu().numpy()


@dataclass
class Transported:
    """A source subject's motion applied to a target's ED image, with the images and labels to show and a
    comparison table (LV/RV volumes in mL and EF in % of the source, the target and the simulated target ES)."""

    source: PreprocessedPair
    target: PreprocessedPair
    simulated: Decoded
    table: pd.DataFrame


@st.cache_data(show_spinner="Transporting the deformation…", max_entries=8)
def transport_subjects(checkpoint: str, root: str, source: str, target: str) -> Transported:
    """Decode the source's code ``mu`` (its ED -> ES motion) for the target's ED image: a simulated target ES."""
    model, _, src = _pair_of(checkpoint, root, source)
    _, _, tgt = _pair_of(checkpoint, root, target)
    mu, _ = subject_posterior(checkpoint, root, source)
    simulated = decode_pair(model, mu, tgt.moving, tgt.moving_label, tgt.spacing)
    rows = []
    for name, pair, measures in ((f"source {source} (real)", src, None), (f"target {target} (real)", tgt, None),
                                 (f"target {target}, simulated ES", tgt, simulated.measures)):
        if measures is None:
            measures = clinical_measures(pair.moving_label, pair.fixed_label, pair.spacing) \
                if pair.moving_label is not None else {}
        rows.append({"": name, **{k: measures.get(k, float("nan")) for k in ("LVEDV", "LVESV", "LVEF", "RVEF")}})
    return Transported(src, tgt, simulated, pd.DataFrame(rows).set_index(""))


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


def _study_split(root: str) -> str | None:
    """The split the cohort-level pages study: ``"testing"``, or ``None`` (every subject) without a test split."""
    return "testing" if (subject_options(Path(root))["split"] == "testing").any() else None


#: Sources and targets per group of the Transport page's group table (as in ``benchmarks/latent_claims.py``).
TRANSPORT_SOURCES, TRANSPORT_TARGETS = 4, 2


def transport_study_cached(checkpoint: str, root: str) -> bool:
    """Whether the group transport table of this checkpoint and cohort is on disk already."""
    return transport_study.cached_path(resolve_checkpoint(checkpoint), root, _study_split(root), TRANSPORT_SOURCES,
                                       TRANSPORT_TARGETS).is_file()


@st.cache_data(show_spinner="Transporting every source code onto every target (cached on disk afterwards)…",
               max_entries=4)
def transport_pairs(checkpoint: str, root: str) -> pd.DataFrame:
    """:func:`cvae.transport_study.cohort_transport` of the studied split: one row per (source, target) pair."""
    model, _ = get_model(checkpoint)
    return transport_study.cohort_transport(resolve_checkpoint(checkpoint), root, _study_split(root),
                                            sources_per_group=TRANSPORT_SOURCES, targets_per_group=TRANSPORT_TARGETS,
                                            device=str(model.device))


@st.cache_data(show_spinner="Projecting the codes…", max_entries=12)
def projection(checkpoint: str, root: str, method: str) -> pd.DataFrame:
    """:func:`cvae.analysis.project` of the cohort table: ``x, y, subject, group``."""
    return project(cohort_table(checkpoint, root), method)


@st.cache_data(show_spinner="Cross-validating the SVM…", max_entries=4)
def classification(checkpoint: str, root: str, folds: int = 10, permutations: int = 0):
    """:func:`cvae.analysis.classify` of the cohort table (leak-free and paper protocols)."""
    return classify(cohort_table(checkpoint, root), folds=folds, permutations=permutations)


# ---------------------------------------------------------------------------------------------------------------
# errors


def friendly_message(exc: BaseException) -> str:
    """One line for the user: the message of a known bad-input error, else the error type and a log pointer."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (ValueError, FileNotFoundError)):  # CheckpointError, ACDCError, UploadError are ValueErrors
        return text or type(exc).__name__
    return f"Unexpected error ({type(exc).__name__}: {text[:200]}). The details are in the server log."


def show_error(exc: BaseException, where: str = "") -> None:
    """Log the exception with its traceback server-side and show a one-line ``st.error`` in the page."""
    LOG.error("error in %s", where or "the app", exc_info=exc)
    st.error(friendly_message(exc), icon="⚠️")


def guard(body: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for page bodies and fragments: an exception becomes a friendly ``st.error`` (the rest of the app
    keeps working) and a server-side log entry. Streamlit's own control flow (rerun, stop, switch_page) derives
    from ``BaseException`` and passes through."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error of a page ends as a message, never a traceback
            show_error(exc, getattr(body, "__qualname__", ""))
            return None

    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# widgets shared by the pages


def ensure_app_entry() -> None:
    """Call first in every page: make the page run through ``app.py`` (navigation, sidebar, page config).

    Until some session has run ``app.py``'s ``st.navigation``, Streamlit treats a ``pages/`` folder next to the
    entry point as a legacy multipage app and runs a page opened by its URL (e.g. ``/register`` right after the
    server started) on its own. In that case this runs ``app.py`` in the same script run (it opens the same page,
    widget events included) and stops the stand-alone run.
    """
    from streamlit.runtime.pages_manager import PagesManager  # noqa: PLC0415 - Streamlit internals, one flag
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx  # noqa: PLC0415

    ctx = get_script_run_ctx()
    if not PagesManager.uses_pages_directory or ctx is None:
        return
    entry = Path(ctx.main_script_path)
    exec(compile(entry.read_text(), str(entry), "exec"), {"__name__": "__main__", "__file__": str(entry)})  # noqa: S102
    st.stop()


def subject_select(label: str, key: str, prefer_group: str | None = None, root: Path | None = None) -> str:
    """A selectbox of the cohort's subjects shown as ``patientNNN · GROUP``; the first subject of
    ``prefer_group`` is the default. A value set in ``st.session_state[key]`` beforehand (e.g. by the Embedding
    page) is kept when it is a subject of the list."""
    options = subject_options(root)
    names = options["subject"].tolist()
    groups = dict(zip(options["subject"], options["group"]))
    if st.session_state.get(key) not in groups:
        st.session_state.pop(key, None)
        preferred = [s for s in names if groups[s] == prefer_group]
        st.session_state[key] = (preferred or names)[0]
    return st.selectbox(label, names, key=key, format_func=lambda s: f"{s} · {groups[s]}")


def selected_subject(event: Any) -> str | None:
    """Subject id of the first point selected in an :func:`cvae.figures.embedding_figure` chart event
    (``customdata[0]``), or ``None`` when nothing is selected."""
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    for point in points or []:
        custom = point.get("customdata")
        if custom:
            return str(custom[0])
    return None
