"""Reading the volumes of a cohort or of a user: 3-D NIfTI images, label maps and 4-D cines, checked, with one-line
errors (:class:`ACDCError`) that name the file and say what to do; the voxel limit is read from the header before
any data."""
from __future__ import annotations

import gzip
import math
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from cvae.data.limits import ENV_MAX_VOXELS, MAX_VOXELS

__all__ = ["ACDCError", "LABEL_VALUES", "max_voxels", "load_nifti", "load_label", "load_cine"]

#: The values of an ACDC label map (:mod:`cvae.data.labels`).
LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 3)


class ACDCError(ValueError):
    """A file of an ACDC-style tree (or a NIfTI given by the user) is missing, unreadable or inconsistent."""


_NIBABEL_LOG = threading.Lock()


@contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """Keep nibabel from logging a malformed header on stderr: the ``ACDCError`` says it in one line. (The logger is
    shared by the app's threads: one header is read at a time.)"""
    logger = nib.imageglobals.logger
    with _NIBABEL_LOG:
        disabled, logger.disabled = logger.disabled, True
        try:
            yield
        finally:
            logger.disabled = disabled


def max_voxels() -> int:
    """The voxel limit of :func:`load_nifti`: ``$CVAE_MAX_VOXELS`` when set (a positive integer), else
    :data:`MAX_VOXELS`."""
    text = os.environ.get(ENV_MAX_VOXELS, "").strip()
    if not text:
        return MAX_VOXELS
    if not text.isdigit() or int(text) < 1:
        raise ACDCError(f"${ENV_MAX_VOXELS}={text!r} is not a positive number of voxels")
    return int(text)


def _read_nifti(path: Path, limit: int | None, frame: int | None = None, cine: bool = False
                ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """The data (float32), affine and header of a NIfTI file: all of it, one ``frame`` of a cine (1-based), or a
    whole ``cine``; the voxel limit applies to one volume (X, Y, Z) in the last two cases. ``ACDCError`` otherwise."""
    if not path.is_file():
        raise ACDCError(f"{path}: file not found")
    limit = max_voxels() if limit is None else int(limit)
    try:
        with _nibabel_quiet():
            img = nib.load(str(path))
        if frame is not None:
            if len(img.shape) != 4 or not 1 <= frame <= img.shape[3]:
                raise ACDCError(f"{path}: frame {frame} asked of a volume of shape {tuple(img.shape)}: a cine "
                                f"(X, Y, Z, T) has frames 1-{img.shape[3] if len(img.shape) == 4 else 1}; "
                                "check ED and ES in Info.cfg")
        if cine and (len(img.shape) != 4 or img.shape[3] < 2):
            raise ACDCError(f"{path}: a cine is 4-D (X, Y, Z, T) with at least 2 frames, got shape "
                            f"{tuple(img.shape)}")
        voxels = math.prod(int(n) for n in img.shape[:3 if frame is not None or cine else None])
        if voxels > limit:
            raise ACDCError(f"{path}: the header announces {' x '.join(map(str, img.shape))} = {voxels:,} voxels"
                            f"{' per frame' if frame is not None or cine else ''}, above the limit of {limit:,} "
                            f"({limit * 4 / 2**20:.0f} MB as float32): crop or downsample it, or raise the limit "
                            f"(--max-voxels or ${ENV_MAX_VOXELS})")
        data = (np.asarray(img.get_fdata(dtype=np.float32)) if frame is None
                else np.asarray(img.dataobj[..., frame - 1], dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, gzip.BadGzipFile, zlib.error,
            EOFError, OSError, ValueError, MemoryError) as exc:
        if isinstance(exc, ACDCError):
            raise
        problem = f"{type(exc).__name__}: {str(exc).strip() or 'out of memory'}"
        raise ACDCError(f"{path}: unreadable or corrupt NIfTI ({problem}); re-extract or re-download it") from exc
    if not np.isfinite(data).all():
        raise ACDCError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite values")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ACDCError(f"{path}: invalid (singular or non-finite) affine in the header")
    return data, affine, img.header


def load_nifti(path: str | Path, limit: int | None = None, frame: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a 3-D NIfTI as ``(array float32 (X, Y, Z), affine (4, 4), spacing (3,) mm)``.

    A trailing singleton 4th axis is dropped. With ``frame`` (1-based, as ``Info.cfg`` numbers them) the file is a
    4-D cine and only that frame is read (the limit applies to one frame). Raises ``ACDCError`` naming the file for
    a missing, unreadable, malformed or truncated file, a header announcing more than ``limit`` voxels (default
    :func:`max_voxels`; checked before any data is read), a volume that is not 3-D (a 4-D cine gets a hint on
    picking one frame), a frame the cine does not have, or non-finite values.
    """
    path = Path(path)
    data, affine, _ = _read_nifti(path, limit, frame)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise ACDCError(
            f"{path}: image is 4-D (X,Y,Z,T)={data.shape}; pick one frame, e.g. with nibabel: img.slicer[..., t]"
        )
    if data.ndim != 3:
        raise ACDCError(f"{path}: expected a 3-D volume (X, Y, Z), got shape {data.shape}")
    return data, affine, np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def load_cine(path: str | Path, limit: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Load a cine ``patientNNN_4d.nii.gz`` as ``(array float32 (X, Y, Z, T), affine (4, 4), spacing (3,) mm,
    frame interval in ms or None)``; the interval comes from the header's fourth voxel size when its time unit is
    ms or s. ``limit`` applies to one frame; errors as :func:`load_nifti` (one line, ``ACDCError``)."""
    path = Path(path)
    data, affine, header = _read_nifti(path, limit, cine=True)
    unit = header.get_xyzt_units()[1]
    step = float(header.get_zooms()[3])
    frame_ms = step if unit == "msec" else 1000.0 * step if unit == "sec" else None
    return data, affine, np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), frame_ms if frame_ms and frame_ms > 0 else None


def load_label(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load an ACDC segmentation as ``(uint8 (X, Y, Z), affine (4, 4))``; values outside {0,1,2,3} -> ``ACDCError``;
    ``limit`` as for :func:`load_nifti`."""
    data, affine, _ = load_nifti(path, limit)
    rounded = np.rint(data)
    bad = ~np.isin(rounded, LABEL_VALUES) | (np.abs(rounded - data) > 1e-3)
    if bad.any():
        values = np.unique(data[bad])[:5]
        raise ACDCError(f"{path}: label values must be in {{0,1,2,3}}, found {values.tolist()}")
    return rounded.astype(np.uint8), affine
