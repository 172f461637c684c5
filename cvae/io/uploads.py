"""Files uploaded to the app: checked, written to a temporary folder, loaded, and the folder removed after use.

Every problem with an upload is an :class:`UploadError` whose one-line message names the upload (not the temporary
path) and says what to do, so the app can show it as is::

    with staged_uploads(Upload("es.nii.gz", data), Upload("ed.nii.gz", data2)) as staged:
        pair = staged.preprocess(size=DEFAULT_SIZE, spacing=DEFAULT_SPACING)
        cvae.io.register.register_files(staged.paths["fixed"], staged.paths["moving"], out_dir)
    # the temporary folder is gone here

Accepted: 3-D NIfTI volumes (``.nii`` or ``.nii.gz``, a trailing singleton 4th axis is dropped), finite values, not
constant; fixed and moving on the same grid (shape and affine); optional ACDC segmentations (values 0-3) on the grid
of their image; each file at most :data:`MAX_UPLOAD_MB` (the same limit as ``server.maxUploadSize`` in
``.streamlit/config.toml``). A cine to track (:func:`staged_cine`) is one 4-D NIfTI ``(X, Y, Z, T)`` of at least 2
frames, with an optional segmentation of its ED frame on the grid of its frames.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvae.data.volumes import ACDCError, load_cine, load_label, load_nifti
from cvae.data.preprocess import PreprocessedPair, preprocess_image_pair

__all__ = ["MAX_UPLOAD_MB", "ROLES", "CINE_ROLES", "UploadError", "Upload", "StagedPair", "StagedCine", "check_upload",
           "stage_uploads", "staged_uploads", "stage_cine", "staged_cine"]

#: Largest accepted file, in MB (keep equal to ``server.maxUploadSize`` in ``.streamlit/config.toml``).
MAX_UPLOAD_MB = 200
#: The four uploads of a registration, in order: images first, then their optional segmentations.
ROLES: tuple[str, ...] = ("fixed", "moving", "fixed_seg", "moving_seg")
#: The uploads of a cine to track: the 4-D cine and the optional segmentation of its ED frame.
CINE_ROLES: tuple[str, ...] = ("cine", "ed_seg")
_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"


class UploadError(ValueError):
    """An uploaded file that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name as the user's browser gave it, and its bytes."""

    name: str
    data: bytes = field(repr=False)


@dataclass
class StagedPair:
    """Validated uploads written to ``folder``: ``paths[role]`` for each given role, the loaded volumes
    (float32 images, uint8 labels, ``(X, Y, Z)``), the shared voxel-to-world ``affine`` (4, 4) and ``spacing`` (mm)."""

    folder: Path
    paths: dict[str, Path]
    fixed: np.ndarray
    moving: np.ndarray
    fixed_seg: np.ndarray | None
    moving_seg: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray

    def preprocess(self, size: Sequence[int], spacing: Sequence[float]) -> PreprocessedPair:
        """The network's (fixed, moving) pair on a ``size``-voxel grid of ``spacing`` mm around the heart."""
        try:
            return preprocess_image_pair(self.fixed, self.moving, self.affine, self.fixed_seg, self.moving_seg,
                                         size=size, spacing=spacing, subject="upload")
        except ValueError as exc:
            raise UploadError(f"the uploaded pair cannot be preprocessed: {_first_line(exc)}") from None


@dataclass
class StagedCine:
    """A validated cine upload written to ``folder``: ``paths[role]``, the cine ``(X, Y, Z, T)`` float32, its
    voxel-to-world ``affine`` (4, 4), ``spacing`` (mm), frame interval ``frame_ms`` (ms, ``None`` when the header does
    not say) and the ED segmentation ``(X, Y, Z)`` uint8 or ``None``."""

    folder: Path
    paths: dict[str, Path]
    cine: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    frame_ms: float | None
    ed_seg: np.ndarray | None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _label(role: str) -> str:
    return "ED segmentation" if role == "ed_seg" else role.replace("_seg", " segmentation")


def check_upload(role: str, upload: Upload, max_mb: float = MAX_UPLOAD_MB) -> str:
    """Check name, size and magic bytes of one upload without reading it; returns its suffix (``.nii[.gz]``)."""
    if role not in ROLES + CINE_ROLES:
        raise ValueError(f"unknown upload role {role!r}: use one of {', '.join(ROLES + CINE_ROLES)}")
    name = Path(upload.name).name
    suffix = next((s for s in _SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise UploadError(f"{_label(role)} file {name!r} is not a NIfTI file: upload a .nii or .nii.gz volume")
    size = len(upload.data)
    if size == 0:
        raise UploadError(f"{_label(role)} file {name!r} is empty")
    if size > max_mb * 1024 * 1024:
        raise UploadError(f"{_label(role)} file {name!r} is {size / 2**20:.0f} MB, above the {max_mb:g} MB limit: "
                          "crop it or register it with the `cvae register` command")
    if suffix == ".nii.gz" and not upload.data.startswith(_GZIP_MAGIC):
        raise UploadError(f"{_label(role)} file {name!r} ends in .gz but is not gzip-compressed: rename it to .nii "
                          "or upload the real .nii.gz")
    return suffix


def _load(role: str, upload: Upload, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Load a staged file as ``(data, affine, spacing, frame interval in ms of a cine or None)``; ``ACDCError``
    messages name the upload instead of the temporary path."""
    frame_ms = None
    try:
        if role.endswith("_seg"):
            label, affine = load_label(path)
            return label, affine, np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), None
        if role == "cine":
            data, affine, spacing, frame_ms = load_cine(path)
        else:
            data, affine, spacing = load_nifti(path)
    except ACDCError as exc:
        message = _first_line(exc).replace(f"{path}: ", "").replace(str(path), upload.name)
        raise UploadError(f"{_label(role)} file {upload.name!r}: {message}") from None
    if data.min() == data.max():
        raise UploadError(f"{_label(role)} file {upload.name!r} is constant (all voxels = {data.flat[0]:g}): "
                          "it holds no image")
    return data, affine, spacing, frame_ms


def stage_uploads(folder: str | os.PathLike, fixed: Upload | None, moving: Upload | None,
                  fixed_seg: Upload | None = None, moving_seg: Upload | None = None,
                  max_mb: float = MAX_UPLOAD_MB) -> StagedPair:
    """Check, write (as ``<folder>/<role>.nii[.gz]``, the folder created if needed) and load the uploads of one
    registration.

    Raises :class:`UploadError` for a missing image, a file that is not a readable 3-D NIfTI (2-D, 4-D, corrupt,
    NaN, constant), images of different shapes or affines, or a segmentation not on its image's grid or with values
    outside 0-3.
    """
    uploads = dict(zip(ROLES, (fixed, moving, fixed_seg, moving_seg)))
    for role in ("fixed", "moving"):
        if uploads[role] is None:
            raise UploadError(f"no {role} image: upload both a fixed and a moving NIfTI volume")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, volumes = {}, {}
    for role, upload in uploads.items():
        if upload is None:
            continue
        path = folder / f"{role}{check_upload(role, upload, max_mb)}"
        path.write_bytes(upload.data)
        paths[role] = path
        volumes[role] = _load(role, upload, path)
    (f, f_affine, spacing, _), (m, m_affine, _, _) = volumes["fixed"], volumes["moving"]
    if f.shape != m.shape:
        raise UploadError(f"fixed {f.shape} and moving {m.shape} images have different sizes: upload two frames of "
                          "the same acquisition (same grid)")
    if not np.allclose(f_affine, m_affine, atol=1e-3):
        raise UploadError("fixed and moving images have different voxel-to-world affines: upload two frames of the "
                          "same acquisition (same grid)")
    for role, image in (("fixed_seg", "fixed"), ("moving_seg", "moving")):
        if role in volumes:
            label, label_affine, _, _ = volumes[role]
            if label.shape != f.shape or not np.allclose(label_affine, f_affine, atol=1e-3):
                raise UploadError(f"{_label(role)} {label.shape} is not on the grid of the {image} image {f.shape}: "
                                  f"upload the segmentation of that image")
    return StagedPair(folder=folder, paths=paths, fixed=f, moving=m,
                      fixed_seg=volumes.get("fixed_seg", (None,))[0], moving_seg=volumes.get("moving_seg", (None,))[0],
                      affine=f_affine, spacing=spacing)


@contextmanager
def staged_uploads(fixed: Upload | None, moving: Upload | None, fixed_seg: Upload | None = None,
                   moving_seg: Upload | None = None, max_mb: float = MAX_UPLOAD_MB) -> Iterator[StagedPair]:
    """:func:`stage_uploads` into a fresh temporary folder that is removed on exit, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="cvae-upload-") as tmp:
        yield stage_uploads(tmp, fixed, moving, fixed_seg, moving_seg, max_mb)


def stage_cine(folder: str | os.PathLike, cine: Upload | None, ed_seg: Upload | None = None,
               max_mb: float = MAX_UPLOAD_MB) -> StagedCine:
    """Check, write (as ``<folder>/<role>.nii[.gz]``) and load the uploads of a cine to track.

    Raises :class:`UploadError` for a missing cine, a file that is not a readable 4-D NIfTI of at least 2 frames
    (3-D, corrupt, NaN, constant), or an ED segmentation that is not on the grid of the cine's frames or has values
    outside 0-3.
    """
    if cine is None:
        raise UploadError("no cine: upload a 4-D NIfTI cine (X, Y, Z, T)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, volumes = {}, {}
    for role, upload in zip(CINE_ROLES, (cine, ed_seg)):
        if upload is not None:
            paths[role] = folder / f"{role}{check_upload(role, upload, max_mb)}"
            paths[role].write_bytes(upload.data)
            volumes[role] = _load(role, upload, paths[role])
    images, affine, spacing, frame_ms = volumes["cine"]
    label = None
    if "ed_seg" in volumes:
        label, label_affine, _, _ = volumes["ed_seg"]
        if label.shape != images.shape[:3] or not np.allclose(label_affine, affine, atol=1e-3):
            raise UploadError(f"ED segmentation {label.shape} is not on the grid of the cine's frames "
                              f"{images.shape[:3]}: upload the segmentation of the cine's ED frame")
    return StagedCine(folder=folder, paths=paths, cine=images, affine=affine, spacing=spacing, frame_ms=frame_ms,
                      ed_seg=label)


@contextmanager
def staged_cine(cine: Upload | None, ed_seg: Upload | None = None,
                max_mb: float = MAX_UPLOAD_MB) -> Iterator[StagedCine]:
    """:func:`stage_cine` into a fresh temporary folder that is removed on exit, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="cvae-upload-") as tmp:
        yield stage_cine(tmp, cine, ed_seg, max_mb)
