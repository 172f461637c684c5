"""NIfTI writing: a displacement field written here moves images in SimpleITK exactly as intended (LPS, intent 1007)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cvae.io.nifti import NIFTI_INTENT_VECTOR, load_vector_field, save_vector_field, save_volume, world_to_voxels

SHAPE = (30, 34, 12)


def oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([2.0, 1.5, 4.0])
    affine[:3, 3] = [-30.0, 12.0, 50.0]
    return affine


def smooth_image(affine: np.ndarray) -> np.ndarray:
    index = np.indices(SHAPE, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    centre = world.mean(axis=1, keepdims=True)
    blob = np.exp(-(((world - centre) / np.array([[15.0], [10.0], [20.0]])) ** 2).sum(axis=0))
    return (blob + 0.3 * np.sin(world[0] / 6.0) + 0.2 * np.cos(world[1] / 5.0)).reshape(SHAPE).astype(np.float32)


def sample_world(image: np.ndarray, affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear value of ``image`` at world points ``(3, N)``."""
    index = np.linalg.inv(affine) @ np.vstack([points, np.ones(points.shape[1])])
    return ndimage.map_coordinates(image, index[:3], order=1, mode="nearest")


def test_a_written_translation_moves_the_image_as_simpleitk_resamples_it(tmp_path):
    affine = oblique_affine()
    image = smooth_image(affine)
    save_volume(tmp_path / "moving.nii.gz", image, affine)
    shift = np.array([4.0, -3.0, 6.0])  # RAS mm, every component non-zero: a sign error cannot hide
    save_vector_field(tmp_path / "d.nii.gz", np.broadcast_to(shift, (*SHAPE, 3)), affine)

    moving = sitk.ReadImage(str(tmp_path / "moving.nii.gz"))
    field = sitk.ReadImage(str(tmp_path / "d.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == SHAPE
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0)).T

    index = np.indices(SHAPE, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    inside = np.linalg.inv(affine) @ np.vstack([world + shift[:, None], np.ones(world.shape[1])])
    inside = ((inside[:3] > 0) & (inside[:3] < np.array(SHAPE)[:, None] - 1)).all(axis=0).reshape(SHAPE)
    assert inside.mean() > 0.5
    expected = sample_world(image, affine, world + shift[:, None]).reshape(SHAPE)
    assert np.abs(resampled - expected)[inside].max() < 1e-4
    flipped = sample_world(image, affine, world + (shift * [-1, -1, 1])[:, None]).reshape(SHAPE)  # RAS stored as-is
    assert np.abs(resampled - flipped)[inside].mean() > 0.05

    # ITK's point transform agrees, in its LPS physical space.
    to_lps = np.array([-1.0, -1.0, 1.0])
    x = world[:, 1234]
    assert np.allclose(transform.TransformPoint((x * to_lps).tolist()), (x + shift) * to_lps, atol=1e-4)


def test_vector_field_file_layout_and_round_trip(tmp_path):
    affine = oblique_affine()
    rng = np.random.default_rng(0)
    field = rng.normal(size=(*SHAPE, 3))
    save_vector_field(tmp_path / "d.nii.gz", field, affine)
    image = nib.load(str(tmp_path / "d.nii.gz"))
    assert image.shape == (*SHAPE, 1, 3) and image.get_data_dtype() == np.float32
    assert int(image.header["intent_code"]) == NIFTI_INTENT_VECTOR
    assert np.allclose(image.affine, affine, atol=1e-5)
    assert image.header.get_sform(coded=True)[1] == 1 and image.header.get_qform(coded=True)[1] == 1
    stored = np.asarray(image.dataobj)[:, :, :, 0, :]
    assert np.allclose(stored, field * [-1, -1, 1], atol=1e-6)  # LPS on disk
    loaded, loaded_affine = load_vector_field(tmp_path / "d.nii.gz")
    assert np.allclose(loaded, field, atol=1e-6) and np.allclose(loaded_affine, affine, atol=1e-5)


def test_world_to_voxels_uses_the_grid_axes():
    affine = oblique_affine()
    axes = affine[:3, :3]
    field = np.zeros((*SHAPE, 3))
    field[..., :] = 2.0 * axes[:, 0] - 0.5 * axes[:, 2]  # two voxels along i, half a voxel back along k
    voxels = world_to_voxels(field, affine)
    assert voxels.shape == (3, *SHAPE)
    assert np.allclose(voxels[:, 0, 0, 0], [2.0, 0.0, -0.5])


def test_save_volume_keeps_affine_and_dtype(tmp_path):
    affine = oblique_affine()
    labels = (smooth_image(affine) > 0.5).astype(np.uint8)
    save_volume(tmp_path / "seg.nii.gz", labels, affine, np.uint8)
    image = nib.load(str(tmp_path / "seg.nii.gz"))
    assert image.get_data_dtype() == np.uint8 and np.allclose(image.affine, affine, atol=1e-5)
    assert np.array_equal(np.asarray(image.dataobj), labels)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 4)), np.full((4, 4, 4, 3), np.nan)])
def test_bad_fields_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        save_vector_field(tmp_path / "d.nii.gz", bad, np.eye(4))
    assert not (tmp_path / "d.nii.gz").exists()
