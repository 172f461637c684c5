"""VoxelMorph baseline (Balakrishnan et al., CVPR 2018 / TMI 2019) on the real ``voxelmorph`` package.

The network is ``voxelmorph.nn.models.VxmPairwise`` (a ``neurite`` U-Net on the concatenated (moving, fixed) pair and a
3-channel flow layer); the losses are ``neurite``'s: local normalised cross-correlation ``NCC`` (box window, 9 voxels)
and ``SpatialGradient`` (L2 of forward differences), ``loss = -NCC(M o phi, F) + lam * Grad(flow)``. The NCC is
evaluated in float64: in float32 its window sums cancel catastrophically on flat bright regions and neurite's own range
assertion stops training.

Variant. The CVAE paper (Krebs et al., DLMIA 2018) compared with VoxelMorph as published at CVPR 2018: NCC + gradient
regularisation with ``lam = 1.5``, where the network predicts the displacement directly (no integration); that
variant folds (the paper reports 2.2 % negative Jacobians). ``integration_steps = 0`` (the default here) is that
variant; ``integration_steps > 0`` gives VoxelMorph's diffeomorphic variant (the flow is a stationary velocity,
integrated by scaling and squaring; the gradient penalty then applies to the velocity, as in VoxelMorph's own
training script).

Convention. ``VxmPairwise(source, target)`` warps ``source`` onto ``target``, so it gets ``(moving, fixed)``. Its
displacement is ``(B, 3, X, Y, Z)`` in voxels with channel ``i`` along tensor axis ``2 + i`` (its mesh grid is built
with ``"ij"`` indexing and reversed only inside its spatial transformer), i.e. already the project convention
``M o (id + u) ~ F``; the one difference is that VoxelMorph samples outside the volume as 0 where
:func:`cvae.fields.warp` repeats the border. ``tests/test_voxelmorph.py`` checks that both warps agree inside.

Checkpoints are a folder with ``model.safetensors`` + ``config.json`` (``format`` = :data:`FORMAT`, ``model`` =
:class:`VoxelMorphConfig`, ``spacing``, ``training``, ``metrics``), written atomically like the CVAE's.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import neurite as ne
import numpy as np
import torch
import voxelmorph as vxm
from torch import nn

from cvae.checkpoint import CheckpointError, build_checkpoint, read_config, save_checkpoint
from cvae.config import option
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING
from cvae.device import resolve_device
from cvae.fields import jacobian_determinant
from cvae.methods import MethodResult, MethodUnavailable
from cvae.model import check_pair

__all__ = ["FORMAT", "DEFAULT_CHECKPOINT", "VoxelMorphConfig", "VoxelMorph", "VoxelMorphResult", "VoxelMorphMethod",
           "save_voxelmorph", "load_voxelmorph_checkpoint", "load_voxelmorph", "read_voxelmorph_config"]

FORMAT = "cvae-reg voxelmorph checkpoint"
#: The shipped checkpoint (``checkpoints/voxelmorph-synthetic-acdc``).
DEFAULT_CHECKPOINT = "voxelmorph-synthetic-acdc"


@dataclass(frozen=True)
class VoxelMorphConfig:
    """Architecture and loss of the baseline; saved under ``model`` in ``config.json``.

    ``image_size`` (voxels) is the preprocessed grid the model was trained on; every side must be divisible by
    ``2 ** len(nb_features)`` (one max-pooling per U-Net level). ``nb_features`` are the U-Net's channels per level
    (``VxmPairwise``'s default). ``integration_steps`` 0 = CVPR 2018 VoxelMorph (displacement predicted directly),
    > 0 = diffeomorphic VoxelMorph (scaling and squaring). ``lam`` weighs the gradient penalty; ``ncc_window`` is the
    side of the NCC box window in voxels.
    """

    image_size: tuple[int, int, int] = option(DEFAULT_SIZE, "grid of the network's input, voxels (X Y Z)")
    nb_features: tuple[int, ...] = option((16, 16, 16, 16, 16), "U-Net channels per level")
    integration_steps: int = option(0, "0 = CVPR 2018 VoxelMorph (displacement); > 0 = diffeomorphic variant, "
                                       "scaling-and-squaring steps")
    lam: float = option(1.5, "weight of the gradient penalty of the flow")
    ncc_window: int = option(9, "side of the NCC box window, voxels (odd)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(n) for n in self.image_size))
        object.__setattr__(self, "nb_features", tuple(int(n) for n in self.nb_features))
        if not self.nb_features or min(self.nb_features) < 1:
            raise ValueError(f"nb_features must be a non-empty list of positive channel counts, got {self.nb_features}")
        factor = 2 ** len(self.nb_features)
        if len(self.image_size) != 3 or any(n < factor or n % factor for n in self.image_size):
            raise ValueError(f"image_size must be 3 sizes divisible by 2**{len(self.nb_features)} = {factor} "
                             f"(one pooling per U-Net level), got {self.image_size}")
        if self.integration_steps < 0:
            raise ValueError(f"integration_steps must be >= 0 (0 = no integration), got {self.integration_steps}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.ncc_window < 1 or self.ncc_window % 2 == 0:
            raise ValueError(f"ncc_window must be an odd number of voxels >= 1, got {self.ncc_window}")

    @property
    def diffeomorphic(self) -> bool:
        return self.integration_steps > 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "VoxelMorphConfig":
        if not isinstance(values, dict):
            raise ValueError(f"model section must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclass_fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}: written by another version of cvae-reg")
        return cls(**values)


@dataclass
class VoxelMorphResult:
    """One registration on the model's grid: ``warped`` ``(B, 1, X, Y, Z)``; ``displacement`` and
    ``inverse_displacement`` (diffeomorphic variant only, else ``None``) ``(B, 3, X, Y, Z)`` in voxels;
    ``jacobian`` ``(B, X, Y, Z)`` (determinant of ``id + displacement``)."""

    warped: torch.Tensor
    displacement: torch.Tensor
    inverse_displacement: torch.Tensor | None
    jacobian: torch.Tensor


class VoxelMorph(nn.Module):
    """``VxmPairwise`` with its NCC + gradient loss, in the project's conventions (see the module docstring)."""

    def __init__(self, config: VoxelMorphConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or VoxelMorphConfig()
        if overrides:
            cfg = VoxelMorphConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        self.net = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1,
                                             nb_features=list(cfg.nb_features),
                                             integration_steps=cfg.integration_steps)
        self.ncc = ne.nn.modules.NCC(window_size=cfg.ncc_window)
        self.grad = ne.nn.modules.SpatialGradient(penalty="l2")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss terms (scalars): ``loss = -ncc + lam * grad``; ``ncc`` in [0, 1] (mean squared local
        correlation of ``M o phi`` and ``F``), ``grad`` the mean squared forward difference of the network's flow
        (displacement, or velocity for the diffeomorphic variant) in voxels per voxel."""
        check_pair(fixed, moving, self.config.image_size)
        flow, warped = self.net(moving, fixed, return_warped_source=True, return_field_type="velocity")
        # float64: neurite's NCC subtracts window sums (729 voxels) that cancel catastrophically in float32, which
        # trips its own range assertion on real images (flat bright regions); in float64 the error is ~1e-12.
        ncc = self.ncc(warped.double(), fixed.double()).mean().float()
        grad = self.grad(flow)
        return {"loss": -ncc + self.config.lam * grad, "ncc": ncc, "grad": grad}

    @torch.no_grad()
    def register(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = False) -> VoxelMorphResult:
        """Register ``moving`` to ``fixed`` (both ``(B, 1, X, Y, Z)`` on the model's grid) in one forward pass.

        ``result.displacement`` follows the project convention as is (VoxelMorph's own convention, see the module
        docstring). ``inverse=True`` also integrates ``-v`` and needs the diffeomorphic variant.
        """
        check_pair(fixed, moving, self.config.image_size)
        if inverse and not self.config.diffeomorphic:
            raise ValueError("this VoxelMorph has integration_steps=0 (not diffeomorphic): it has no inverse; "
                             "call register(..., inverse=False)")
        was_training = self.training
        self.eval()
        velocity = self.net(moving, fixed, return_field_type="velocity")
        displacement = self.net.velocity_field_integrator(velocity) if self.config.diffeomorphic else velocity
        warped = self.net.spatial_transformer(moving, displacement)
        inverse_u = self.net.velocity_field_integrator(-velocity) if inverse else None
        self.train(was_training)
        return VoxelMorphResult(warped=warped, displacement=displacement, inverse_displacement=inverse_u,
                                jacobian=jacobian_determinant(displacement))


# ----------------------------------------------------------------------------------------------------- checkpoints


def save_voxelmorph(folder: str | os.PathLike, model: VoxelMorph, **kwargs: Any) -> Path:
    """Write a VoxelMorph checkpoint atomically; keyword arguments as :func:`cvae.checkpoint.save_checkpoint`."""
    return save_checkpoint(folder, model, fmt=FORMAT, **kwargs)


def read_voxelmorph_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Parsed ``config.json`` of a VoxelMorph checkpoint (name or folder), checked for format and model section."""
    return read_config(name_or_path, FORMAT)


def load_voxelmorph_checkpoint(name_or_path: str | os.PathLike, device: str | torch.device = "auto"
                               ) -> tuple[VoxelMorph, dict[str, Any]]:
    """``(model in eval mode, config)`` of a VoxelMorph checkpoint; :class:`CheckpointError` (one line) if unusable."""
    return build_checkpoint(name_or_path, lambda values: VoxelMorph(VoxelMorphConfig.from_dict(values)), FORMAT,
                            device)


def load_voxelmorph(name_or_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                    device: str | torch.device = "auto") -> VoxelMorph:
    """The model of a VoxelMorph checkpoint (shipped name or folder), in eval mode."""
    return load_voxelmorph_checkpoint(name_or_path, device)[0]


# ---------------------------------------------------------------------------------------------------------- method


class VoxelMorphMethod:
    """VoxelMorph as a method of ``cvae evaluate`` (the interface of :mod:`cvae.methods`).

    ``image_size`` and ``spacing`` come from the checkpoint: the evaluation grid must match them. The first call runs
    one untimed forward pass so that one-off start-up costs do not count in the time per registration.
    """

    name = "voxelmorph"

    def __init__(self, checkpoint: str | os.PathLike | VoxelMorph = DEFAULT_CHECKPOINT,
                 device: str | torch.device = "auto") -> None:
        if isinstance(checkpoint, VoxelMorph):
            self.model, spacing = checkpoint.to(resolve_device(device)).eval(), DEFAULT_SPACING
        else:
            try:
                self.model, config = load_voxelmorph_checkpoint(checkpoint, device)
            except CheckpointError as exc:
                raise MethodUnavailable(f"voxelmorph: {exc}") from None
            spacing = config["spacing"]
        self.image_size = tuple(int(n) for n in self.model.config.image_size)
        self.spacing = tuple(float(s) for s in spacing)
        self._warm = False

    def register(self, fixed: torch.Tensor, moving: torch.Tensor,
                 spacing: Sequence[float] | None = None) -> MethodResult:
        """``MethodResult``: displacement ``(1, 3, X, Y, Z)`` in voxels on the CPU with ``M o (id + u) ~ F``, and the
        seconds of the registration (device transfers included). ``spacing`` (mm) must be the checkpoint's."""
        if spacing is not None and not np.allclose(spacing, self.spacing, atol=1e-3):
            raise ValueError(f"voxelmorph: grid spacing {tuple(spacing)} mm differs from the checkpoint's "
                             f"{self.spacing}")
        device = self.model.device
        if not self._warm:
            self.model.register(fixed.to(device), moving.to(device))
            self._warm = True
        tic = time.perf_counter()
        displacement = self.model.register(fixed.to(device), moving.to(device)).displacement.cpu()
        return MethodResult(displacement, time.perf_counter() - tic)
