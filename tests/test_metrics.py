"""Tests of cvae.evaluation.metrics against SimpleITK, brute-force point-set distances and fields with known answers."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from cvae.data.labels import STRUCTURES
from cvae.evaluation.metrics import (
    EmptyStructureWarning,
    case_metrics,
    dice,
    hd95,
    mean_dice,
    mean_displacement_mm,
    mean_gradient_norm,
    mean_scores,
    negative_jacobian_fraction,
    rmse,
    structure_scores,
)

from conftest import dice_by_hand

SPACING = (1.5, 1.5, 3.15)


def blob(shape: tuple[int, ...], seed: int, sigma: float = 2.0, quantile: float = 0.7) -> np.ndarray:
    """Random smooth boolean blob(s): thresholded Gaussian-filtered noise."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return noise > np.quantile(noise, quantile)


def random_labels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random ACDC-like label map with values 0-3."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    return np.digitize(noise, np.quantile(noise, [0.55, 0.7, 0.85])).astype(np.int16)


def sphere(shape: tuple[int, int, int], centre_mm: tuple[float, ...], radius_mm: float, spacing=SPACING) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def sitk_dice(a: np.ndarray, b: np.ndarray) -> float:
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.GetImageFromArray(a.astype(np.uint8)), sitk.GetImageFromArray(b.astype(np.uint8)))
    return overlap.GetDiceCoefficient(1)


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """HD95 from all pairwise distances between surface points; surface = voxel with a face neighbour outside."""

    def surface_points_mm(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        all_neighbours_inside = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                all_neighbours_inside &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inner & ~all_neighbours_inside) * np.asarray(spacing)

    pa, pb = surface_points_mm(a), surface_points_mm(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


# ---------------------------------------------------------------- Dice


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_simpleitk(seed):
    a, b = blob((24, 20, 12), seed), blob((24, 20, 12), seed + 100)
    assert 0.05 < dice(a, b) < 0.95
    assert dice(a, b) == pytest.approx(sitk_dice(a, b), abs=1e-12)


def test_dice_identical_disjoint_and_torch():
    a = blob((16, 16, 8), 3)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    b = blob((16, 16, 8), 4)
    assert dice(torch.from_numpy(a), torch.from_numpy(b)) == dice(a, b)
    assert dice(a.astype(np.uint8), b.astype(np.float32)) == dice(a, b)


def test_dice_empty_structures():
    empty, full = np.zeros((4, 4, 4), bool), blob((4, 4, 4), 5, sigma=1.0)
    with pytest.warns(EmptyStructureWarning, match="both"):
        assert math.isnan(dice(empty, empty))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dice(empty, full) == 0.0
        assert dice(full, empty) == 0.0


# ---------------------------------------------------------------- HD95


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hd95_matches_brute_force_anisotropic(seed):
    # Blobs touch the volume border, which must count as surface (outside = background).
    a, b = blob((18, 16, 10), seed, sigma=1.5, quantile=0.6), blob((18, 16, 10), seed + 50, sigma=1.5, quantile=0.6)
    expected = brute_force_hd95(a, b, SPACING)
    assert expected > 0
    assert hd95(a, b, SPACING) == pytest.approx(expected, abs=1e-6)
    assert hd95(b, a, SPACING) == pytest.approx(expected, abs=1e-6)


def test_hd95_small_shapes_brute_force():
    cube = np.zeros((12, 12, 8), bool)
    cube[2:6, 3:9, 1:4] = True
    bar = np.zeros_like(cube)
    bar[7:11, 5, 2:7] = True
    single = np.zeros_like(cube)
    single[9, 1, 6] = True
    for a, b in ((cube, bar), (cube, single), (bar, single)):
        assert hd95(a, b, SPACING) == pytest.approx(brute_force_hd95(a, b, SPACING), abs=1e-6)
    # Two single voxels: the distance between them in mm.
    other = np.zeros_like(cube)
    other[9, 3, 2] = True
    assert hd95(single, other, SPACING) == pytest.approx(math.hypot(2 * 1.5, 4 * 3.15), abs=1e-9)


def test_hd95_shifted_spheres_uses_axis_spacing():
    shape = (40, 40, 20)
    a = sphere(shape, (30.0, 30.0, 25.2), 12.0)
    assert hd95(a, a, SPACING) == 0.0
    z_shift = np.roll(a, 2, axis=2)  # 2 slices = 6.3 mm
    x_shift = np.roll(a, 2, axis=0)  # 2 voxels = 3.0 mm
    hd_z, hd_x = hd95(a, z_shift, SPACING), hd95(a, x_shift, SPACING)
    # A translation by t moves every surface voxel onto a surface voxel at distance |t|: HD95 <= |t|, and for a sphere
    # most of the surface moves by a good part of |t|.
    assert 0.5 * 6.3 < hd_z <= 6.3 + 1e-9
    assert 0.5 * 3.0 < hd_x <= 3.0 + 1e-9
    assert hd95(a, z_shift, (1.5, 1.5, 1.0)) < 0.5 * 6.3  # same voxels, thin slices: much smaller in mm


def test_hd95_empty_and_torch():
    a = sphere((20, 20, 10), (15.0, 15.0, 15.0), 6.0)
    empty = np.zeros_like(a)
    with pytest.warns(EmptyStructureWarning):
        assert math.isnan(hd95(a, empty, SPACING))
    with pytest.warns(EmptyStructureWarning):
        assert math.isnan(hd95(empty, empty, SPACING))
    b = np.roll(a, 1, axis=1)
    assert hd95(torch.from_numpy(a), torch.from_numpy(b), torch.tensor(SPACING)) == hd95(a, b, SPACING)


def test_mask_input_validation():
    a = np.zeros((8, 8, 4), bool)
    for call in (
        lambda: dice(a, np.zeros((8, 8, 5), bool)),
        lambda: hd95(a, np.zeros((8, 8, 5), bool), SPACING),
        lambda: hd95(a, a, (1.5, 1.5)),
        lambda: hd95(a, a, (1.5, 0.0, 3.0)),
        lambda: dice(a, np.full((8, 8, 4), 2)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- structure_scores


def test_structure_scores_keys_and_values():
    pred, ref = random_labels((24, 24, 10), 7), random_labels((24, 24, 10), 8)
    scores = structure_scores(pred, ref, SPACING)
    assert list(scores) == list(STRUCTURES)
    for name, values in STRUCTURES.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        assert scores[name]["dice"] == pytest.approx(sitk_dice(p, r), abs=1e-12)
        assert scores[name]["hd95"] == pytest.approx(brute_force_hd95(p, r, SPACING), abs=1e-6)
    same = structure_scores(torch.from_numpy(ref)[None, None], ref, SPACING)
    assert all(s == {"dice": 1.0, "hd95": 0.0} for s in same.values())


def test_structure_scores_missing_structure():
    ref = random_labels((20, 20, 8), 9)
    pred = np.where(ref == 1, 0, ref)  # prediction without RV
    with pytest.warns(EmptyStructureWarning, match="RV"):
        scores = structure_scores(pred, ref, SPACING)
    assert scores["RV"]["dice"] == 0.0 and math.isnan(scores["RV"]["hd95"])
    assert scores["LV blood pool"] == {"dice": 1.0, "hd95": 0.0}
    with pytest.raises(ValueError, match="one \\(X, Y, Z\\) volume"):
        structure_scores(np.stack([ref, ref]), np.stack([ref, ref]), SPACING)


def test_mean_scores_average_each_metric_over_the_structures_where_it_is_defined():
    scores = {"LV blood pool": {"dice": 0.8, "hd95": 2.0}, "LV myocardium": {"dice": 0.5, "hd95": math.nan},
              "RV": {"dice": math.nan, "hd95": math.nan}, "Whole heart": {"dice": 0.2, "hd95": 7.0}}
    means = mean_scores(scores)
    assert list(means) == ["dice", "hd95"]
    assert means["dice"] == pytest.approx((0.8 + 0.5 + 0.2) / 3, abs=1e-15)
    assert means["hd95"] == pytest.approx((2.0 + 7.0) / 2, abs=1e-15)
    undefined = mean_scores({"RV": {"dice": math.nan, "hd95": math.nan}})
    assert math.isnan(undefined["dice"]) and math.isnan(undefined["hd95"])


def test_mean_dice_against_a_hand_count_leaving_out_a_structure_empty_in_both():
    pred, ref = random_labels((20, 18, 8), 13), random_labels((20, 18, 8), 14)
    pred, ref = np.where(pred == 1, 0, pred), np.where(ref == 1, 0, ref)  # no RV in either map
    expected = []
    for values in ((3,), (2,), (2, 3), (1, 2, 3)):  # the structures other than RV, by their label values
        a, b = np.isin(pred, values), np.isin(ref, values)
        expected.append(dice_by_hand(a, b))
    assert 0.1 < min(expected) and max(expected) < 0.9  # neither a trivial overlap nor none
    with pytest.warns(EmptyStructureWarning, match="RV") as record:
        value = mean_dice(torch.from_numpy(pred)[None, None], ref)
    assert len(record) == 1
    assert value == pytest.approx(np.mean(expected), abs=1e-12)
    # a structure present in one map only is a real failure: its Dice 0 counts in the mean
    pred[ref == 3] = 1
    hand = [dice_by_hand(np.isin(pred, v), np.isin(ref, v)) for v in STRUCTURES.values()]
    assert hand[list(STRUCTURES).index("RV")] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyStructureWarning)
        assert mean_dice(pred, ref) == pytest.approx(np.mean(hand), abs=1e-12)


# ---------------------------------------------------------------- intensity and transform metrics


def test_rmse_with_and_without_mask():
    rng = np.random.default_rng(0)
    a = rng.random((1, 1, 6, 6, 4))
    mask = np.zeros((6, 6, 4), bool)
    mask[:3] = True
    b = a + np.where(mask, 0.3, 0.0)
    assert rmse(a, b) == pytest.approx(0.3 * math.sqrt(0.5), abs=1e-12)
    assert rmse(torch.from_numpy(a), torch.from_numpy(b), mask) == pytest.approx(0.3, abs=1e-12)
    assert rmse(a, b, ~mask) == 0.0
    with pytest.warns(EmptyStructureWarning):
        assert math.isnan(rmse(a, b, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="broadcast"):
        rmse(a, b, np.ones((5, 6, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        rmse(a, b[..., :3])


def test_negative_jacobian_fraction():
    det = np.ones((4, 5, 6))
    det[0, 0, :3] = -0.2
    det[1, 2, 3] = 0.0  # zero counts as non-positive
    det[2, 2, 2] = 1e-6  # tiny positive does not
    assert negative_jacobian_fraction(det) == pytest.approx(4 / 120)
    batch = np.stack([det, np.ones_like(det)])
    assert negative_jacobian_fraction(torch.from_numpy(batch)) == pytest.approx(4 / 240)
    for bad in (np.ones((4, 5)), np.full((2, 2, 2), np.nan)):
        with pytest.raises(ValueError):
            negative_jacobian_fraction(bad)


def test_mean_displacement_mm_constant_field():
    u = np.zeros((3, 5, 6, 4), np.float32)
    u[0], u[1], u[2] = 1.0, 2.0, -1.0  # voxels
    expected = math.sqrt((1 * 1.5) ** 2 + (2 * 1.5) ** 2 + (1 * 3.15) ** 2)
    assert mean_displacement_mm(u, SPACING) == pytest.approx(expected, rel=1e-6)
    batch = torch.from_numpy(np.stack([u, 2 * u]))
    assert mean_displacement_mm(batch, SPACING) == pytest.approx(1.5 * expected, rel=1e-6)
    with pytest.raises(ValueError, match="\\(B, 3, X, Y, Z\\)"):
        mean_displacement_mm(u[:2], SPACING)


def test_mean_gradient_norm_linear_field():
    A = np.array([[0.02, -0.05, 0.10], [0.03, 0.00, -0.04], [0.08, 0.01, 0.06]])  # d(u mm) / d(x mm)
    shape = (7, 6, 5)
    x_mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij"))
    u_mm = np.einsum("ij,jxyz->ixyz", A, x_mm) + np.array([1.0, -2.0, 0.5])[:, None, None, None]
    u_vox = u_mm / np.asarray(SPACING)[:, None, None, None]
    assert mean_gradient_norm(u_vox, SPACING) == pytest.approx(np.linalg.norm(A), rel=1e-9)
    assert mean_gradient_norm(torch.from_numpy(np.stack([u_vox, 2 * u_vox])), SPACING) == pytest.approx(
        1.5 * np.linalg.norm(A), rel=1e-9
    )
    assert abs(mean_gradient_norm(u_vox, (1.0, 1.0, 1.0)) - np.linalg.norm(A)) > 0.01  # spacing matters
    with pytest.raises(ValueError, match=">= 2 voxels"):
        mean_gradient_norm(u_vox[..., :1], SPACING)


# ---------------------------------------------------------------- case_metrics


def test_case_metrics_row():
    rng = np.random.default_rng(1)
    fixed, warped = rng.random((1, 1, 20, 20, 8)), rng.random((1, 1, 20, 20, 8))
    fixed_label, warped_label = random_labels((20, 20, 8), 10), random_labels((20, 20, 8), 11)
    jacdet = np.ones((20, 20, 8))
    jacdet[0, 0, 0] = -1.0
    u = np.full((3, 20, 20, 8), 0.5)
    row = case_metrics(
        spacing=SPACING, warped=warped, fixed=fixed, warped_label=warped_label, fixed_label=fixed_label,
        jacdet=jacdet, displacement=u,
    )
    scores = structure_scores(warped_label, fixed_label, SPACING)
    assert row["rmse"] == rmse(warped, fixed)
    assert row["dice RV"] == scores["RV"]["dice"]
    assert row["hd95 Whole heart"] == scores["Whole heart"]["hd95"]
    assert row["dice mean"] == pytest.approx(np.mean([s["dice"] for s in scores.values()]))
    assert row["negative jacobian fraction"] == pytest.approx(1 / 3200)
    assert row["mean displacement mm"] == pytest.approx(0.5 * math.sqrt(2 * 1.5**2 + 3.15**2))
    assert row["mean gradient norm"] == 0.0
    assert len(row) == 1 + 2 * (len(STRUCTURES) + 1) + 3
    assert set(case_metrics(spacing=SPACING, jacdet=jacdet)) == {"negative jacobian fraction"}
    with pytest.raises(ValueError, match="both or neither"):
        case_metrics(spacing=SPACING, warped_label=warped_label)


def test_case_metrics_mean_skips_nan():
    ref = random_labels((20, 20, 8), 12)
    pred = np.where(ref == 1, 0, ref)
    empty_rv = np.where(ref == 1, 0, ref)
    with pytest.warns(EmptyStructureWarning):
        row = case_metrics(spacing=SPACING, warped_label=pred, fixed_label=empty_rv)
    assert math.isnan(row["dice RV"]) and math.isnan(row["hd95 RV"])
    assert row["dice mean"] == 1.0 and row["hd95 mean"] == 0.0
