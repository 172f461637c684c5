"""NIfTI output of registration results: scalar volumes and displacement fields that ITK tools read directly.

Displacement-field files (``displacement.nii.gz``, ``inverse_displacement.nii.gz``, ``velocity.nii.gz``)
========================================================================================================
* **Shape** ``(X, Y, Z, 1, 3)``, float32: the NIfTI layout of a vector image (time axis of length 1, then the three
  components), **intent code 1007** (``NIFTI_INTENT_VECTOR``), units mm; qform and sform both hold the affine of the
  grid the field is sampled on (the fixed image's).
* **Meaning**: a *resampling* (pull-back) transform. For the world point ``x`` of a voxel of the fixed image, the
  matching moving-image point is ``x + d(x)``; ``warped(x) = moving(x + d(x))``. This is ITK's
  ``DisplacementFieldTransform`` convention, also used by ANTs (``antsApplyTransforms``) and SimpleITK.
* **Components** are millimetres in ITK's physical space, **LPS**: ITK reads a NIfTI image's geometry by flipping the
  x and y axes of the NIfTI (RAS+) world, but with intent 1007 it reads the vector components *as stored*. So the
  file stores ``(-d_R, -d_A, d_S)``, the physical displacement in LPS, and a field read by SimpleITK
  (``sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64))``) moves points
  exactly as written here (checked by ``tests/test_nifti_io.py``). (With intent 1006, ``NIFTI_INTENT_DISPVECT``, ITK
  >= 5.4 would instead treat the stored vectors as RAS and flip them.)
* :func:`load_vector_field` undoes the flip: it returns the components in the nibabel (RAS+) world, like the
  affine; :func:`world_to_voxels` turns such a field into voxel units of its grid (the project convention).

In Python this module's functions speak nibabel's world (RAS+ mm) throughout; only the file holds LPS components.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["NIFTI_INTENT_VECTOR", "RAS_TO_LPS", "save_volume", "save_vector_field", "load_vector_field",
           "world_to_voxels"]

#: NIfTI intent code of a vector-valued image (what ANTs writes and ITK reads as a displacement field).
NIFTI_INTENT_VECTOR = 1007
#: Flip of the first two world axes: NIfTI's RAS+ <-> ITK's LPS (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: The same flip as signs of the components (float32).
_LPS_SIGNS = np.float32([-1.0, -1.0, 1.0])


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine must be a finite, invertible 4x4 voxel-to-world matrix")
    return affine


def _header_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def save_volume(path: str | os.PathLike, volume: np.ndarray, affine: np.ndarray,
                dtype: type | np.dtype = np.float32, frame_ms: float | None = None) -> Path:
    """Write a scalar volume ``(X, Y, Z)``, or a series of them ``(X, Y, Z, T)`` (a cine; ``frame_ms`` apart), with
    voxel-to-world ``affine`` (4, 4) as ``dtype``; returns the path."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must be (X, Y, Z) or (X, Y, Z, T), got shape {volume.shape}")
    path = Path(path)
    image = _header_image(volume.astype(dtype, copy=False), _check_affine(affine))
    if volume.ndim == 4 and frame_ms:
        image.header.set_zooms((*image.header.get_zooms()[:3], frame_ms / 1000.0))  # the header's time unit: s
    nib.save(image, str(path))
    return path


def save_vector_field(path: str | os.PathLike, field_ras_mm: np.ndarray, affine: np.ndarray) -> Path:
    """Write a displacement (or velocity) field for ITK (see the module docstring).

    Args:
        field_ras_mm: ``(X, Y, Z, 3)``, the displacement of each voxel's world point in mm, components along the
            nibabel world axes (RAS+) -- the same world as ``affine``.
        affine: voxel-to-world (4, 4) of the grid the field is sampled on.

    The file holds ``(X, Y, Z, 1, 3)`` float32 LPS components, intent 1007.
    """
    field = np.asarray(field_ras_mm).astype(np.float32, copy=False)
    if field.ndim != 4 or field.shape[3] != 3:
        raise ValueError(f"field must be (X, Y, Z, 3) in mm, got shape {field.shape}")
    if not np.isfinite(field).all():
        raise ValueError("field contains NaN or infinite values")
    # ``field @ RAS_TO_LPS.T`` in float32: negating is exact, and "+ 0" turns a negated 0 into +0 as the product does
    lps = (field * _LPS_SIGNS + np.float32(0.0))[:, :, :, None, :]
    image = _header_image(lps, _check_affine(affine))
    image.header.set_intent(NIFTI_INTENT_VECTOR, (), "displacement mm (ITK LPS)")
    path = Path(path)
    nib.save(image, str(path))
    return path


def load_vector_field(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a field written by :func:`save_vector_field` (or by ANTs): ``(field (X, Y, Z, 3) RAS+ mm, affine)``."""
    image = nib.load(str(path))
    if int(image.header["intent_code"]) != NIFTI_INTENT_VECTOR:
        raise ValueError(f"{path}: intent code {int(image.header['intent_code'])} is not {NIFTI_INTENT_VECTOR} "
                         "(NIFTI_INTENT_VECTOR): not a displacement field in ITK's convention")
    data = np.asarray(image.dataobj, dtype=np.float64)
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] != 3:
        raise ValueError(f"{path}: expected shape (X, Y, Z, 1, 3), got {data.shape}")
    return data[:, :, :, 0, :] @ RAS_TO_LPS.T, np.asarray(image.affine, dtype=np.float64)


def world_to_voxels(field_ras_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(X, Y, Z, 3)`` world (RAS+) mm displacements -> ``(3, X, Y, Z)`` voxel displacements of ``affine``'s grid."""
    field = np.asarray(field_ras_mm, dtype=np.float64)
    if field.ndim != 4 or field.shape[3] != 3:
        raise ValueError(f"field must be (X, Y, Z, 3) in mm, got shape {field.shape}")
    to_voxel = np.linalg.inv(_check_affine(affine)[:3, :3])
    return np.moveaxis(field @ to_voxel.T, 3, 0)
