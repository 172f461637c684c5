"""The exact cardiac cycle of a phantom cine: the side files both generators write beside ``patientNNN_4d.nii.gz``.

``cvae synth --cine`` (the own generator, :mod:`cvae.data.synthetic_cycle`) and ``cvae synth --style foreign --cine``
(the held-out one, :mod:`cvae.data.foreign_cycle`) write::

    patientNNN_4d_gt.nii.gz                exact labels of every frame, uint8 (X, Y, Z, T)          (not in ACDC)
    patientNNN_4d_gt_displacement.nii.gz   exact ED -> frame maps, (X, Y, Z, T, 3) voxels:          (not in ACDC)
                                           frame_t(x) ~ ED(x + u_t(x)); int16 with scl_slope 0.01, so
                                           nibabel's ``get_fdata()`` gives voxels to within 0.005

They are what a user's ACDC copy does not have; the readers never need them, only the evaluation of tracking and of
the motion model (:func:`load_cycle_truth`). This module is the file format only: it knows neither generator.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["TRUTH_SUFFIXES", "DISPLACEMENT_STEP", "displacement_steps", "load_cycle_truth"]

#: File-name suffixes (after ``patientNNN``) of the side files with the exact labels and maps of every frame.
TRUTH_SUFFIXES: tuple[str, str] = ("_4d_gt.nii.gz", "_4d_gt_displacement.nii.gz")
#: Stored precision of the displacement side file (voxels per int16 step).
DISPLACEMENT_STEP = 0.01


def displacement_steps(displacement: np.ndarray) -> np.ndarray:
    """The displacement side file's content: voxels as int16 steps of :data:`DISPLACEMENT_STEP` (the file's
    ``scl_slope``, so nibabel's ``get_fdata()`` gives voxels back)."""
    return np.clip(np.rint(displacement / DISPLACEMENT_STEP), -32767, 32767).astype(np.int16)


def load_cycle_truth(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The exact cycle of a synthetic patient folder: ``(labels uint8 (X, Y, Z, T), displacement float32
    (X, Y, Z, T, 3) in voxels, ED -> frame)``. One-line ``FileNotFoundError`` when the side files are absent."""
    folder = Path(folder)
    paths = [folder / f"{folder.name}{suffix}" for suffix in TRUTH_SUFFIXES]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the exact cycle exists only for synthetic cohorts written with "
                                    "`cvae synth --cine` (either style)")
    labels = np.asarray(nib.load(str(paths[0])).dataobj, dtype=np.uint8)
    displacement = np.asarray(nib.load(str(paths[1])).get_fdata(dtype=np.float32))
    return labels, displacement
