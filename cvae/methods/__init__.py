"""Registration methods compared by ``cvae evaluate``: one small interface and a registry.

The interface (implement it to plug a method in)
================================================
A method is any object with::

    name: str                                   # short id used in tables and plots, e.g. "voxelmorph"
    image_size: tuple[int, int, int] | None     # grid (voxels) the method needs; None = any grid
    spacing: tuple[float, float, float] | None  # voxel size (mm) it was trained for; None = any
    def register(self, fixed: torch.Tensor, moving: torch.Tensor,
                 spacing: Sequence[float]) -> MethodResult: ...

* ``fixed`` and ``moving`` are one **preprocessed** pair (``cvae.data.preprocess``): float32 tensors
  ``(1, 1, X, Y, Z)`` on the CPU, intensities in [0, 1], on the grid of the evaluation (128 x 128 x 32 voxels of
  1.5 x 1.5 x 3.15 mm by default); ``spacing`` is that grid's voxel size in mm along (X, Y, Z).
* It returns :class:`MethodResult`: ``displacement`` ``(1, 3, X, Y, Z)`` (torch tensor or numpy array, any device)
  **in voxels**, channel i along axis i, such that ``moving o (id + u) ~ fixed`` (``cvae.fields.warp(moving, u)``
  is the warped moving image; the project convention of ``docs/DESIGN.md``); and ``seconds``, the wall-clock time of the
  registration itself (from receiving the tensors to returning the field, including device transfers and, on CUDA,
  synchronisation; excluding model loading and preprocessing).
* A method that needs a fixed grid (a network) sets ``image_size``/``spacing``; the evaluation refuses to mix
  methods that need different grids. One that cannot run here (missing weights or package) raises
  :class:`MethodUnavailable` from its constructor with a one-line reason; ``cvae evaluate`` then skips it with
  that message.

Everything else (warping images and labels, Jacobians, Dice, HD95, timing tables) is done by
:mod:`cvae.evaluation.evaluate` in the same way for every method.

The registry
============
:func:`get_method` builds a method by name: ``"cvae"`` (the CVAE of a checkpoint, :mod:`cvae.methods.cvae`),
``"cvae-opt"`` (the same followed by test-time optimisation of the velocity, :mod:`cvae.optimize`),
``"demons"`` (SimpleITK diffeomorphic demons, :mod:`cvae.methods.demons`), ``"identity"`` (no registration: the
unregistered baseline, :mod:`cvae.methods.identity`) and ``"voxelmorph"`` (:mod:`cvae.methods.voxelmorph`,
which must provide ``VoxelMorphMethod(checkpoint: str | Path, device: str | torch.device)`` implementing the
interface above; its default checkpoint folder is ``checkpoints/voxelmorph-synthetic-acdc``). Method modules are
imported lazily, so a missing optional dependency only affects its own method.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # this package's registry is read by `cvae evaluate --help`, which must not load torch
    import numpy as np
    import torch

__all__ = ["Method", "MethodResult", "MethodUnavailable", "METHODS", "DEFAULT_CHECKPOINTS", "get_method",
           "displacement_array"]

#: Names accepted by :func:`get_method`, in the order tables list them.
METHODS: tuple[str, ...] = ("cvae", "cvae-opt", "demons", "voxelmorph", "identity")

#: Checkpoint used when ``get_method`` gets ``checkpoint=None`` (a name under ``checkpoints/`` or a folder).
DEFAULT_CHECKPOINTS: dict[str, str] = {"cvae": "synthetic-acdc", "cvae-opt": "synthetic-acdc",
                                        "voxelmorph": "voxelmorph-synthetic-acdc"}


class MethodUnavailable(ValueError):
    """A method cannot run here (weights or a package missing); the message is one line saying what to do."""


@dataclass
class MethodResult:
    """What :meth:`Method.register` returns: ``displacement`` ``(1, 3, X, Y, Z)`` in voxels, ``seconds`` wall time."""

    displacement: torch.Tensor | np.ndarray
    seconds: float


@runtime_checkable
class Method(Protocol):
    """A registration method of the evaluation (see the module docstring for the contract)."""

    name: str
    image_size: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None

    def register(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]) -> MethodResult:
        ...


def displacement_array(result: MethodResult, shape: Sequence[int]) -> np.ndarray:
    """``result.displacement`` as float32 numpy ``(1, 3, X, Y, Z)``, checked against the grid ``shape`` (X, Y, Z)."""
    import numpy as np
    import torch

    u = result.displacement
    u = u.detach().float().cpu().numpy() if isinstance(u, torch.Tensor) else np.asarray(u, dtype=np.float32)
    expected = (1, 3, *(int(n) for n in shape))
    if u.shape != expected:
        raise ValueError(f"method returned a displacement of shape {u.shape}, expected {expected}")
    if not np.isfinite(u).all():
        raise ValueError("method returned a displacement with NaN or infinite values")
    return u


def get_method(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "auto") -> Method:
    """Build the method ``name`` (one of :data:`METHODS`).

    ``checkpoint`` (a name under ``checkpoints/`` or a folder) is used by the learnt methods, default
    :data:`DEFAULT_CHECKPOINTS`; ``device`` ("auto", "cpu", "cuda") too. Raises :class:`MethodUnavailable` when the
    method cannot run here (e.g. no VoxelMorph checkpoint yet) and ``ValueError`` for an unknown name.
    """
    from cvae.checkpoint import CheckpointError, resolve_checkpoint

    key = name.strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    if key == "identity":
        from cvae.methods.identity import IdentityMethod
        return IdentityMethod()
    if key == "demons":
        from cvae.methods.demons import DemonsMethod
        return DemonsMethod()
    checkpoint = DEFAULT_CHECKPOINTS[key] if checkpoint is None else checkpoint
    try:
        folder = resolve_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise MethodUnavailable(f"{key}: {exc}") from None
    if key in ("cvae", "cvae-opt"):
        from cvae.methods.cvae import CVAEMethod
        from cvae.optimize import OptimizeSettings
        return CVAEMethod(folder, device, OptimizeSettings() if key == "cvae-opt" else None)
    try:
        module = importlib.import_module("cvae.methods.voxelmorph")
    except ImportError as exc:
        raise MethodUnavailable(f"voxelmorph: cannot import cvae.methods.voxelmorph ({exc})") from None
    return module.VoxelMorphMethod(folder, device)
