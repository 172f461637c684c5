"""``cvae register``: register two NIfTI images with a trained CVAE and write the results on the fixed image's grid.

    cvae register --fixed ES.nii.gz --moving ED.nii.gz --out DIR [--fixed-seg ES_gt.nii.gz --moving-seg ED_gt.nii.gz]
                  [--checkpoint synthetic-acdc] [--device auto] [--refine-steps N | --optimize]
    cvae register --pairs pairs.csv --out DIR ...       # many pairs, one model load (cvae.io.pairs)

Both images are preprocessed as the training data (:func:`cvae.data.preprocess.preprocess_image_pair`: joint
intensity normalisation, resampling to the checkpoint's grid, e.g. 128 x 128 x 32 voxels of 1.5 x 1.5 x 3.15 mm,
centred on the heart; a moving image on another grid is first resampled onto the fixed one) and registered in one
forward pass. DIR then holds, all on the **fixed image's original grid and affine**:

=============================  ==================================================================================
``warped.nii.gz``              the moving image (original intensities and resolution) warped onto the fixed image
``warped_seg.nii.gz``          the moving segmentation warped (nearest neighbour), when ``--moving-seg`` is given
``displacement.nii.gz``        the transform, an ITK displacement field (see :mod:`cvae.io.nifti`: 5-D vector
                               NIfTI, intent 1007, LPS millimetres): ``warped(x) = moving(x + d(x))``
``inverse_displacement.nii.gz``  the inverse transform ``exp(-v)``, same convention
``velocity.nii.gz``            the stationary velocity field ``v`` (world mm, same convention); ``exp(v)`` = transform
``jacobian.nii.gz``            determinant of the transform's Jacobian (<= 0 marks folding)
``metrics.json``               Dice and HD95 (mm) per structure with the unregistered values when both
                               segmentations are given, folding fraction, mean displacement (mm), times (s)
=============================  ==================================================================================

How the crop-grid result maps to the original grid: the network works on the crop grid of affine ``A_c`` (voxels ->
world mm). A fixed voxel ``p`` is the world point ``x = A_f p``, the crop voxel ``q = A_c^-1 x``; the transform sends
it to the world point ``A_c (q + u(q))`` (``u`` interpolated trilinearly at ``q``, 0 outside the crop), so the world
displacement is ``d(x) = R_c u(q)`` with ``R_c`` the linear part of ``A_c``; ``warped(p)`` samples the original
moving image at ``A_m^-1 (x + d(x))``. The Jacobian determinant does not depend on the coordinates, so the crop
grid's is resampled as is (1 outside the crop).

Bad input (missing or unreadable file, 4-D cine, NaNs, constant image, a segmentation on another grid than its
image, unknown checkpoint) gives a one-line error and exit code 2; outputs are written into a temporary folder next
to DIR and moved into DIR only when all are complete.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cvae.checkpoint import load_checkpoint
from cvae.data.volumes import load_label, load_nifti
from cvae.data.preprocess import PreprocessedPair, preprocess_image_pair, resample_to_grid
from cvae.evaluation.metrics import mean_displacement_mm, mean_scores, negative_jacobian_fraction, structure_scores
from cvae.fields import image_tensor
from cvae.io.atomic import atomic_folder, check_writable, earlier_outputs
from cvae.io.nifti import save_vector_field, save_volume
from cvae.model import RegistrationResult
from cvae.optimize import OptimizeSettings, register_optimized

__all__ = ["register_files", "crop_coordinates", "field_to_world", "warp_to_grid", "OUTPUT_FILES"]

#: Every file ``register_files`` may write (``warped_seg.nii.gz`` only with a moving segmentation).
OUTPUT_FILES: tuple[str, ...] = ("warped.nii.gz", "warped_seg.nii.gz", "displacement.nii.gz",
                                 "inverse_displacement.nii.gz", "velocity.nii.gz", "jacobian.nii.gz", "metrics.json")


@dataclass
class _Inputs:
    """The loaded images (float32 ``(X, Y, Z)``), their affines and optional uint8 segmentations."""

    fixed: np.ndarray
    fixed_affine: np.ndarray
    moving: np.ndarray
    moving_affine: np.ndarray
    fixed_seg: np.ndarray | None
    moving_seg: np.ndarray | None


def _load_seg(path: str | os.PathLike, image: np.ndarray, affine: np.ndarray, role: str,
              limit: int | None) -> np.ndarray:
    label, label_affine = load_label(path, limit)
    if label.shape != image.shape or not np.allclose(label_affine, affine, atol=1e-3):
        raise ValueError(f"{path}: the {role} segmentation's grid (shape {label.shape}) differs from the {role} "
                         f"image's (shape {image.shape}, affine): give the segmentation of that image on its grid")
    return label


def _load_inputs(fixed: str | os.PathLike, moving: str | os.PathLike, fixed_seg: str | os.PathLike | None,
                 moving_seg: str | os.PathLike | None, limit: int | None = None) -> _Inputs:
    """Load and check everything before any computation (volumes of at most ``limit`` voxels, default
    :func:`cvae.data.volumes.max_voxels`); one-line ``ValueError`` on bad input."""
    images = []
    for path in (fixed, moving):
        data, affine, _ = load_nifti(path, limit)
        if data.min() == data.max():
            raise ValueError(f"{path}: image is constant (all voxels = {data.flat[0]:g}): nothing to register")
        images.append((data, affine))
    (f, fa), (m, ma) = images
    return _Inputs(f, fa, m, ma,
                   None if fixed_seg is None else _load_seg(fixed_seg, f, fa, "fixed", limit),
                   None if moving_seg is None else _load_seg(moving_seg, m, ma, "moving", limit))


def _same_grid(shape_a: tuple, affine_a: np.ndarray, shape_b: tuple, affine_b: np.ndarray) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-3)


def _preprocess(inputs: _Inputs, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> PreprocessedPair:
    """The network's pair: the moving image is brought onto the fixed grid first if it is on another one."""
    moving, moving_seg = inputs.moving, inputs.moving_seg
    if not _same_grid(moving.shape, inputs.moving_affine, inputs.fixed.shape, inputs.fixed_affine):
        moving = resample_to_grid(moving, inputs.moving_affine, inputs.fixed_affine, inputs.fixed.shape, order=1)
        if moving.min() == moving.max():
            raise ValueError("the moving image does not overlap the fixed image's field of view (check the affines)")
        if moving_seg is not None:
            moving_seg = resample_to_grid(moving_seg, inputs.moving_affine, inputs.fixed_affine, inputs.fixed.shape,
                                          order=0)
    return preprocess_image_pair(inputs.fixed, moving, inputs.fixed_affine, inputs.fixed_seg, moving_seg,
                                 size=size, spacing=spacing)


def _world_points(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (mm) ``(3, N)`` of every voxel of a grid, in C order of ``shape``."""
    index = np.indices(tuple(int(n) for n in shape), dtype=np.float64).reshape(3, -1)
    return affine[:3, :3] @ index + affine[:3, 3:4]


def crop_coordinates(crop_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...]
                     ) -> np.ndarray:
    """Crop-grid voxel coordinates ``(3, N)`` of every voxel of the target grid (C order): ``A_c^-1 A_t p``."""
    to_crop = np.linalg.inv(np.asarray(crop_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    return _world_points(to_crop, target_shape)


def field_to_world(field: np.ndarray | torch.Tensor, crop_affine: np.ndarray, target_affine: np.ndarray,
                   target_shape: tuple[int, ...]) -> np.ndarray:
    """Crop-grid fields ``(..., 3, Xc, Yc, Zc)`` in crop voxels -> world displacements ``(..., X, Y, Z, 3)`` in mm
    (RAS+), any number of fields at once.

    ``d(x) = R_c u(A_c^-1 x)`` at every target voxel ``x``, ``u`` interpolated trilinearly (``grid_sample``,
    float32, as the NIfTI files store it); outside the crop ``u`` falls linearly to 0 over one voxel and is 0 beyond
    (identity).
    """
    u = torch.as_tensor(np.asarray(field) if not isinstance(field, torch.Tensor) else field).float()
    if u.ndim < 4 or u.shape[-4] != 3:
        raise ValueError(f"field must be (..., 3, X, Y, Z) in voxels, got shape {tuple(u.shape)}")
    lead, size = u.shape[:-4], u.shape[-3:]
    q = crop_coordinates(crop_affine, target_affine, target_shape)
    scale = (np.asarray(size, dtype=np.float64) - 1) / 2  # voxel -> grid_sample's [-1, 1] (align_corners=True)
    grid = torch.from_numpy((q / scale[:, None] - 1).T[:, ::-1].astype(np.float32))  # (N, 3), last axis first
    sampled = F.grid_sample(u.reshape(1, -1, *size), grid.view(1, 1, 1, -1, 3), mode="bilinear",
                            padding_mode="zeros", align_corners=True).view(-1, 3, grid.shape[0])  # (K, 3, N)
    rotation = torch.from_numpy(np.asarray(crop_affine, dtype=np.float32)[:3, :3])
    d = torch.matmul(rotation, sampled).transpose(1, 2)  # (K, N, 3) mm
    return d.reshape(*lead, *(int(n) for n in target_shape), 3).numpy()


def warp_to_grid(volume: np.ndarray, volume_affine: np.ndarray, target_affine: np.ndarray,
                 target_shape: tuple[int, ...], displacement: np.ndarray | None = None, order: int = 1
                 ) -> np.ndarray:
    """Sample ``volume`` (own grid ``volume_affine``) at ``x + d(x)`` for every voxel ``x`` of the target grid.

    ``displacement`` is ``(X, Y, Z, 3)`` world mm on the target grid (``None``: plain resampling). ``order`` 1 is
    linear (float32), 0 nearest (keeps the dtype, for labels). As ITK's resampler: points within half a voxel of the
    volume's edge take the edge value, points further out are 0.
    """
    points = _source_points(volume_affine, target_affine, target_shape, displacement)
    return _sample_at(np.asarray(volume), points, order).reshape(tuple(int(n) for n in target_shape))


def _source_points(volume_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...],
                   displacement: np.ndarray | None = None) -> np.ndarray:
    """Voxel coordinates ``(3, N)``, on the grid of ``volume_affine``, of ``x + d(x)`` for every voxel ``x`` of the
    target grid (C order); ``displacement`` as for :func:`warp_to_grid`."""
    world = _world_points(np.asarray(target_affine, dtype=np.float64), target_shape)
    if displacement is not None:
        world = world + np.asarray(displacement, dtype=np.float64).reshape(-1, 3).T
    index = np.linalg.inv(np.asarray(volume_affine, dtype=np.float64)) @ np.vstack([world, np.ones(world.shape[1])])
    return index[:3]


def _sample_at(volume: np.ndarray, index: np.ndarray, order: int) -> np.ndarray:
    """``volume`` ``(X, Y, Z)`` at the voxel coordinates ``index`` ``(3, N)``: ``(N,)``, 0 more than half a voxel
    outside (``order`` as for :func:`warp_to_grid`)."""
    upper = np.asarray(volume.shape, dtype=np.float64)[:, None] - 0.5
    outside = ((index < -0.5) | (index > upper)).any(axis=0)
    if order == 1:
        out = ndimage.map_coordinates(volume.astype(np.float32, copy=False), index, order=1, mode="nearest")
    elif order == 0:
        nearest = np.floor(index + 0.5).astype(np.int64)
        for axis, n in enumerate(volume.shape):
            np.clip(nearest[axis], 0, n - 1, out=nearest[axis])
        out = volume[tuple(nearest)]
    else:
        raise ValueError(f"order must be 0 (nearest, labels) or 1 (linear, images), got {order}")
    out[outside] = 0
    return out


def _finite_or_none(value: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become ``None`` (``null``)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scores(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> dict[str, dict[str, float]]:
    return structure_scores(pred, ref, [float(s) for s in spacing])


def _unregistered_scores(inputs: _Inputs) -> dict[str, dict[str, float]]:
    """Dice/HD95 per structure of the moving segmentation resampled onto the fixed grid (nearest neighbour)."""
    unregistered = inputs.moving_seg  # on the fixed grid itself, nearest-neighbour resampling changes nothing
    if inputs.moving_seg.shape != inputs.fixed.shape or not np.array_equal(inputs.moving_affine, inputs.fixed_affine):
        unregistered = warp_to_grid(inputs.moving_seg, inputs.moving_affine, inputs.fixed_affine, inputs.fixed.shape,
                                    order=0)
    return _scores(unregistered, inputs.fixed_seg, np.sqrt((inputs.fixed_affine[:3, :3] ** 2).sum(axis=0)))


def _segmentation_metrics(inputs: _Inputs, warped_seg: np.ndarray, before: dict[str, dict[str, float]]
                          ) -> dict[str, Any]:
    """Dice/HD95 per structure of the warped and (``before``, :func:`_unregistered_scores`) of the unregistered
    moving segmentation, on the fixed grid."""
    spacing = np.sqrt((inputs.fixed_affine[:3, :3] ** 2).sum(axis=0))
    after = _scores(warped_seg, inputs.fixed_seg, spacing)
    structures = {name: {"dice": after[name]["dice"], "hd95_mm": after[name]["hd95"],
                         "dice_unregistered": before[name]["dice"], "hd95_mm_unregistered": before[name]["hd95"]}
                  for name in after}
    mean_after, mean_before = mean_scores(after), mean_scores(before)
    summary = {"dice_mean": mean_after["dice"], "hd95_mm_mean": mean_after["hd95"],
               "dice_unregistered_mean": mean_before["dice"], "hd95_mm_unregistered_mean": mean_before["hd95"]}
    return {"structures": structures, **summary, "evaluated_on": "fixed image grid, spacing "
            + " x ".join(f"{s:.3g}" for s in spacing) + " mm"}


def _resample_and_save(tmp: Path, inputs: _Inputs, pair: PreprocessedPair, result: RegistrationResult,
                       metrics: dict[str, Any], extra: dict[str, Any]) -> tuple[list[str], float]:
    """Bring the crop-grid ``result`` onto the fixed grid and write the NIfTI outputs into ``tmp``; adds
    ``max_displacement_mm``, then ``extra``, then the segmentation scores to ``metrics``. Returns the names of the
    files written and the ``time.perf_counter()`` at which the last volume was computed.

    Each file is compressed in the background as soon as its volume is ready, while the next one is computed, and
    the unregistered segmentation is scored in the background from the start (compression, scipy's distance
    transforms, most NumPy work and torch release the GIL). The warped image and segmentation share their sample
    points.
    """
    shape, affine = inputs.fixed.shape, inputs.fixed_affine
    scored = inputs.fixed_seg is not None and inputs.moving_seg is not None
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        unregistered = pool.submit(_unregistered_scores, inputs) if scored else None
        writes: dict[str, Future] = {}

        def save(name: str, writer: Callable[..., Path], array: np.ndarray, *dtype: type) -> None:
            writes[name] = pool.submit(writer, tmp / name, array, affine, *dtype)

        fields = field_to_world(torch.cat([result.displacement, result.inverse_displacement, result.velocity]),
                                pair.affine, affine, shape)
        for name, field in zip(("displacement.nii.gz", "inverse_displacement.nii.gz", "velocity.nii.gz"), fields):
            save(name, save_vector_field, field)
        metrics["max_displacement_mm"] = float(np.linalg.norm(fields[0], axis=-1).max())
        metrics.update(extra)
        points = _source_points(inputs.moving_affine, affine, shape, fields[0])
        save("warped.nii.gz", save_volume, _sample_at(inputs.moving, points, 1).reshape(shape), np.float32)
        jacobian = resample_to_grid(result.jacobian[0].numpy(), pair.affine, affine, shape, order=1, cval=1.0)
        save("jacobian.nii.gz", save_volume, jacobian, np.float32)
        if inputs.moving_seg is not None:
            warped_seg = _sample_at(inputs.moving_seg, points, 0).reshape(shape)
            save("warped_seg.nii.gz", save_volume, warped_seg, np.uint8)
            if unregistered is not None:
                metrics["segmentation"] = _segmentation_metrics(inputs, warped_seg, unregistered.result())
        resampled = time.perf_counter()
        for job in writes.values():
            job.result()
    return list(writes), resampled


def register_files(fixed: str | os.PathLike, moving: str | os.PathLike, out: str | os.PathLike,
                   checkpoint: str | os.PathLike = "synthetic-acdc", fixed_seg: str | os.PathLike | None = None,
                   moving_seg: str | os.PathLike | None = None, device: str | torch.device = "auto",
                   refine_steps: int = 0, max_voxels: int | None = None, overwrite: bool = False,
                   optimize_steps: int = 0, loaded: tuple[torch.nn.Module, dict] | None = None) -> dict[str, Any]:
    """Register the NIfTI ``moving`` to ``fixed`` and write the outputs of the module docstring into ``out``.

    ``loaded``: the checkpoint already loaded (:func:`cvae.checkpoint.load_checkpoint`'s model and config), so that
    many pairs share one load (:func:`cvae.io.pairs.register_pairs`); ``checkpoint`` then only names it.

    ``refine_steps > 0`` refines the pair's code by that many gradient steps before decoding
    (:func:`cvae.latent.refine.register_refined`); ``optimize_steps > 0`` optimises the velocity itself on the pair,
    starting from the network's (:func:`cvae.optimize.register_optimized`, at most that many steps on the coarse
    grid); ``metrics.json`` then records the pair's LCC before and after (one or the other, not both).
    Volumes above ``max_voxels`` (default :func:`cvae.data.volumes.max_voxels`) are refused from their headers. ``out``
    must be new, empty or written by an earlier ``cvae register`` (whose outputs are replaced; ``metrics.json`` lists
    the ``files`` of a run); with ``overwrite`` a folder holding other files is accepted and only the files named like
    this run's outputs are replaced.

    Returns the content of ``metrics.json`` (NaN as ``None``) plus ``"outputs"``: ``{file name: path}``.
    Raises ``ValueError`` (one line) for bad input, checked before any computation where it can be; nothing is
    written to ``out`` then.
    """
    start = time.perf_counter()
    if max_voxels is not None and max_voxels < 1:
        raise ValueError(f"--max-voxels must be >= 1, got {max_voxels}")
    if refine_steps < 0 or optimize_steps < 0:
        raise ValueError(f"--refine-steps and --optimize-steps must be >= 0, got {refine_steps} and {optimize_steps}")
    if refine_steps and optimize_steps:
        raise ValueError("give --refine-steps (the code) or --optimize-steps (the velocity), not both")
    out = check_writable(out)
    earlier = earlier_outputs(out, OUTPUT_FILES, "metrics.json", ("model_grid", "checkpoint"), "cvae register",
                              overwrite)
    inputs = _load_inputs(fixed, moving, fixed_seg, moving_seg, max_voxels)
    model, config = loaded or load_checkpoint(checkpoint, device)
    size = tuple(int(n) for n in model.config.image_size)
    spacing = tuple(float(s) for s in config["spacing"])
    pair = _preprocess(inputs, size, spacing)
    preprocessed = time.perf_counter()

    fixed_t, moving_t = image_tensor(pair.fixed, model.device), image_tensor(pair.moving, model.device)
    refinement = None
    if refine_steps:
        from cvae.latent.refine import register_refined  # its latent tools load pandas: only when asked
        result, refinement = register_refined(model, fixed_t, moving_t, refine_steps)
        result = result.to("cpu")
    elif optimize_steps:
        result, refinement = register_optimized(model, fixed_t, moving_t, OptimizeSettings(coarse_steps=optimize_steps))
        result = result.to("cpu")
    else:
        with torch.no_grad():
            result = model.register(fixed_t, moving_t, inverse=True).to("cpu")
    registered = time.perf_counter()

    metrics: dict[str, Any] = {
        "fixed": str(fixed), "moving": str(moving), "checkpoint": str(checkpoint), "device": str(model.device),
        "model_grid": {"size": list(size), "spacing_mm": list(spacing)},
        "negative_jacobian_fraction": negative_jacobian_fraction(result.jacobian),
        "mean_displacement_mm": mean_displacement_mm(result.displacement, spacing),
    }
    extra: dict[str, Any] = {}
    if refinement is not None:
        extra["refinement" if refine_steps else "optimization"] = {
            "steps": int(refine_steps or sum(refinement.steps)),
            "lcc_before": float(refinement.lcc_before[0]), "lcc_after": float(refinement.lcc_after[0])}

    def write(tmp: Path) -> None:
        written, resampled = _resample_and_save(tmp, inputs, pair, result, metrics, extra)
        metrics["files"] = sorted([*written, "metrics.json"])
        metrics["seconds"] = {"preprocessing": preprocessed - start, "registration": registered - preprocessed,
                              "resampling": resampled - registered,
                              "writing": time.perf_counter() - resampled, "total": time.perf_counter() - start}
        (tmp / "metrics.json").write_text(json.dumps(_finite_or_none(metrics), indent=2) + "\n")

    atomic_folder(out, write, merge_into=earlier)
    metrics = _finite_or_none(metrics)
    metrics["outputs"] = {name: str(out / name) for name in metrics["files"]}
    return metrics
