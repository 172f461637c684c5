"""Contrast and acquisition of the foreign phantom (:mod:`cvae.data.foreign`): tissue ids -> an int16 magnitude image.

* **Contrast**: every tissue gets its own random relative signal (a cine-bSSFP-like look with ranges of its own:
  bright blood and fat, dark myocardium, near-black lung, grey liver and muscle); RV, atrial and outflow blood,
  papillary muscles and the thin walls are drawn relative to LV blood and myocardium. Blood signal is modulated
  by a smooth plane wave (inflow), drawn anew for each frame.
* **Thick slices**: each voxel averages the scene at 3 depths across its slab, weighted by a Gaussian slice
  profile of random width; the in-plane point-spread function is a Gaussian blur of 0.35-0.9 pixels.
* **Coil bias**: the sum-of-squares sensitivity of 4-8 surface coils on the torso (each ``1 / (1 + d^2 / rho^2)``),
  raised to a random power, one field for both frames.
* **Noise**: non-central chi magnitude noise of a ``L``-channel array (``L`` = 2-8): ``sqrt((S + s n)^2 + s^2
  chi^2_{2L-1})`` (``chi^2_k = 2 Gamma(k / 2)``), ``s = blood / (SNR sqrt(L))`` with SNR 15-40 (a background
  floor of 4-9 % of blood); then a random gain (150-3000 int16 units per unit of signal) and int16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cvae.data.foreign_anatomy import (AIR, AORTA, ATRIAL_BLOOD, ATRIAL_WALL, EPI_FAT, LIVER, LUNG, LV_BLOOD, LV_MYO,
                                       MEDIASTINUM, MUSCLE, OUTFLOW_BLOOD, PAPILLARY, RV_BLOOD, RV_WALL, SPINE,
                                       SUBCUT_FAT, TISSUES, Body, Frame)

__all__ = ["Contrast", "draw_contrast", "SLAB_OFFSETS", "slab_weights", "render", "bias_field", "acquire"]

#: Depths (fractions of the slice thickness) at which a voxel samples the scene; the middle one is the voxel centre.
SLAB_OFFSETS = np.array([-1 / 3, 0.0, 1 / 3], np.float32)
_BLOOD = np.isin(np.arange(len(TISSUES)), [AORTA, LV_BLOOD, RV_BLOOD, ATRIAL_BLOOD, OUTFLOW_BLOOD])


@dataclass(frozen=True)
class Contrast:
    """Relative signals, blood modulation, slice profile, blur, coils, noise and gain of one subject."""

    signal: np.ndarray                # (n_tissues,) relative signal of each tissue id
    inflow: np.ndarray                # (2, 5): per frame, wave vector (3,) in rad/mm, phase, amplitude
    profile: float                    # Gaussian slice profile sigma, in slice thicknesses
    blur: float                       # in-plane PSF sigma, pixels
    coils: np.ndarray                 # (n, 4): coil centre (u, v, w) in scene mm and reach rho (mm)
    bias_power: float
    channels: int
    snr: float
    gain: float


def draw_contrast(rng: np.random.Generator, body: Body, apex: float) -> Contrast:
    """Draw a subject's contrast and acquisition; ``apex`` (mm below the base) places the coils along the heart."""
    signal = np.zeros(len(TISSUES))
    for tissue, bounds in ((SUBCUT_FAT, (0.55, 0.95)), (MUSCLE, (0.1, 0.25)), (LUNG, (0.01, 0.06)),
                           (LIVER, (0.15, 0.35)), (SPINE, (0.25, 0.5)), (AORTA, (0.6, 1.0)),
                           (MEDIASTINUM, (0.3, 0.6)), (EPI_FAT, (0.5, 0.9)), (LV_MYO, (0.14, 0.32)),
                           (LV_BLOOD, (0.75, 1.0))):
        signal[tissue] = rng.uniform(*bounds)
    for tissue, reference, bounds in ((PAPILLARY, LV_MYO, (0.9, 1.25)), (RV_WALL, LV_MYO, (0.9, 1.2)),
                                      (ATRIAL_WALL, LV_MYO, (0.9, 1.2)), (RV_BLOOD, LV_BLOOD, (0.8, 1.08)),
                                      (ATRIAL_BLOOD, LV_BLOOD, (0.75, 1.05)), (OUTFLOW_BLOOD, RV_BLOOD, (0.9, 1.1))):
        signal[tissue] = signal[reference] * rng.uniform(*bounds)
    signal[AIR] = 0.0
    direction = rng.normal(size=(2, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    inflow = np.column_stack([direction * (2 * np.pi / rng.uniform(60, 150, (2, 1))), rng.uniform(0, 2 * np.pi, 2),
                              rng.uniform(0, 0.12, 2)])
    n_coils = int(rng.integers(4, 9))
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(n_coils) + rng.uniform(-0.2, 0.2, n_coils)) / n_coils
    ellipse = np.stack([np.cos(angles) * body.axes[0], np.sin(angles) * body.axes[1]]) * 1.05
    turn = np.array([[np.cos(body.angle), -np.sin(body.angle)], [np.sin(body.angle), np.cos(body.angle)]])
    where = np.array(body.centre)[:, None] + turn @ ellipse
    coils = np.column_stack([where.T, rng.uniform(-20, apex + 20, n_coils), rng.uniform(90, 220, n_coils)])
    return Contrast(signal=signal, inflow=inflow, profile=rng.uniform(0.3, 0.7), blur=rng.uniform(0.35, 0.9),
                    coils=coils, bias_power=rng.uniform(0.4, 1.0), channels=int(rng.integers(2, 9)),
                    snr=rng.uniform(15, 40), gain=float(np.exp(rng.uniform(np.log(150), np.log(3000)))))


def slab_weights(contrast: Contrast) -> np.ndarray:
    """Weights (3,) of the :data:`SLAB_OFFSETS` samples: the Gaussian slice profile, normalised."""
    weights = np.exp(-0.5 * (SLAB_OFFSETS / contrast.profile) ** 2)
    return weights / weights.sum()


def render(tissue: np.ndarray, grid_mm: tuple[np.ndarray, np.ndarray, np.ndarray], contrast: Contrast,
           phase: float) -> np.ndarray:
    """Noise-free image (X, Y, Z) float32 from tissue ids (X, Y, Z, 3) sampled at :data:`SLAB_OFFSETS`.

    ``grid_mm`` are the voxel centres' grid coordinates (mm) as broadcastable (X, 1, 1), (1, Y, 1), (1, 1, Z)
    arrays; ``phase`` 0 (ED) or 1 (ES) picks the inflow wave, a phase between blends the two (cine frames). The
    in-plane PSF is applied."""
    wave = (1.0 - phase) * contrast.inflow[0] + phase * contrast.inflow[1]  # exactly one of them at 0 and 1
    inflow = 1.0 + wave[4] * np.cos(sum(k * x for k, x in zip(wave[:3], grid_mm)) + wave[3])
    signal = contrast.signal.astype(np.float32)[tissue]                  # (X, Y, Z, 3)
    signal = np.where(_BLOOD[tissue], signal * inflow[..., None].astype(np.float32), signal)
    image = signal @ slab_weights(contrast).astype(np.float32)
    return ndimage.gaussian_filter(image, (contrast.blur, contrast.blur, 0.0))


def bias_field(contrast: Contrast, frame: Frame, shape: tuple[int, int, int]) -> np.ndarray:
    """Coil sensitivity (X, Y, Z) float32 on the grid of ``frame``, 1 at the heart's mid-level centre. The scene's
    (u, v) depend on the pixel and w on the slice only, so each coil's squared distance is a plane plus a line."""
    plane = frame.to_scene(np.stack(np.meshgrid(np.arange(shape[0], dtype=np.float32),
                                                np.arange(shape[1], dtype=np.float32), [np.float32(0)], indexing="ij")))
    slices = np.zeros((3, shape[2]), np.float32)
    slices[2] = np.arange(shape[2])
    depth = frame.depth(slices)
    middle = float(contrast.coils[:, 2].mean())
    total, centre = np.zeros(shape, np.float32), 0.0
    for u, v, w, reach in contrast.coils.tolist():
        across = ((plane[0] - u) ** 2 + (plane[1] - v) ** 2) / reach ** 2
        total += (1.0 / (1.0 + across + (depth - w) ** 2 / reach ** 2)) ** 2
        centre += (1.0 / (1.0 + (u * u + v * v + (middle - w) ** 2) / reach ** 2)) ** 2
    return (np.sqrt(total / centre) ** contrast.bias_power).astype(np.float32)


def acquire(clean: np.ndarray, bias: np.ndarray, contrast: Contrast, rng: np.random.Generator) -> np.ndarray:
    """int16 magnitude image: ``gain * bias * clean`` with non-central chi noise of ``contrast.channels`` channels."""
    sigma = contrast.gain * contrast.signal[LV_BLOOD] / (contrast.snr * np.sqrt(contrast.channels))
    signal = contrast.gain * bias * clean
    real = signal + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    rest = (2 * sigma ** 2) * rng.standard_gamma(contrast.channels - 0.5, clean.shape, dtype=np.float32)
    return np.clip(np.rint(np.sqrt(real * real + rest)), 0, np.iinfo(np.int16).max).astype(np.int16)
