"""Diffeomorphic demons baseline: field convention against SimpleITK, recovery of a known deformation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cvae.evaluation.metrics import dice
from cvae.fields import warp
from cvae.methods import Method, get_method
from cvae.methods.demons import DemonsMethod, DemonsParams, demons_register, field_to_voxels, to_sitk, voxels_to_field

SHAPE = (40, 36, 16)          # three different sizes: an axis swap cannot hide
SPACING = (1.5, 1.7, 3.15)    # anisotropic, mm


def smooth_field(amplitude: tuple[float, float, float], centre=(20.0, 17.0, 8.0), width=(7.0, 6.0, 3.0)
                 ) -> np.ndarray:
    """A Gaussian bump of displacement ``(3, X, Y, Z)`` in voxels, component i scaled by ``amplitude[i]``."""
    grid = np.indices(SHAPE, dtype=np.float64)
    bump = np.exp(-0.5 * sum(((grid[i] - centre[i]) / width[i]) ** 2 for i in range(3)))
    return np.stack([a * bump for a in amplitude]).astype(np.float32)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A textured image with two bright ellipsoids and their labels (1, 2), ``SHAPE``."""
    x, y, z = np.indices(SHAPE, dtype=np.float64)
    a = ((x - 17) / 7) ** 2 + ((y - 16) / 6) ** 2 + ((z - 8) / 4) ** 2 < 1
    b = ((x - 26) / 5) ** 2 + ((y - 20) / 5) ** 2 + ((z - 8) / 3.5) ** 2 < 1
    labels = np.where(a, 1, np.where(b, 2, 0)).astype(np.uint8)
    image = 0.2 + 0.05 * np.sin(x / 3.0) * np.cos(y / 4.0) + 0.7 * a + 0.45 * b
    return image.astype(np.float32), labels


def warped(volume: np.ndarray, u: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    return warp(torch.from_numpy(volume.astype(np.float32))[None, None], torch.from_numpy(u)[None], mode=mode)[0, 0]\
        .numpy()


def test_field_conversion_matches_simpleitk_resampling():
    """cvae.fields.warp(M, u) equals SimpleITK's resampling with the converted displacement field."""
    image, _ = scene()
    u = smooth_field((2.5, -1.5, 0.8)) + smooth_field((-1.0, 1.0, 0.5), centre=(10.0, 25.0, 5.0))
    field = voxels_to_field(u, SPACING)
    assert np.allclose(field_to_voxels(field), u, atol=1e-5)
    moving = to_sitk(image, SPACING)
    transform = sitk.DisplacementFieldTransform(field)
    itk = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    ours = warped(image, u)
    interior = (slice(2, -2),) * 3
    assert np.abs(itk - ours)[interior].max() < 1e-4
    # ... and the field is not trivial: the warped image differs from the input there.
    assert np.abs(ours - image)[interior].max() > 0.2


def test_demons_recovers_a_known_smooth_deformation():
    moving, moving_labels = scene()
    truth = smooth_field((3.0, -2.0, 1.0))
    fixed, fixed_labels = warped(moving, truth), warped(moving_labels, truth, "nearest")
    u = demons_register(fixed, moving, SPACING)
    assert u.shape == (3, *SHAPE) and u.dtype == np.float32

    def mean_dice(labels: np.ndarray) -> float:
        return float(np.mean([dice(labels == k, fixed_labels == k) for k in (1, 2)]))

    before, after = mean_dice(moving_labels), mean_dice(warped(moving_labels, u, "nearest"))
    assert after > before + 0.1 and after > 0.85
    moved = np.linalg.norm(truth, axis=0) > 1.0  # where the true deformation is large
    error = np.linalg.norm(u - truth, axis=0)[moved].mean()
    assert error < 0.4 * np.linalg.norm(truth, axis=0)[moved].mean()


def test_demons_method_follows_the_interface():
    method = get_method("demons")
    assert isinstance(method, Method) and isinstance(method, DemonsMethod)
    assert method.image_size is None and method.spacing is None
    method = DemonsMethod(DemonsParams(iterations=(20, 10, 0)), threads=1)  # a quick variant for the test
    moving, _ = scene()
    fixed = warped(moving, smooth_field((2.0, 0.0, 0.0)))
    result = method.register(torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None], SPACING)
    assert tuple(result.displacement.shape) == (1, 3, *SHAPE) and result.seconds > 0
    assert float(result.displacement[0, 0].max()) > 0.5


def test_one_level_and_histogram_matching_run():
    moving, _ = scene()
    fixed = 1.5 * warped(moving, smooth_field((2.0, 1.0, 0.0)))  # another intensity scale
    params = DemonsParams(shrink_factors=((1, 1, 1),), iterations=(10,), histogram_matching=True)
    u = demons_register(fixed, moving, SPACING, params)
    assert np.isfinite(u).all() and np.abs(u).max() > 0.3


@pytest.mark.parametrize("kwargs", [dict(iterations=(10, 10)), dict(field_sigma=0.0),
                                    dict(shrink_factors=((0, 1, 1), (1, 1, 1), (1, 1, 1)))])
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        DemonsParams(**kwargs)


def test_bad_images_are_refused():
    image, _ = scene()
    with pytest.raises(ValueError, match="shape"):
        demons_register(image, image[:, :, :8], SPACING)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        demons_register(bad, image, SPACING)
