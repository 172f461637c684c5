"""The paper's preprocessing: resampling both ways, the crop grid's affine, heart-centred crops, intensities."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from cvae.data.acdc import load_cohort
from cvae.data.preprocess import (
    DEFAULT_SIZE,
    DEFAULT_SPACING,
    displacement_to_crop_grid,
    grid_affine,
    heart_centre_voxel,
    normalise_intensities,
    preprocess_image_pair,
    preprocess_subject,
    resample_to_grid,
    to_original_grid,
)

SHAPE = (64, 72, 10)
SPACING = (1.5625, 1.5625, 10.0)


def oblique_affine(spacing=SPACING, angle_deg: float = 25.0) -> np.ndarray:
    """Voxel-to-world affine with a flipped axis, an in-plane rotation and an offset (mm)."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = [60.0, -40.0, -30.0]
    return affine


def phantom(shape=SHAPE, spacing=SPACING, centre=(40.0, 26.0, 5.0), systole: bool = False, seed: int = 0):
    """Synthetic-like short-axis frame: textured body ellipse plus an off-centre heart (RV 1, myo 2, LV 3) that
    contracts at systole. Returns (image float32, label uint8, label centroid in voxels)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(shape).astype(float)
    mm = [(x - centre[0]) * spacing[0], (y - centre[1]) * spacing[1], (z - centre[2]) * spacing[2]]
    body = ((x - shape[0] / 2) / (0.45 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2 < 1
    lv_r, myo_r = (14.0, 22.0) if systole else (22.0, 28.0)
    rv_r = 10.0 if systole else 16.0
    taper = np.clip(1 - np.abs(mm[2]) / 45.0, 0, 1)
    r = np.hypot(mm[0], mm[1])
    label = np.zeros(shape, np.uint8)
    label[(r < myo_r * taper) & body] = 2
    label[(r < lv_r * taper) & body] = 3
    label[(np.hypot(mm[0] + 32.0, mm[1] - 8.0) < rv_r * taper) & (label == 0) & body] = 1
    image = np.where(body, 0.35, 0.02) + 0.5 * (label == 3) + 0.45 * (label == 1) + 0.15 * (label == 2)
    image = ndimage.gaussian_filter(image + rng.normal(0, 0.04, shape), (0.7, 0.7, 0.3)) * 300.0
    return image.astype(np.float32), label, np.argwhere(label > 0).mean(axis=0)


def world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def test_grid_affine_keeps_orientation_and_centres() -> None:
    src = oblique_affine()
    centre = np.array([5.0, -7.0, 2.0])
    dst = grid_affine(src, centre, (16, 20, 8), (1.5, 1.5, 3.15))
    np.testing.assert_allclose(np.linalg.norm(dst[:3, :3], axis=0), [1.5, 1.5, 3.15])
    # Same axis directions as the source: columns parallel and pointing the same way.
    cosines = (dst[:3, :3] / np.linalg.norm(dst[:3, :3], axis=0) * src[:3, :3] / np.linalg.norm(src[:3, :3], axis=0))
    np.testing.assert_allclose(cosines.sum(axis=0), 1.0)
    np.testing.assert_allclose(world(dst, np.array([7.5, 9.5, 3.5])), centre)


def test_resample_round_trip_smooth_volume_interior() -> None:
    src = oblique_affine()
    shape = (48, 48, 10)
    voxels = np.indices(shape).reshape(3, -1).T.astype(float)
    pos = world(src, voxels)
    smooth = np.exp(-np.sum((pos - world(src, np.array([24.0, 22.0, 5.0]))) ** 2, axis=1) / (2 * 25.0**2))
    smooth = smooth.reshape(shape).astype(np.float32)
    dst = grid_affine(src, world(src, np.array([23.5, 23.5, 4.5])), (56, 56, 34), (1.5, 1.5, 3.15))
    on_crop = resample_to_grid(smooth, src, dst, (56, 56, 34), order=1)
    assert on_crop.dtype == np.float32 and on_crop.shape == (56, 56, 34)
    back = resample_to_grid(on_crop, dst, src, shape, order=1)
    interior = (slice(6, -6), slice(6, -6), slice(1, -1))
    error = np.abs(back - smooth)[interior]
    assert error.max() < 0.02 and error.mean() < 0.003
    assert smooth[interior].max() > 0.9  # the test volume does vary over the interior


def test_resample_labels_exact_on_integer_shift_and_blob_on_new_spacing() -> None:
    src = oblique_affine(spacing=(1.5, 1.5, 3.0))
    shape = (40, 44, 20)
    label = np.zeros(shape, np.uint8)
    x, y, z = np.indices(shape)
    label[(x - 20) ** 2 + (y - 22) ** 2 + ((z - 10) * 2) ** 2 < 14**2] = 2
    label[(x - 20) ** 2 + (y - 22) ** 2 + ((z - 10) * 2) ** 2 < 8**2] = 3
    # Same spacing, origin shifted by whole voxels: nearest resampling is an exact shift, both ways.
    shifted = src.copy()
    shifted[:3, 3] = world(src, np.array([3.0, -2.0, 1.0]))
    crop = resample_to_grid(label, src, shifted, shape, order=0)
    assert crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[:-3, 2:, :-1], label[3:, :-2, 1:])
    np.testing.assert_array_equal(resample_to_grid(crop, shifted, src, shape, order=0)[3:, :-2, 1:], label[3:, :-2, 1:])
    # New spacing: a large blob comes back exactly away from its boundaries, with nothing but 0/2/3.
    dst = grid_affine(src, world(src, np.array([19.5, 21.5, 9.5])), (48, 48, 24), (1.3, 1.7, 2.6))
    back = resample_to_grid(resample_to_grid(label, src, dst, (48, 48, 24), order=0), dst, src, shape, order=0)
    assert set(np.unique(back)) == {0, 2, 3}
    boundary = ndimage.morphological_gradient(label, size=3) > 0
    np.testing.assert_array_equal(back[~ndimage.binary_dilation(boundary)], label[~ndimage.binary_dilation(boundary)])
    assert np.mean(back[boundary] == label[boundary]) > 0.6


def test_preprocess_pair_shape_labels_crop_and_affine() -> None:
    src = oblique_affine()
    ed, ed_label, _ = phantom(systole=False)
    es, es_label, _ = phantom(systole=True, seed=1)
    pair = preprocess_image_pair(es, ed, src, fixed_label=es_label, moving_label=ed_label, subject="p", group="NOR")
    assert pair.fixed.shape == pair.moving.shape == pair.fixed_label.shape == DEFAULT_SIZE
    assert pair.fixed.dtype == np.float32 and pair.fixed_label.dtype == np.uint8
    assert 0.0 <= pair.fixed.min() and pair.moving.max() <= 1.0 and pair.moving.max() > 0.9
    assert set(np.unique(pair.moving_label)) == {0, 1, 2, 3}
    np.testing.assert_allclose(np.linalg.norm(pair.affine[:3, :3], axis=0), [1.5, 1.5, 3.15])
    assert pair.original_shape == SHAPE and (pair.subject, pair.group) == ("p", "NOR")
    # Heart inside the crop: every heart voxel of the input lands in it (labelled volume in mm^3 preserved) ...
    for crop_label, label in ((pair.fixed_label, es_label), (pair.moving_label, ed_label)):
        for value in (1, 2, 3):
            ratio = (crop_label == value).sum() * 1.5 * 1.5 * 3.15 / ((label == value).sum() * np.prod(SPACING))
            assert 0.85 < ratio < 1.15, (value, ratio)
    # ... and the crop is centred on the union of both frames' hearts (world mm).
    union = np.argwhere((ed_label > 0) | (es_label > 0)).mean(axis=0)
    np.testing.assert_allclose(world(pair.affine, (np.array(DEFAULT_SIZE) - 1) / 2), world(src, union), atol=1e-6)
    # A crop voxel and the input voxel at the same world position hold the same label (away from boundaries).
    crop_voxels = np.argwhere(pair.moving_label == 3)[::50].astype(float)
    source = np.rint(world(np.linalg.inv(src), world(pair.affine, crop_voxels))).astype(int)
    hits = ed_label[tuple(source.T)]
    assert np.mean(hits == 3) > 0.95


def test_to_original_grid_maps_back() -> None:
    src = oblique_affine()
    ed, ed_label, _ = phantom()
    es, es_label, _ = phantom(systole=True, seed=1)
    pair = preprocess_image_pair(es, ed, src, es_label, ed_label, size=(96, 96, 40))
    back = to_original_grid(pair.fixed_label, pair, order=0)
    assert back.shape == SHAPE
    for value in (1, 2, 3):
        a, b = back == value, es_label == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85, value
    low, high = pair.intensity_range
    image_back = to_original_grid(pair.fixed, pair, order=1) * (high - low) + low
    inside = ndimage.binary_erosion(es_label > 0, iterations=2)
    assert np.median(np.abs(image_back - es)[inside]) < 0.1 * (high - low)
    with pytest.raises(ValueError, match="crop grid"):
        to_original_grid(np.zeros((5, 5, 5)), pair, order=0)


def test_image_based_centre_lands_near_heart() -> None:
    ed, ed_label, _ = phantom(centre=(20.0, 48.0, 4.0))
    es, es_label, _ = phantom(centre=(20.0, 48.0, 4.0), systole=True, seed=3)
    truth = np.argwhere((ed_label > 0) | (es_label > 0)).mean(axis=0)
    estimate = heart_centre_voxel(es, ed, SPACING)
    distance_mm = np.linalg.norm((estimate - truth) * np.array(SPACING))
    assert distance_mm < 10.0
    # The body's own centre is far from the heart here, so this is a real test of the estimate.
    assert np.linalg.norm((np.array(SHAPE) / 2 - truth) * np.array(SPACING)) > 25.0
    # Without labels, preprocess_image_pair still centres the crop on the heart.
    pair = preprocess_image_pair(es, ed, oblique_affine(), size=(64, 64, 32))
    assert pair.fixed_label is None and pair.moving_label is None
    centre_world = world(pair.affine, (np.array([64, 64, 32]) - 1) / 2)
    assert np.linalg.norm(centre_world - world(oblique_affine(), truth)) < 10.0


def test_identical_frames_fall_back_to_grid_centre() -> None:
    image = np.random.default_rng(0).random((10, 12, 6)).astype(np.float32)
    np.testing.assert_allclose(heart_centre_voxel(image, image, (1.0, 1.0, 1.0)), [4.5, 5.5, 2.5])


def test_intensities_share_one_mapping() -> None:
    rng = np.random.default_rng(0)
    fixed = rng.normal(100, 30, (20, 20, 6)).astype(np.float32)
    moving = fixed * 2.0
    f, m, (low, high) = normalise_intensities(fixed, moving)
    both = np.concatenate([fixed.ravel(), moving.ravel()])
    assert low == pytest.approx(np.percentile(both, 1.0)) and high == pytest.approx(np.percentile(both, 99.5))
    np.testing.assert_allclose(f, np.clip((fixed - low) / (high - low), 0, 1), atol=1e-6)
    np.testing.assert_allclose(m, np.clip((moving - low) / (high - low), 0, 1), atol=1e-6)
    assert m.mean() > f.mean() + 0.2 and f.min() == 0.0 and m.max() == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, m, a: (np.full_like(f, 3.0), m, a), "fixed image is constant"),
        (lambda f, m, a: (f, np.where(np.indices(m.shape)[0] == 2, np.nan, m), a), "moving image contains NaN"),
        (lambda f, m, a: (f, m[:, :, :-1], a), "shapes? .* differ"),
        (lambda f, m, a: (f[..., None], m, a), "fixed image must be 3-D"),
        (lambda f, m, a: (f, m, np.zeros((4, 4))), "affine must be"),
    ],
)
def test_bad_input_one_line_value_error(change, message: str) -> None:
    rng = np.random.default_rng(0)
    fixed, moving = rng.random((12, 12, 4)), rng.random((12, 12, 4))
    fixed, moving, affine = change(fixed, moving, np.eye(4))
    with pytest.raises(ValueError, match=message) as err:
        preprocess_image_pair(fixed, moving, affine, size=(8, 8, 4))
    assert "\n" not in str(err.value)


def test_bad_labels_and_sizes() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 4))
    with pytest.raises(ValueError, match="fixed_label shape"):
        preprocess_image_pair(image, image, np.eye(4), fixed_label=np.zeros((12, 12, 5)))
    with pytest.raises(ValueError, match="integer label values"):
        preprocess_image_pair(image, image, np.eye(4), moving_label=np.full((12, 12, 4), 0.5))
    with pytest.raises(ValueError, match="spacing must be"):
        preprocess_image_pair(image, image, np.eye(4), spacing=(1.5, 0.0, 3.0))


def test_displacement_to_crop_grid_keeps_the_world_displacement() -> None:
    src = oblique_affine()
    ed, ed_label, _ = phantom(systole=False)
    es, es_label, _ = phantom(systole=True, seed=1)
    pair = preprocess_image_pair(es, ed, src, fixed_label=es_label, moving_label=ed_label)
    shift = np.array([1.0, -2.0, 0.25])  # input voxels
    crop = displacement_to_crop_grid(np.broadcast_to(shift, (*SHAPE, 3)).copy(), pair)
    assert crop.shape == (3, *DEFAULT_SIZE) and crop.dtype == np.float32
    # the same world vector (mm) everywhere, also where the crop reaches beyond the input grid (edge values): the
    # rotation and flip of the input affine are undone, and 1 input voxel becomes spacing / 1.5 (or / 3.15) voxels
    q = world(np.linalg.inv(src), world(pair.affine, np.argwhere(np.ones(DEFAULT_SIZE, bool)).astype(float)))
    assert np.mean(np.all((q >= 0) & (q <= np.array(SHAPE) - 1), axis=1)) < 0.5  # most of the crop is outside
    crop_mm = np.einsum("ij,jxyz->ixyz", pair.affine[:3, :3], crop).reshape(3, -1)
    np.testing.assert_allclose(crop_mm, (src[:3, :3] @ shift)[:, None] * np.ones(crop_mm.shape), atol=1e-4)
    with pytest.raises(ValueError, match="input grid"):
        displacement_to_crop_grid(np.zeros((*SHAPE, 2)), pair)


def test_synthetic_ground_truth_on_the_crop_grid_maps_ed_labels_onto_es(tiny_cohort) -> None:
    from cvae.evaluation.metrics import dice
    from cvae.fields import warp

    for subject in list(load_cohort(tiny_cohort, skip_bad=False))[:3]:
        pair = preprocess_subject(subject)
        name = subject.info.subject
        truth = nib.load(subject.info.directory / f"{name}_gt_displacement.nii.gz").get_fdata(dtype=np.float32)
        u = torch.from_numpy(displacement_to_crop_grid(truth, pair))[None]
        warped = warp(torch.from_numpy(pair.moving_label.astype(np.float32))[None, None], u, mode="nearest")
        warped = warped[0, 0].round().numpy()
        for value in (1, 2, 3):
            after, before = dice(warped == value, pair.fixed_label == value), dice(pair.moving_label == value,
                                                                                    pair.fixed_label == value)
            assert after > 0.75 and after > before + 0.05, (name, value, before, after)


def test_synthetic_cohort_round_trip(tiny_cohort) -> None:
    """Generator -> ACDC reader -> preprocessing: paper-sized crops holding every subject's whole heart, both when
    centred on the labels and when centred from the images alone."""
    subjects = list(load_cohort(tiny_cohort, skip_bad=False))
    assert len(subjects) >= 10
    errors_mm = []
    for subject in subjects:
        pair = preprocess_subject(subject)
        assert pair.fixed.shape == pair.moving.shape == DEFAULT_SIZE and pair.fixed.max() <= 1.0
        heart = (subject.es_label > 0) | (subject.ed_label > 0)
        heart_mm3 = heart.sum() * np.prod(subject.spacing)
        for crop_label, label in ((pair.fixed_label, subject.es_label), (pair.moving_label, subject.ed_label)):
            assert crop_label.shape == DEFAULT_SIZE and set(np.unique(crop_label)) <= {0, 1, 2, 3}
            ratio = (crop_label > 0).sum() * 1.5 * 1.5 * 3.15 / ((label > 0).sum() * np.prod(subject.spacing))
            assert 0.9 < ratio < 1.1, (subject.info.subject, ratio)
        # Image-only centring (as for a user's unlabelled images): the crop still holds (nearly) the whole heart.
        fixed, moving, _ = normalise_intensities(subject.es_image, subject.ed_image)
        centre = world(subject.affine, heart_centre_voxel(fixed, moving, subject.spacing))
        crop_affine = grid_affine(subject.affine, centre, DEFAULT_SIZE, DEFAULT_SPACING)
        in_crop = resample_to_grid(heart.astype(np.uint8), subject.affine, crop_affine, DEFAULT_SIZE, order=0)
        assert in_crop.sum() * 1.5 * 1.5 * 3.15 / heart_mm3 > 0.9, subject.info.subject
        errors_mm.append(np.linalg.norm(centre - world(subject.affine, np.argwhere(heart).mean(axis=0))))
    assert np.mean(errors_mm) < 15.0 and np.max(errors_mm) < 25.0, np.round(errors_mm, 1)
