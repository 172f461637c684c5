"""Domain randomisation for training (``--domain``): make every training pair look like it came from another scanner,
in the spirit of SynthMorph (Hoffmann et al., IEEE TMI 2022: networks trained on images with random contrasts
generalise across contrasts and anatomies), while the unsupervised objective stays the paper's.

Two parts, each switched on by a level of ``--domain`` (:data:`cvae.training.config.DOMAINS`):

* ``geometry``: the affine augmentation of :mod:`cvae.data.augment` with wider ranges (:data:`WIDE_AFFINE`: any
  in-plane orientation, both in-plane mirrorings, larger scaling, shift and tilt), so that no orientation of the heart
  in the image grid is new at test time.
* ``full``: the geometry, then the acquisition of :func:`randomise_acquisition` (:class:`AcquisitionParams`): a random
  intensity curve (contrast between tissues, not only brightness), a smooth multiplicative bias field, thicker slices
  (a box average across slices), in-plane blur and Rician noise, and the intensities mapped to [0, 1] again as the
  preprocessing does. Fixed and moving image of a pair share the curve, bias, slice profile and blur (one scan);
  each gets its own noise.

Label-free: it needs only the images, so ``cvae adapt`` can use it on an unlabelled cohort too. Volumes are torch
tensors ``(B, 1, X, Y, Z)`` on the preprocessed grid (slice axis last), intensities in [0, 1]; randomness comes only
from the given ``torch.Generator``. None of these ranges was chosen by looking at the held-out foreign cohort.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvae.data.augment import IMAGE_KEYS, AugmentParams

__all__ = ["WIDE_AFFINE", "AcquisitionParams", "randomise_acquisition", "intensity_curve"]

#: The affine ranges of ``--domain geometry`` and ``full``: any in-plane rotation, mirroring of both in-plane axes.
WIDE_AFFINE = AugmentParams(shift=8.0, shift_slices=1.5, rotation=180.0, tilt=6.0, scale=(0.8, 1.25),
                            mirror_prob=0.5, mirror_axes=(0, 1))


@dataclass(frozen=True)
class AcquisitionParams:
    """Ranges of the random acquisition; every value is drawn uniformly in its range, per pair.

    ``knots``: control points of the intensity curve on [0, 1] (their values are drawn in [0, 1] and stretched to
    span it; with probability ``monotone_prob`` they are sorted, i.e. the curve keeps the order of intensities);
    ``gamma``: (min, max) exponent applied before the curve (log-uniform). ``bias``: maximum standard deviation of
    the log bias field, drawn on a ``bias_grid`` of control points and interpolated (trilinear). ``slab``: (min, max)
    number of slices averaged into one (thicker slices, then resampled to the grid). ``blur``: maximum in-plane
    Gaussian sigma, voxels. ``noise``: maximum Rician noise sigma, in units of the [0, 1] intensity range.
    ``percentiles``: the robust range mapped to [0, 1] at the end (the preprocessing's).
    """

    knots: int = 5
    monotone_prob: float = 0.7
    gamma: tuple[float, float] = (0.6, 1.6)
    bias: float = 0.3
    bias_grid: tuple[int, int, int] = (4, 4, 2)
    slab: tuple[float, float] = (1.0, 3.0)
    blur: float = 1.0
    noise: float = 0.06
    percentiles: tuple[float, float] = (1.0, 99.5)

    def __post_init__(self) -> None:
        if self.knots < 2:
            raise ValueError(f"knots must be >= 2, got {self.knots}")
        if not 0.0 <= self.monotone_prob <= 1.0:
            raise ValueError(f"monotone_prob must be in [0, 1], got {self.monotone_prob}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must be (min, max) with 0 < min <= max, got {self.gamma}")
        if not 1.0 <= self.slab[0] <= self.slab[1]:
            raise ValueError(f"slab must be (min, max) with 1 <= min <= max, got {self.slab}")
        if min(self.bias, self.blur, self.noise) < 0:
            raise ValueError("bias, blur and noise must be >= 0")


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def intensity_curve(image: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map ``image`` (B, C, X, Y, Z) in [0, 1] through the piecewise-linear curve with values ``knots`` (B, K) at
    K equally spaced positions of [0, 1]."""
    k = knots.shape[1] - 1
    position = image.clamp(0, 1) * k
    index = position.floor().clamp(max=k - 1)
    frac = position - index
    table = knots.view(knots.shape[0], 1, 1, 1, 1, -1).expand(*image.shape, -1)
    lower = table.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)
    upper = table.gather(-1, index.long().add(1).unsqueeze(-1)).squeeze(-1)
    return lower + frac * (upper - lower)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return kernel / kernel.sum()


def _blur_in_plane(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, X, Y, Z) along X and Y, edges replicated."""
    if sigma < 0.1:
        return volume
    kernel = _gaussian_kernel(sigma)
    pad = len(kernel) // 2
    for axis in (2, 3):
        shape = [1, 1, 1, 1, 1]
        shape[axis] = len(kernel)
        padding = [0, 0, 0, 0, 0, 0]
        padding[2 * (4 - axis)] = padding[2 * (4 - axis) + 1] = pad  # F.pad lists the last axis first
        volume = F.conv3d(F.pad(volume, padding, mode="replicate"), kernel.view(shape))
    return volume


def _thick_slices(volume: torch.Tensor, slab: float) -> torch.Tensor:
    """(N, 1, X, Y, Z) seen with slices ``slab`` times thicker: a box average across ``slab`` slices (fractional at
    the ends), edges replicated."""
    if slab <= 1.0 + 1e-3:
        return volume
    half = (slab - 1.0) / 2.0
    radius = int(half) + 1
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = (half + 0.5 - (offsets.abs() - 0.5)).clamp(0, 1)  # overlap of each slice with the slab
    weights = weights / weights.sum()
    padded = F.pad(volume, [radius, radius, 0, 0, 0, 0], mode="replicate")
    return F.conv3d(padded, weights.view(1, 1, 1, 1, -1))


def _bias_field(shape: tuple[int, ...], grid: tuple[int, int, int], strength: float,
                generator: torch.Generator) -> torch.Tensor:
    """A smooth multiplicative field ``exp(b)`` of spatial ``shape``, ``b`` trilinear between N(0, strength^2)
    control points on ``grid``."""
    coarse = torch.randn(1, 1, *grid, generator=generator) * strength
    return torch.exp(F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))[0]


def _to_unit(images: torch.Tensor, percentiles: tuple[float, float]) -> torch.Tensor:
    """Map a pair's images (2, 1, X, Y, Z) jointly: their ``percentiles`` -> 0 and 1, clipped to [0, 1]."""
    values = images.flatten()
    step = max(1, values.numel() // 200_000)  # a regular subsample: quantile's cost, same estimate
    low, high = torch.quantile(values[::step], torch.tensor(percentiles) / 100.0)
    return ((images - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def randomise_acquisition(batch: dict[str, object], params: AcquisitionParams,
                          generator: torch.Generator) -> dict[str, object]:
    """Return a copy of ``batch`` whose ``fixed`` and ``moving`` images (B, 1, X, Y, Z) in [0, 1] look acquired
    by another scanner (module docstring; one draw per pair, shared by its two frames except the noise). Labels and
    other entries pass through unchanged."""
    fixed, moving = (batch[k] for k in IMAGE_KEYS)
    out = dict(batch)
    results: dict[str, list[torch.Tensor]] = {k: [] for k in IMAGE_KEYS}
    for b in range(fixed.shape[0]):  # type: ignore[union-attr]
        pair = torch.stack([fixed[b], moving[b]]).float()  # type: ignore[index]
        log_gamma = _uniform(generator, 1, *torch.tensor(params.gamma).log().tolist())
        knots = torch.rand(params.knots, generator=generator)
        if torch.rand(1, generator=generator) < params.monotone_prob:
            knots = knots.sort().values
        knots = (knots - knots.min()) / (knots.max() - knots.min()).clamp_min(1e-3)  # the whole range is used
        pair = intensity_curve(pair.clamp(0, 1) ** log_gamma.exp(), knots.expand(2, -1))
        strength = float(_uniform(generator, 1, 0.0, params.bias))
        pair = pair * _bias_field(tuple(pair.shape[2:]), params.bias_grid, strength, generator)
        pair = _thick_slices(pair, float(_uniform(generator, 1, *params.slab)))
        pair = _blur_in_plane(pair, float(_uniform(generator, 1, 0.0, params.blur)))
        pair = _to_unit(pair, params.percentiles)  # the noise is relative to the image's range
        sigma = float(_uniform(generator, 1, 0.0, params.noise))
        real = pair + sigma * torch.randn(pair.shape, generator=generator)
        imaginary = sigma * torch.randn(pair.shape, generator=generator)
        pair = _to_unit(torch.sqrt(real ** 2 + imaginary ** 2), params.percentiles)
        for key, image in zip(IMAGE_KEYS, pair):
            results[key].append(image.to(fixed.dtype))  # type: ignore[union-attr]
    for key in IMAGE_KEYS:
        out[key] = torch.stack(results[key])
    return out
