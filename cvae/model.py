"""The conditional variational autoencoder for diffeomorphic registration (Krebs et al. 2018/2019).

``F`` (fixed) and ``M`` (moving) go through an encoder to a latent code ``z ~ N(mu, sigma)``; a decoder conditioned on
``M`` (down-sampled ``M`` concatenated at every scale) turns ``z`` into a stationary velocity field ``v`` which is
smoothed by a Gaussian layer and exponentiated (scaling and squaring) into the diffeomorphism ``phi = exp(v)``; a
spatial transformer warps ``M``. With ``M o exp(v) ~ F``. Images are ``(B, 1, X, Y, Z)``, fields ``(B, 3, X, Y, Z)`` in
voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .fields import exponentiate, gaussian_kernel1d, gaussian_smooth, jacobian_determinant, warp
from .losses import Energy, objective
from .model_config import ModelConfig

__all__ = ["ModelConfig", "CVAERegistration", "RegistrationResult", "GaussianSmoothing", "Exponentiate",
           "SpatialTransformer", "check_pair"]


def check_pair(fixed: torch.Tensor, moving: torch.Tensor, image_size: tuple[int, int, int] | None = None) -> None:
    """Validate a registration pair before any computation; one-line ``ValueError`` when it is not usable."""
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, 1, X, Y, Z), got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"{name} must have rank 5 (B, 1, X, Y, Z), got shape {tuple(t.shape)}")
        if t.shape[1] != 1:
            raise ValueError(f"{name} must have 1 channel (B, 1, X, Y, Z), got {t.shape[1]} channels")
        if image_size is not None and tuple(t.shape[2:]) != tuple(image_size):
            raise ValueError(f"{name} is {tuple(t.shape[2:])} voxels but the model expects {tuple(image_size)}: "
                             "preprocess with cvae.data.preprocess first")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must have the same shape")
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values: clean or re-normalise the image")


class GaussianSmoothing(nn.Module):
    """Separable Gaussian smoothing of every channel, ``sigma`` and ``kernel_size`` in voxels."""

    def __init__(self, sigma: float, kernel_size: int) -> None:
        super().__init__()
        self.sigma, self.kernel_size = float(sigma), int(kernel_size)
        self.register_buffer("kernel", gaussian_kernel1d(sigma, kernel_size), persistent=False)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return gaussian_smooth(volume, self.kernel)


class Exponentiate(nn.Module):
    """Scaling and squaring layer: velocity ``(B, 3, X, Y, Z)`` -> displacement of ``exp(v)`` (voxels)."""

    def __init__(self, n_steps: int | None = 4, downsample: int = 1) -> None:
        super().__init__()
        self.n_steps, self.downsample = n_steps, downsample

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return exponentiate(velocity, self.n_steps, self.downsample)


class SpatialTransformer(nn.Module):
    """Warps ``(B, C, X, Y, Z)`` by a displacement ``(B, 3, X, Y, Z)`` in voxels: ``M o (id + u)``."""

    def __init__(self, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        return warp(image, displacement, mode=self.mode)


@dataclass
class RegistrationResult:
    """What one registration (or one decoded code) gives, all on the model's grid.

    ``warped`` is ``(B, 1, X, Y, Z)``; ``velocity``, ``displacement`` (of ``exp(v)``) and ``inverse_displacement``
    (of ``exp(-v)``, ``None`` when not asked for) are ``(B, 3, X, Y, Z)`` in voxels; ``jacobian`` is
    ``(B, X, Y, Z)``; ``mu`` and ``logvar`` are ``(B, d)`` (``logvar`` is ``None`` for a decoded code).
    """

    warped: torch.Tensor
    velocity: torch.Tensor
    displacement: torch.Tensor
    inverse_displacement: torch.Tensor | None
    jacobian: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor | None = field(default=None)

    def to(self, device: torch.device | str) -> "RegistrationResult":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return RegistrationResult(**moved)


#: Initial log-variance of q(z | F, M), see :class:`Encoder`.
LOGVAR_INIT = -6.0
#: The encoder's log-variance is clamped to this range (sigma from 3e-7 to 150): one large optimiser step cannot
#: make ``exp(logvar)`` overflow and end a training run.
LOGVAR_RANGE = (-30.0, 10.0)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """``(B, 2, X, Y, Z)`` (F and M stacked) -> ``mu, logvar`` of shape ``(B, d)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers, cin = [], 2
        for cout, stride in zip(cfg.encoder_channels, cfg.encoder_strides):
            layers.append(_conv(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        flat = cin * cfg.bottleneck_size[0] * cfg.bottleneck_size[1] * cfg.bottleneck_size[2]
        self.mu = nn.Linear(flat, cfg.latent_dim)
        self.logvar = nn.Linear(flat, cfg.latent_dim)
        # Start with a near-deterministic posterior (sigma = exp(LOGVAR_INIT / 2) = 0.05): with sigma = 1 at the
        # start, z is mostly noise, the decoder learns to rely on M alone and the code collapses to the prior; the
        # KL term then widens sigma only as far as the data allow.
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, LOGVAR_INIT)

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(pair).flatten(1)
        return self.mu(h), self.logvar(h).clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """``z (B, d)`` and ``M (B, 1, X, Y, Z)`` -> raw velocity ``(B, 3, X, Y, Z)`` (before Gaussian smoothing).

    One fully connected layer to the bottleneck, then one transposed convolution per scale up to full resolution;
    ``M``, down-sampled to each scale by trilinear interpolation, is concatenated to the features at every scale.

    With ``film`` the code also modulates every stage's features, ``h -> h * (1 + gamma(z)) + beta(z)`` per channel
    (feature-wise linear modulation, Perez et al. 2018). Through the bottleneck alone the code can only add a pattern
    at fixed positions, while the motion to predict is "this heart, contracting more or less"; a per-channel gain on
    features that already follow the anatomy can express it directly.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.bottleneck = cfg.bottleneck_size
        self.bottleneck_channels = cfg.encoder_channels[-1]
        self.fc = nn.Linear(cfg.latent_dim, self.bottleneck_channels * self.bottleneck[0] * self.bottleneck[1]
                            * self.bottleneck[2])
        ups, cin = [], self.bottleneck_channels + 1
        for cout in cfg.decoder_channels:
            ups.append(nn.Sequential(nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                                     nn.LeakyReLU(0.2)))
            cin = cout + 1
        self.ups = nn.ModuleList(ups)
        self.head = _conv(cin, cfg.head_channels)
        self.velocity = nn.Conv3d(cfg.head_channels, 3, 3, padding=1)
        nn.init.normal_(self.velocity.weight, std=1e-5)
        nn.init.zeros_(self.velocity.bias)
        self.film = nn.ModuleList()
        if cfg.film:
            for channels in (*cfg.decoder_channels, cfg.head_channels):
                layer = nn.Linear(cfg.latent_dim, 2 * channels)
                nn.init.normal_(layer.weight, std=0.05)
                nn.init.zeros_(layer.bias)
                self.film.append(layer)

    def _modulate(self, h: torch.Tensor, z: torch.Tensor, stage: int) -> torch.Tensor:
        if not self.film:
            return h
        gamma, beta = self.film[stage](z).view(z.shape[0], 2, -1, 1, 1, 1).unbind(dim=1)
        return h * (1.0 + gamma) + beta

    def forward(self, z: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.bottleneck_channels, *self.bottleneck)
        if moving.shape[0] == 1 and z.shape[0] > 1:
            moving = moving.expand(z.shape[0], *moving.shape[1:])
        for stage, up in enumerate(self.ups):
            h = self._modulate(up(torch.cat([h, _resize(moving, h.shape[2:])], dim=1)), z, stage)
        h = self._modulate(self.head(torch.cat([h, moving], dim=1)), z, len(self.ups))
        return self.velocity(h)


def _resize(image: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if tuple(image.shape[2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="trilinear", align_corners=False)


class CVAERegistration(nn.Module):
    """The probabilistic registration network.

    Use :meth:`register` (also ``model(fixed, moving)``) for registration (one forward pass, ``z = mu``),
    :meth:`encode` / :meth:`decode` for the latent space, and :meth:`objective` for the energy that training and
    code refinement lower (:mod:`cvae.training.objective`, :mod:`cvae.latent.refine`).
    """

    def __init__(self, config: ModelConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config or ModelConfig()
        if overrides:
            cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.smooth = GaussianSmoothing(cfg.sigma_smooth, cfg.kernel_smooth)
        self.exponentiate = Exponentiate(cfg.n_steps, cfg.integration_downsample)
        self.transformer = SpatialTransformer("bilinear")
        # oneDNN runs 3-D convolutions 2-3x faster on CPU with channels-last weights.
        self.to(memory_format=torch.channels_last_3d)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu, logvar`` ``(B, d)`` of ``q(z | F, M)``."""
        check_pair(fixed, moving, self.config.image_size)
        return self.encoder(torch.cat([fixed, moving], dim=1))

    def velocity(self, z: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Smoothed stationary velocity ``(B, 3, X, Y, Z)`` (voxels) decoded from ``z (B, d)`` for ``moving``."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (B, {self.config.latent_dim}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or infinite values")
        check_pair(moving, moving, self.config.image_size)
        return self.smooth(self.decoder(z, moving))

    def register(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True) -> RegistrationResult:
        """Register ``moving`` to ``fixed`` in one forward pass with ``z = mu``; ``result.warped ~ fixed``.

        ``inverse=False`` skips the inverse transform (``result.inverse_displacement`` is then ``None``).
        """
        mu, logvar = self.encode(fixed, moving)
        return self._result(self.velocity(mu, moving), moving, mu, logvar, inverse)

    def decode(self, z: torch.Tensor, moving: torch.Tensor, inverse: bool = False) -> RegistrationResult:
        """Deformation of ``moving (1 or B, 1, X, Y, Z)`` for codes ``z (B, d)``: sampling, walks, transport."""
        return self._result(self.velocity(z, moving), moving, z, None, inverse)

    def _result(self, v: torch.Tensor, moving: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | None,
                inverse: bool) -> RegistrationResult:
        # exp(v) and exp(-v) as one batch: the 3-D grid sampler shares batch elements, not voxels, among the CPU
        # threads, so both run at once (each element is computed exactly as alone)
        u, u_inverse = self.exponentiate(torch.cat([v, -v])).chunk(2) if inverse else (self.exponentiate(v), None)
        return RegistrationResult(warped=self.transformer(moving, u), velocity=v, displacement=u,
                                  inverse_displacement=u_inverse, jacobian=jacobian_determinant(u), mu=mu,
                                  logvar=logvar)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> RegistrationResult:
        """:meth:`register` without the inverse transform."""
        return self.register(fixed, moving, inverse=False)

    def objective(self, fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor,
                  penalty: torch.Tensor) -> Energy:
        """:func:`cvae.losses.objective` with this model's ``lam``, LCC windows and integration: the energy
        ``lam * (1 - LCC_sym) + penalty`` of pairs ``(B, 1, X, Y, Z)`` for smoothed velocities ``(B, 3, X, Y, Z)``."""
        cfg = self.config
        return objective(fixed, moving, velocity, penalty, cfg.lam, cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc,
                         cfg.integration_downsample)
