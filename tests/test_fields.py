"""Diffeomorphic layers: warp, compose, exponentiate, Jacobian determinant, Gaussian smoothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.ndimage import convolve1d

from cvae.fields import (
    compose,
    exponentiate,
    gaussian_kernel1d,
    gaussian_smooth,
    identity_grid,
    image_tensor,
    jacobian_determinant,
    steps_for,
    warp,
    warp_labels,
)

from conftest import folding_by_hand, nearest_warp

SHAPE = (24, 20, 16)


def interior(t: torch.Tensor, margin: int) -> torch.Tensor:
    """Crop ``margin`` voxels from each side of the last three axes."""
    return t[..., margin:-margin, margin:-margin, margin:-margin]


def smooth_random_field(shape, max_norm: float, seed: int, sigma: float = 6.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)
    v = gaussian_smooth(noise, gaussian_kernel1d(sigma, 4 * int(sigma) + 1, torch.float64))
    return v * (max_norm / v.norm(dim=1).max())


def test_exponentiate_zero_is_identity():
    u = exponentiate(torch.zeros(2, 3, *SHAPE), 4)
    assert torch.count_nonzero(u) == 0


@pytest.mark.parametrize("downsample", [1, 2])
def test_constant_velocity_is_translation(downsample):
    c = torch.tensor([1.7, -2.3, 0.6], dtype=torch.float64)
    v = c.view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).clone()
    u = exponentiate(v, 4, downsample=downsample)
    err = (interior(u, 4) - c.view(1, 3, 1, 1, 1)).abs().max()
    assert err < 1e-3


@pytest.mark.parametrize("downsample", [1, 2])
def test_linear_rotation_field_matches_matrix_exponential(downsample):
    shape = (32, 32, 32)
    a = np.array([[0.0, -0.15, 0.05], [0.15, 0.0, -0.08], [-0.05, 0.08, 0.0]])  # skew-symmetric: a rotation
    centre = (np.array(shape) - 1) / 2
    x = identity_grid(shape, dtype=torch.float64)[0] - torch.tensor(centre).view(3, 1, 1, 1)
    v = torch.einsum("ij,jxyz->ixyz", torch.tensor(a), x)[None]
    u = exponentiate(v, None, downsample=downsample)
    expected = torch.einsum("ij,jxyz->ixyz", torch.tensor(expm(a) - np.eye(3)), x)[None]
    err = (interior(u - expected, 8)).norm(dim=1).max()
    assert steps_for(v) >= 3
    assert err < 0.1


def test_inverse_by_negated_velocity():
    v = smooth_random_field((48, 48, 48), max_norm=8.0, seed=0)
    forward, backward = exponentiate(v, 7), exponentiate(-v, 7)
    residual = compose(forward, backward).norm(dim=1)
    assert interior(residual, 10).mean() < 0.05


def test_large_velocity_stays_diffeomorphic_with_automatic_steps():
    v = smooth_random_field((48, 48, 48), max_norm=8.0, seed=1)
    jac = jacobian_determinant(exponentiate(v, None))
    assert jac.min() > 0


def test_half_resolution_integration_agrees_with_full_resolution():
    v = smooth_random_field((64, 64, 32), max_norm=4.0, seed=2)
    full, half = exponentiate(v, 6), exponentiate(v, 6, downsample=2)
    assert interior((full - half).norm(dim=1), 6).mean() < 0.1


def test_warp_integer_translation_is_exact_and_nearest_keeps_labels():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 1, *SHAPE, generator=gen, dtype=torch.float64)
    u = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    u[:, 0], u[:, 1], u[:, 2] = 2.0, -3.0, 1.0
    moved = warp(image, u)
    # (M o phi)(x) = M(x + u): output index i reads input index i + 2 along X, etc.
    assert torch.allclose(moved[0, 0, :-2, 3:, :-1], image[0, 0, 2:, :-3, 1:], atol=1e-12, rtol=0)
    labels = torch.randint(0, 4, (1, 1, *SHAPE), generator=gen).float()
    noisy = torch.rand(1, 3, *SHAPE, generator=gen) * 3 - 1.5
    warped = warp(labels, noisy, mode="nearest")
    assert set(warped.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_compose_of_translations_adds():
    a = torch.zeros(1, 3, *SHAPE)
    b = torch.zeros(1, 3, *SHAPE)
    a[:, 0], b[:, 1] = 1.5, -2.0
    ab = compose(a, b)
    assert torch.allclose(interior(ab, 3)[:, 0], torch.tensor(1.5))
    assert torch.allclose(interior(ab, 3)[:, 1], torch.tensor(-2.0))


def test_jacobian_of_linear_map_is_its_determinant():
    shape = (16, 16, 16)
    a = torch.tensor([[0.1, 0.2, 0.0], [0.0, -0.3, 0.1], [0.05, 0.0, 0.2]], dtype=torch.float64)
    x = identity_grid(shape, dtype=torch.float64)[0]
    u = torch.einsum("ij,jxyz->ixyz", a, x)[None]
    jac = jacobian_determinant(u)
    assert jac.shape == (1, *shape)
    assert torch.allclose(jac, torch.det(torch.eye(3, dtype=torch.float64) + a).expand_as(jac))
    # The same field expressed in mm with an anisotropic spacing has the same determinant.
    spacing = (1.5, 1.5, 3.15)
    u_mm = u * torch.tensor(spacing, dtype=torch.float64).view(1, 3, 1, 1, 1)
    assert torch.allclose(jacobian_determinant(u_mm, spacing), jac)


def test_gaussian_smooth_matches_scipy():
    gen = torch.Generator().manual_seed(4)
    volume = torch.rand(2, 3, 12, 10, 9, generator=gen, dtype=torch.float64)
    kernel = gaussian_kernel1d(3.0, 15, torch.float64)
    expected = volume.numpy()
    for axis in (2, 3, 4):
        expected = convolve1d(expected, kernel.numpy(), axis=axis, mode="constant")
    assert np.allclose(gaussian_smooth(volume, kernel).numpy(), expected, atol=1e-12)
    assert abs(float(kernel.sum()) - 1.0) < 1e-12


def test_gradcheck_warp_and_exponentiate():
    shape = (5, 4, 4)
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 1, *shape, generator=gen, dtype=torch.float64, requires_grad=True)
    u = (0.3 * torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, d: warp(i, d), (image, u))
    v = (0.3 * torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: exponentiate(w, 2), (v,))


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8)])
def test_bad_field_shapes_raise(bad):
    with pytest.raises(ValueError, match=r"\(B, 3, X, Y, Z\)"):
        exponentiate(bad)


def test_non_finite_velocity_with_automatic_steps_raises():
    v = torch.zeros(1, 3, 8, 8, 8)
    v[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        exponentiate(v, None)


@pytest.mark.parametrize("layout", [lambda v: v, lambda v: v[None], lambda v: v[None, None]])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_image_tensor_accepts_one_volume_in_any_layout(layout, as_tensor):
    volume = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)  # a label map: uint8 in, float32 out
    given = layout(torch.from_numpy(volume) if as_tensor else volume)
    t = image_tensor(given, "cpu", shape=(4, 3, 2))
    assert t.shape == (1, 1, 4, 3, 2) and t.dtype == torch.float32 and t.device.type == "cpu"
    np.testing.assert_array_equal(t[0, 0].numpy(), volume.astype(np.float32))


@pytest.mark.parametrize("volume, shape, message", [
    (np.zeros((4, 3, 2)), (4, 3, 4), r"^fixed is \(4, 3, 2\) voxels but the model expects \(4, 3, 4\): preprocess"),
    (np.zeros((2, 4, 3, 2)), None, r"^fixed must be one volume .* got shape \(2, 4, 3, 2\)$"),
    (np.zeros((1, 1, 1, 4, 3, 2)), None, r"^fixed must be one volume"),
    (np.zeros((4, 3)), (4, 3, 1), r"^fixed must be one volume .* got shape \(4, 3\)$"),  # a 2-D slice is no volume
])
def test_image_tensor_refuses_other_shapes_with_one_line(volume, shape, message):
    with pytest.raises(ValueError, match=message) as info:
        image_tensor(volume, shape=shape, name="fixed")
    assert "\n" not in str(info.value)


def test_warp_labels_by_an_integer_shift_is_numpy_slicing():
    gen = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 4, (1, 1, 10, 9, 6), generator=gen)  # int64 in
    u = torch.zeros(1, 3, 10, 9, 6)
    u[:, 0], u[:, 1] = 2.0, -1.0
    moved = warp_labels(labels, u)
    assert moved.dtype == torch.uint8 and moved.shape == (1, 1, 10, 9, 6)
    # L(x + 2 e_X - e_Y): index i + 2 along X and j - 1 along Y, clamped to the volume (border padding)
    padded = np.pad(labels[0, 0].numpy(), ((0, 2), (1, 0), (0, 0)), mode="edge")
    np.testing.assert_array_equal(moved[0, 0].numpy(), padded[2:, :-1, :])
    # one label map, a batch of fields: one warped map per field, values exactly those of nearest neighbours
    noisy = torch.rand(3, 3, 10, 9, 6, generator=gen) * 4 - 2
    batch = warp_labels(labels.to(torch.uint8), noisy)
    assert batch.shape == (3, 1, 10, 9, 6) and batch.dtype == torch.uint8
    for b in range(3):
        np.testing.assert_array_equal(batch[b, 0].numpy(), nearest_warp(labels[0, 0].numpy(), noisy[b].numpy()))


def test_jacobian_determinant_counts_the_folding_of_numpy_finite_differences():
    u = smooth_random_field(SHAPE, max_norm=6.0, seed=7, sigma=1.5)  # strong enough to fold in places
    det = jacobian_determinant(u)
    fraction = float((det <= 0).double().mean())
    assert 0.001 < fraction < 0.5
    assert fraction == folding_by_hand(u[0].numpy())
