"""Online augmentation: identity, known transforms, labels stay labels, F and M move together, seeding."""
from __future__ import annotations

import math

import pytest
import torch

from cvae.data.augment import NO_AUGMENTATION, AugmentParams, apply_affine, augment_batch, random_affines

SIZE = (16, 18, 8)


def make_batch(batch: int = 2, seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    fixed = torch.rand(batch, 1, *SIZE, generator=g)
    moving = torch.rand(batch, 1, *SIZE, generator=g)
    fixed_label = torch.randint(0, 4, (batch, 1, *SIZE), generator=g)
    moving_label = torch.randint(0, 4, (batch, 1, *SIZE), generator=g)
    return {"fixed": fixed, "moving": moving, "fixed_label": fixed_label, "moving_label": moving_label,
            "group": torch.tensor([0, 3][:batch]), "subject": ["a", "b"][:batch]}


def test_identity_params_return_input_exactly() -> None:
    batch = make_batch()
    out = augment_batch(batch, NO_AUGMENTATION, torch.Generator().manual_seed(1))
    for key in ("fixed", "moving", "fixed_label", "moving_label", "group"):
        assert torch.equal(out[key], batch[key])
    assert NO_AUGMENTATION.is_identity and not AugmentParams().is_identity


def test_identity_matrix_through_grid_sample() -> None:
    batch = make_batch()
    eye, zero = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1), torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(apply_affine(batch["fixed"], eye, zero, "bilinear"), batch["fixed"], atol=1e-5, rtol=0)
    assert torch.equal(apply_affine(batch["fixed_label"], eye, zero, "nearest"), batch["fixed_label"])


def test_integer_shift_mirror_and_rotation_conventions() -> None:
    volume = torch.rand(1, 1, *SIZE, generator=torch.Generator().manual_seed(2))
    eye = torch.eye(3, dtype=torch.float64)[None]
    # Output voxel x samples input x + shift: a +2 shift along axis 0 moves content by -2 voxels.
    shifted = apply_affine(volume, eye, torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64), "bilinear")
    torch.testing.assert_close(shifted[..., :-2, :, 1:], volume[..., 2:, :, :-1], atol=1e-5, rtol=0)
    assert shifted[..., -2:, :, :].abs().max() < 1e-5  # zero padding
    mirror = apply_affine(volume, torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))[None],
                          torch.zeros(1, 3, dtype=torch.float64), "nearest")
    assert torch.equal(mirror, volume.flip(3))
    # 90 degrees about the slice axis on a square in-plane grid: out[i, j] = in[N - 1 - j, i], i.e. rot90 k=-1.
    square = torch.rand(1, 1, 12, 12, 5, generator=torch.Generator().manual_seed(3))
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    turned = apply_affine(square, rot, torch.zeros(1, 3, dtype=torch.float64), "nearest")
    assert torch.equal(turned, torch.rot90(square, k=-1, dims=(2, 3)))


def test_labels_stay_integer_and_in_range() -> None:
    batch = make_batch()
    out = augment_batch(batch, AugmentParams(rotation=25.0, tilt=5.0), torch.Generator().manual_seed(4))
    for key in ("fixed_label", "moving_label"):
        assert out[key].dtype == torch.int64 and out[key].shape == batch[key].shape
        assert set(out[key].unique().tolist()) <= {0, 1, 2, 3}
        assert not torch.equal(out[key], batch[key])
    for key in ("fixed", "moving"):
        assert out[key].dtype == torch.float32 and 0 <= out[key].min() and out[key].max() <= 1
    assert out["subject"] == ["a", "b"] and torch.equal(out["group"], batch["group"])


def test_fixed_and_moving_get_the_same_transform() -> None:
    batch = make_batch(seed=5)
    batch["moving"], batch["moving_label"] = batch["fixed"].clone(), batch["fixed_label"].clone()
    out = augment_batch(batch, AugmentParams(), torch.Generator().manual_seed(6))
    assert torch.equal(out["fixed"], out["moving"]) and torch.equal(out["fixed_label"], out["moving_label"])
    assert not torch.equal(out["fixed"], batch["fixed"])
    # Labels move with their images: image = label / 3 stays so where the label is locally constant.
    label = torch.zeros(2, 1, *SIZE, dtype=torch.int64)
    label[:, :, 3:9, 4:12, 2:6], label[:, :, 9:14, 4:12, 2:6] = 3, 1
    out = augment_batch({"fixed": label / 3.0, "moving": label / 3.0, "fixed_label": label},
                        AugmentParams(), torch.Generator().manual_seed(7))
    assert not torch.equal(out["fixed_label"], label)
    inner = torch.nn.functional.max_pool3d(-(out["fixed"] * 3).round(), 3, 1, 1) == -(out["fixed"] * 3).round()
    inner &= torch.nn.functional.max_pool3d((out["fixed"] * 3).round(), 3, 1, 1) == (out["fixed"] * 3).round()
    agree = ((out["fixed"] * 3 - out["fixed_label"]).abs() < 1e-4)[inner]
    assert inner.float().mean() > 0.5 and agree.float().mean() > 0.99


def test_seeding_repeats_and_samples_differ() -> None:
    batch = make_batch()
    params = AugmentParams()
    a = augment_batch(batch, params, torch.Generator().manual_seed(8))
    b = augment_batch(batch, params, torch.Generator().manual_seed(8))
    c = augment_batch(batch, params, torch.Generator().manual_seed(9))
    assert torch.equal(a["fixed"], b["fixed"]) and not torch.equal(a["fixed"], c["fixed"])


def test_random_affines_respect_ranges() -> None:
    params = AugmentParams(shift=5.0, shift_slices=1.0, rotation=10.0, tilt=0.0, scale=(0.9, 1.1), mirror_prob=0.5)
    spacing = (1.5, 1.5, 3.15)
    matrix, shift = random_affines(2000, params, torch.Generator().manual_seed(10), spacing)
    assert shift[:, :2].abs().max() <= 5.0 and shift[:, 2].abs().max() <= 1.0 and shift[:, 0].abs().max() > 4.5
    # With tilt 0 the slice axis is untouched up to scale; in-plane it is a scaled rotation (+- mirror).
    in_plane = matrix[:, :2, :2]
    scale = torch.sqrt(torch.det(in_plane).abs())
    assert 0.9 - 1e-9 <= scale.min() and scale.max() <= 1.1 + 1e-9
    torch.testing.assert_close(matrix[:, 2, 2].abs(), scale)
    mirrored = torch.det(in_plane) < 0
    assert 0.35 < mirrored.double().mean() < 0.65  # one flip of two axes with p = 0.5 each -> odd flips half the time
    cos = in_plane[:, 0, 0].abs() / scale
    assert cos.min() >= math.cos(math.radians(10.0)) - 1e-9
    with pytest.raises(ValueError, match="mirror_prob"):
        AugmentParams(mirror_prob=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentParams(scale=(1.1, 0.9))


def test_anisotropic_spacing_rotation_is_rigid_in_mm() -> None:
    spacing = (1.5, 1.5, 3.15)
    matrix, _ = random_affines(50, AugmentParams(tilt=8.0, scale=(1.0, 1.0), mirror_prob=0.0),
                               torch.Generator().manual_seed(11), spacing)
    d = torch.diag(torch.tensor(spacing, dtype=torch.float64))
    in_mm = d @ matrix @ torch.linalg.inv(d)
    torch.testing.assert_close(in_mm @ in_mm.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    assert (matrix[:, 0, 2].abs() > 1e-3).any()  # the tilt really couples the slice axis in
