"""Reader for the ACDC cardiac MRI data set (and any tree laid out like it).

Layout: ``<root>/{training,testing}/patientNNN/`` (newer zips add a ``database/`` level, and ``<root>`` may also be a
split folder or hold patient folders directly). Each patient folder has ``Info.cfg`` and, for the end-diastolic (ED)
and end-systolic (ES) frames, ``patientNNN_frameYY.nii.gz`` plus the segmentation ``patientNNN_frameYY_gt.nii.gz``
(YY = 1-based frame number, two digits), or only the cine ``patientNNN_4d.nii.gz``. Volumes come back in nibabel's
array order ``(X, Y, Z)``, spacing in mm; the files are read by :mod:`cvae.data.volumes`.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.data.labels import GROUPS
from cvae.data.volumes import ACDCError, load_label, load_nifti

SPLITS: tuple[str, ...] = ("training", "testing")
_NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """``splits`` as a tuple in the layout's order, each one of :data:`SPLITS`; one-line ``ValueError`` otherwise."""
    chosen = tuple(splits)
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown or not chosen:
        raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {', '.join(map(str, chosen)) or 'none'}")
    return tuple(s for s in SPLITS if s in chosen)


@dataclass(frozen=True)
class SubjectInfo:
    """What ``Info.cfg`` and the folder say about one patient; nothing is loaded yet.

    ``split`` is ``"training"``, ``"testing"`` or ``""`` when the folder is not inside a split folder. ``group`` is
    ``""`` when ``Info.cfg`` has no ``Group`` line (a user's unlabelled cohort). ``ed_image``/``es_image`` are the
    frame files, or the cine ``patientNNN_4d`` file when a frame file is absent (:attr:`frames_from_cine`; the frame
    ``ed_frame``/``es_frame`` of it is then read). Label paths are ``None`` when the ``_gt`` file does not exist.
    ``height`` is in cm and ``weight`` in kg (``None`` if absent).
    """

    subject: str
    split: str
    group: str
    ed_frame: int
    es_frame: int
    height: float | None
    weight: float | None
    nb_frame: int | None
    directory: Path
    ed_image: Path
    es_image: Path
    ed_label: Path | None
    es_label: Path | None

    @property
    def group_index(self) -> int:
        """Integer class index of ``group`` in ``cvae.data.labels.GROUPS``; -1 when the group is unknown."""
        return GROUPS.index(self.group) if self.group in GROUPS else -1

    @property
    def frames_from_cine(self) -> bool:
        """Whether the ED and ES images are read from the cine ``_4d`` file (no frame files in the folder)."""
        return self.ed_image.name.startswith(f"{self.subject}_4d")


@dataclass
class Subject:
    """One loaded patient: ED and ES frames on the same voxel grid.

    ``ed_image``/``es_image`` are float32 ``(X, Y, Z)``; ``ed_label``/``es_label`` uint8 ``(X, Y, Z)`` with values in
    {0, 1, 2, 3} or ``None``; ``affine`` (4, 4) maps voxel indices to world mm; ``spacing`` (3,) is the voxel size
    in mm.
    """

    info: SubjectInfo
    ed_image: np.ndarray
    es_image: np.ndarray
    ed_label: np.ndarray | None
    es_label: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray


def read_info_cfg(path: str | Path) -> dict[str, object]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dict.

    ``ED``, ``ES`` and ``NbFrame`` become ``int``, ``Height`` and ``Weight`` ``float``, ``Group`` stays a string (one of
    ``GROUPS``; optional: a cohort of one's own may not know it); other keys are kept as stripped strings. Raises
    ``ACDCError`` naming the file and the line or key at fault for an unreadable file, a line without ``:``, a missing
    or non-numeric ED/ES, or an unknown group.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ACDCError(f"{path}: cannot read Info.cfg ({exc.strerror or exc})") from exc
    raw: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ACDCError(f"{path}: line {number} is not 'Key: value': {line.strip()!r}")
        raw[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in raw:
            raise ACDCError(f"{path}: missing '{key}:' line")
    if "Group" in raw and raw["Group"] not in GROUPS:
        raise ACDCError(f"{path}: unknown group {raw['Group']!r} (expected one of {', '.join(GROUPS)})")
    info: dict[str, object] = dict(raw)
    for key in ("ED", "ES", "NbFrame"):
        if key in raw:
            info[key] = _parse_number(path, key, raw[key], integer=True)
    for key in ("Height", "Weight"):
        if key in raw:
            info[key] = _parse_number(path, key, raw[key], integer=False)
    for key in ("ED", "ES"):
        if info[key] < 1:  # type: ignore[operator]
            raise ACDCError(f"{path}: {key} frame must be >= 1 (frames are numbered from 1), got {info[key]}")
    return info


def _parse_number(path: Path, key: str, value: str, integer: bool) -> int | float:
    """``value`` as a finite number (an integral one when ``integer``), else ``ACDCError`` naming the file and key."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number) or (integer and number != int(number)):
        kind = "an integer" if integer else "a number"
        raise ACDCError(f"{path}: {key} must be {kind}, got {value!r}")
    return int(number) if integer else number


def subject_info(directory: str | Path, split: str = "") -> SubjectInfo:
    """Read ``<directory>/Info.cfg`` and name the ED/ES frame files of the patient in ``directory``.

    Frame files may be ``.nii.gz`` or ``.nii``; when one is missing and the folder holds the cine
    ``patientNNN_4d.nii.gz`` the frame is read from it, else the image keeps its expected ``.nii.gz`` path (the error
    comes when loading); a missing ``_gt`` label gives ``None``. Raises ``ACDCError`` for a missing or malformed
    ``Info.cfg``.
    """
    directory = Path(directory)
    cfg = directory / "Info.cfg"
    if not cfg.is_file():
        raise ACDCError(f"{cfg}: Info.cfg not found; every ACDC patient folder needs one")
    info = read_info_cfg(cfg)
    subject = directory.name
    ed, es = int(info["ED"]), int(info["ES"])  # type: ignore[call-overload]
    cine = _frame_path(directory, f"{subject}_4d", required=False)
    images = [_frame_path(directory, f"{subject}_frame{frame:02d}", required=cine is None) or cine
              for frame in (ed, es)]
    return SubjectInfo(
        subject=subject,
        split=split,
        group=str(info.get("Group", "")),
        ed_frame=ed,
        es_frame=es,
        height=info.get("Height"),  # type: ignore[arg-type]
        weight=info.get("Weight"),  # type: ignore[arg-type]
        nb_frame=info.get("NbFrame"),  # type: ignore[arg-type]
        directory=directory,
        ed_image=images[0],  # type: ignore[arg-type]
        es_image=images[1],  # type: ignore[arg-type]
        ed_label=_frame_path(directory, f"{subject}_frame{ed:02d}_gt", required=False),
        es_label=_frame_path(directory, f"{subject}_frame{es:02d}_gt", required=False),
    )


def _frame_path(directory: Path, stem: str, required: bool) -> Path | None:
    """Existing ``stem.nii.gz`` or ``stem.nii`` in ``directory``; if neither exists the ``.nii.gz`` path, or ``None``
    when not ``required``."""
    for suffix in _NIFTI_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return directory / f"{stem}{_NIFTI_SUFFIXES[0]}" if required else None


def patient_directories(root: str | Path, split: str | None = None) -> list[tuple[Path, str]]:
    """``(patient folder, split)`` pairs under ``root``, sorted by patient id.

    ``root`` may hold patient folders directly (split ``""``, or the folder's name if it is ``training``/``testing``),
    ``training``/``testing`` folders, or a ``database`` folder with those. Only directories named ``patient*`` count
    (some copies hold a stray *file* ``training/patient001.Info.cfg``). ``split`` (``"training"``/``"testing"``)
    keeps only that split. Raises ``ACDCError`` if ``root`` is missing, ``split`` unknown or nothing is found.
    """
    root = Path(root).expanduser()
    if split is not None and split not in SPLITS:
        raise ACDCError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} or None for all")
    if not root.is_dir():
        raise ACDCError(f"{root}: data folder not found")
    found: list[tuple[Path, str]] = []
    for base in (root, root / "database"):
        for name in SPLITS:
            found += [(d, name) for d in _patients_in(base / name)]
    if not found:
        own_split = root.name if root.name in SPLITS else ""
        found = [(d, own_split) for d in _patients_in(root)]
    if split is not None:
        found = [(d, s) for d, s in found if s in (split, "")]
    if not found:
        wanted = f"{split} " if split else ""
        raise ACDCError(
            f"{root}: no {wanted}patient folders found (expected <root>/training/patientNNN, "
            "<root>/database/training/patientNNN or patient folders directly under <root>)"
        )
    return sorted(found, key=lambda item: (item[0].name, item[1]))


def _patients_in(folder: Path) -> list[Path]:
    """Directories named ``patient*`` directly inside ``folder`` (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("patient*") if p.is_dir()]


def find_subjects(root: str | Path, split: str | None = None, skip_bad: bool = False) -> list[SubjectInfo]:
    """Every patient under ``root`` (see ``patient_directories`` for layouts) as a ``SubjectInfo``, sorted by id.

    A patient whose ``Info.cfg`` is missing or malformed raises ``ACDCError``, or is skipped with a warning when
    ``skip_bad``.
    """
    infos = []
    for directory, name in patient_directories(root, split):
        try:
            infos.append(subject_info(directory, name))
        except ACDCError as exc:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {directory.name}: {exc}", stacklevel=2)
    return infos


def load_subject(info: SubjectInfo) -> Subject:
    """Load the ED and ES frames (and labels if present) of one patient, from the frame files or the cine.

    Raises ``ACDCError`` naming the file for anything ``load_nifti``/``load_label`` rejects, and for frames or labels
    whose shape or affine differ from the ED image's.
    """
    cine = info.frames_from_cine
    ed_image, affine, spacing = load_nifti(info.ed_image, frame=info.ed_frame if cine else None)
    es_image, es_affine, _ = load_nifti(info.es_image, frame=info.es_frame if cine else None)
    _check_same_grid(info.es_image, es_image.shape, es_affine, ed_image.shape, affine, info.ed_image)
    labels = []
    for label_path in (info.ed_label, info.es_label):
        if label_path is None:
            labels.append(None)
            continue
        label, label_affine = load_label(label_path)
        _check_same_grid(label_path, label.shape, label_affine, ed_image.shape, affine, info.ed_image)
        labels.append(label)
    return Subject(info, ed_image, es_image, labels[0], labels[1], affine, spacing)


def _check_same_grid(
    path: Path, shape: tuple[int, ...], affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray,
    ref_path: Path,
) -> None:
    """``ACDCError`` naming ``path`` if its shape or affine (to 1e-3 mm) differs from the reference volume's."""
    if tuple(shape) != tuple(ref_shape):
        raise ACDCError(f"{path}: shape {tuple(shape)} does not match {ref_path.name} shape {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise ACDCError(f"{path}: affine (voxel-to-world) differs from {ref_path.name}'s; frames must share a grid")


def load_cohort(root: str | Path, split: str | None = None, skip_bad: bool = True) -> Iterator[Subject]:
    """Yield every patient under ``root`` loaded, sorted by id.

    A bad patient (malformed ``Info.cfg``, missing/corrupt/inconsistent files) is skipped with a warning naming it
    when ``skip_bad``; otherwise its ``ACDCError`` propagates.
    """
    for directory, name in patient_directories(root, split):
        try:
            yield load_subject(subject_info(directory, name))
        except ACDCError as exc:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {directory.name}: {exc}", stacklevel=2)
