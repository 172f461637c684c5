"""The identity "method": no registration at all, so its scores are those of the unregistered pair."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from cvae.methods import MethodResult

__all__ = ["IdentityMethod"]


class IdentityMethod:
    """Returns a zero displacement ``(1, 3, X, Y, Z)``: ``moving o id = moving``. Any grid."""

    name = "identity"
    image_size = None
    spacing = None

    def register(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]) -> MethodResult:
        start = time.perf_counter()
        displacement = torch.zeros((1, 3, *fixed.shape[2:]), dtype=torch.float32)
        return MethodResult(displacement, time.perf_counter() - start)
