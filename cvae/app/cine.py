"""The cines the Motion page tracks: a cohort subject's ``patientNNN_4d.nii.gz``, the synthetic generator's rendering
of a demo-cohort subject that has no cine (cached on disk), or an uploaded cine. No Streamlit here.

The synthetic demo cohort (``cvae synth``, :func:`cvae.data.synthetic.make_cohort`) writes only the ED and ES frames
of each subject unless ``--cine`` is given, but every subject is a deterministic function of ``(split, index,
seed)``: training subject ``k`` (0-based) is ``patient{k + 1}``, and the test subjects are numbered on after the
training ones, so the first test folder is test subject 0. :func:`synthetic_identity` reads that mapping off a folder
(seed :data:`SYNTHETIC_SEED`, the default of ``cvae synth``) and :func:`cohort_cine` checks it: the generator's ED
frame must equal the folder's ED image voxel for voxel, else the folder is not that subject and no cycle is made up.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.data.acdc import SubjectInfo, find_subjects
from cvae.data.synthetic import make_subject
from cvae.data.volumes import load_cine, load_label, load_nifti
from cvae.io.atomic import atomic_write
from cvae.io.uploads import Upload, staged_cine
from cvae.paths import cache_root

__all__ = ["SYNTHETIC_SEED", "Cine", "subject_info", "cine_file", "synthetic_identity", "rendered_path",
           "needs_rendering", "cohort_cine", "uploaded_cine"]

#: The seed of the synthetic cohorts the app renders cycles for (the default of ``cvae synth``).
SYNTHETIC_SEED = 0
#: Bump when the rendered cines' file or the generator's output changes, so that cached cines are rendered again.
_RENDER_VERSION = "1"
_PATIENT = re.compile(r"patient(\d+)$")


@dataclass
class Cine:
    """One cardiac cycle to track: ``images`` ``(X, Y, Z, T)`` on its own grid (voxel-to-world ``affine`` (4, 4),
    mm), the ED frame (1-based), the ED segmentation ``(X, Y, Z)`` uint8 on the same grid or ``None``, the frame
    interval (ms) when known, the ES frame of ``Info.cfg`` (1-based, ``None`` when unknown) and ``origin``: one line
    saying where the images come from."""

    images: np.ndarray
    affine: np.ndarray
    ed_frame: int
    ed_label: np.ndarray | None
    frame_ms: float | None
    es_frame: int | None
    origin: str

    @property
    def frames(self) -> int:
        return int(self.images.shape[3])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (3,) in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def subject_info(root: str | Path, subject: str) -> SubjectInfo:
    """What ``Info.cfg`` and the folder say about one subject of the cohort ``root``."""
    for info in find_subjects(root, None, skip_bad=True):
        if info.subject == subject:
            return info
    raise ValueError(f"{subject} is not a subject of {root}: pick one of the list")


def cine_file(info: SubjectInfo) -> Path:
    """The subject's cine ``patientNNN_4d.nii.gz`` (it may not exist)."""
    return info.directory / f"{info.subject}_4d.nii.gz"


def synthetic_identity(directory: Path) -> tuple[str, int]:
    """``(split, index)`` of the synthetic generator that a patient folder ``<split>/patientNNN`` would hold if
    ``cvae synth`` wrote it (symbolic links followed): training ``patientNNN`` is index ``NNN - 1``, testing
    ``patientNNN`` index ``NNN - m``, ``m`` the smallest patient number of the test folder. ``ValueError`` for a
    folder outside a ``training``/``testing`` folder or not named ``patientNNN``."""
    real = Path(directory).resolve()
    match = _PATIENT.match(real.name)
    if match is None or real.parent.name not in ("training", "testing"):
        raise ValueError(f"{directory.name} is not a patientNNN folder of a training/ or testing/ split: the "
                         "synthetic generator cannot render its cycle; upload its cine instead")
    number = int(match.group(1))
    if real.parent.name == "training":
        return "training", number - 1
    first = min(int(m.group(1)) for p in real.parent.iterdir() if (m := _PATIENT.match(p.name)))
    return "testing", number - first


def rendered_path(info: SubjectInfo) -> Path:
    """Where the rendered cine of a subject without a cine is cached: ``cache_root()/cines/<key>.npz``, keyed by the
    generator's subject and the bytes of the folder's ED image (another folder's subject is another file)."""
    split, index = synthetic_identity(info.directory)
    digest = hashlib.sha256(f"{_RENDER_VERSION}|{split}|{index}|{SYNTHETIC_SEED}|".encode())
    digest.update(info.ed_image.read_bytes())
    return cache_root() / "cines" / f"{digest.hexdigest()[:20]}.npz"


def needs_rendering(info: SubjectInfo) -> bool:
    """Whether :func:`cohort_cine` has to render this subject's cycle (no cine file, none cached yet)."""
    return not cine_file(info).is_file() and not rendered_path(info).is_file()


def _render(info: SubjectInfo, path: Path) -> None:
    """Render the subject's whole cycle with the synthetic generator, check it against the folder's ED image and
    cache it at ``path`` (int16 ``(X, Y, Z, T)``, affine, frame interval)."""
    split, index = synthetic_identity(info.directory)
    where = f"the synthetic generator's {split} subject {index} (seed {SYNTHETIC_SEED})"
    ed_image = load_nifti(info.ed_image)[0]
    quick = make_subject(split, index, SYNTHETIC_SEED) if index >= 0 else None  # ED and ES only: under a second
    if quick is None or not np.array_equal(quick.ed_image.astype(np.float32), ed_image):
        raise ValueError(f"{info.subject} has no cine and its ED image is not that of {where}: upload its cine "
                         "instead")
    subject = make_subject(split, index, SYNTHETIC_SEED, cine=True)
    p = subject.params
    frame_ms = 60000.0 / p.heart_rate / p.nb_frame  # the interval save_subject writes into the cine's header

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez adds no ".npz" to the temporary name
            np.savez(handle, cine=subject.cine, affine=subject.affine, frame_ms=frame_ms, split=split, index=index)

    atomic_write(path, write)


def cohort_cine(root: str | Path, subject: str) -> Cine:
    """The cine of a cohort subject with its ED segmentation (when the folder has one): the folder's
    ``patientNNN_4d.nii.gz``, else the synthetic generator's rendering of the subject (rendered once, about 15 s,
    then read from the cache)."""
    info = subject_info(root, subject)
    label = load_label(info.ed_label)[0] if info.ed_label is not None else None
    if cine_file(info).is_file():
        images, affine, _, frame_ms = load_cine(cine_file(info))
        origin = f"`{cine_file(info).name}` of the cohort"
    else:
        path = rendered_path(info)
        if not path.is_file():
            _render(info, path)
        with np.load(path) as f:
            images, affine, frame_ms = f["cine"], f["affine"], float(f["frame_ms"])
            origin = (f"No cine in the folder: rendered by the synthetic generator ({f['split']} subject "
                      f"{int(f['index'])}, seed {SYNTHETIC_SEED}; its ED frame matches the folder's voxel for voxel)")
    if label is not None and label.shape != images.shape[:3]:
        raise ValueError(f"{info.subject}: the ED segmentation {label.shape} is not on the grid of the cine's frames "
                         f"{images.shape[:3]}")
    if not 1 <= info.ed_frame <= images.shape[3]:
        raise ValueError(f"{info.subject}: Info.cfg's ED frame {info.ed_frame} is not one of the cine's frames "
                         f"1-{images.shape[3]}")
    es = info.es_frame if 1 <= info.es_frame <= images.shape[3] else None
    return Cine(images, affine, info.ed_frame, label, frame_ms, es, origin)


def uploaded_cine(cine: Upload, ed_seg: Upload | None, ed_frame: int) -> Cine:
    """An uploaded cine (4-D NIfTI) with the optional segmentation of its ED frame ``ed_frame`` (1-based);
    ``UploadError`` (one line) for a bad file, ``ValueError`` for an ED frame the cine does not have."""
    with staged_cine(cine, ed_seg) as staged:
        frames = staged.cine.shape[3]
        if not 1 <= ed_frame <= frames:
            raise ValueError(f"ED frame {ed_frame} is not one of the cine's frames 1-{frames}: set the ED frame of "
                             "the upload")
        return Cine(staged.cine, staged.affine, ed_frame, staged.ed_seg, staged.frame_ms, None,
                    f"Uploaded `{cine.name}`" + (f" with `{ed_seg.name}`" if ed_seg is not None else ""))
