"""The CVAE of a checkpoint as an evaluation method (see :mod:`cvae.methods` for the interface)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cvae.checkpoint import load_checkpoint
from cvae.device import resolve_device
from cvae.methods import MethodResult

__all__ = ["CVAEMethod"]


class CVAEMethod:
    """One forward pass of the network with ``z = mu`` (:meth:`cvae.model.CVAERegistration.register`).

    ``image_size`` and ``spacing`` come from the checkpoint's ``config.json``: the evaluation grid must match them.
    The first call runs one untimed forward pass so that one-off start-up costs (memory allocation, kernel
    selection) do not count in the time per registration.
    """

    name = "cvae"

    def __init__(self, checkpoint: str | Path = "synthetic-acdc", device: str | torch.device = "auto") -> None:
        self.model, config = load_checkpoint(checkpoint, resolve_device(device))
        self.image_size = tuple(int(n) for n in self.model.config.image_size)
        self.spacing = tuple(float(s) for s in config["spacing"])
        self._warm = False

    @torch.no_grad()
    def register(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]) -> MethodResult:
        if not np.allclose(spacing, self.spacing, atol=1e-3):
            raise ValueError(f"cvae: grid spacing {tuple(spacing)} mm differs from the checkpoint's {self.spacing}")
        device = self.model.device
        if not self._warm:
            self.model.register(fixed.to(device), moving.to(device), inverse=False)
            self._warm = True
        start = time.perf_counter()
        result = self.model.register(fixed.to(device), moving.to(device), inverse=False)
        displacement = result.displacement.cpu()
        return MethodResult(displacement, time.perf_counter() - start)
