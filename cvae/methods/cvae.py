"""The CVAE of a checkpoint as an evaluation method (see :mod:`cvae.methods` for the interface)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cvae.checkpoint import load_checkpoint
from cvae.device import resolve_device
from cvae.optimize import OptimizeSettings, register_optimized
from cvae.methods import MethodResult

__all__ = ["CVAEMethod"]


class CVAEMethod:
    """The CVAE of a checkpoint: one forward pass with ``z = mu`` (:meth:`cvae.model.CVAERegistration.register`),
    named ``cvae``; with ``optimize`` settings, that pass followed by test-time optimisation of the velocity
    (:func:`cvae.optimize.register_optimized`), named ``cvae-opt``.

    ``image_size`` and ``spacing`` come from the checkpoint's ``config.json``: the evaluation grid must match them.
    The first call runs one untimed forward pass so that one-off start-up costs (memory allocation, kernel
    selection) do not count in the time per registration.
    """

    def __init__(self, checkpoint: str | Path = "synthetic-acdc", device: str | torch.device = "auto",
                 optimize: OptimizeSettings | None = None) -> None:
        self.model, config = load_checkpoint(checkpoint, resolve_device(device))
        self.name = "cvae" if optimize is None else "cvae-opt"
        self.optimize = optimize
        self.image_size = tuple(int(n) for n in self.model.config.image_size)
        self.spacing = tuple(float(s) for s in config["spacing"])
        self._warm = False

    def register(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]) -> MethodResult:
        if not np.allclose(spacing, self.spacing, atol=1e-3):
            raise ValueError(f"{self.name}: grid spacing {tuple(spacing)} mm differs from the checkpoint's "
                             f"{self.spacing}")
        fixed, moving = fixed.to(self.model.device), moving.to(self.model.device)
        if not self._warm:
            self._register(fixed, moving)
            self._warm = True
        start = time.perf_counter()
        displacement = self._register(fixed, moving).cpu()
        return MethodResult(displacement, time.perf_counter() - start)

    def _register(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        if self.optimize is not None:
            return register_optimized(self.model, fixed, moving, self.optimize, inverse=False)[0].displacement
        with torch.no_grad():
            return self.model.register(fixed, moving, inverse=False).displacement
