"""The conditional variational autoencoder for diffeomorphic registration (Krebs et al. 2018/2019).

``F`` (fixed) and ``M`` (moving) go through an encoder to a latent code ``z ~ N(mu, sigma)``; a decoder conditioned on
``M`` (down-sampled ``M`` concatenated at every scale) turns ``z`` into a stationary velocity field ``v`` which is
smoothed by a Gaussian layer and exponentiated (scaling and squaring) into the diffeomorphism ``phi = exp(v)``; a spatial
transformer warps ``M``. With ``M o exp(v) ~ F``. Images are ``(B, 1, X, Y, Z)``, fields ``(B, 3, X, Y, Z)`` in voxels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields as dataclass_fields

import torch
import torch.nn.functional as F
from torch import nn

from .fields import exponentiate, gaussian_kernel1d, gaussian_smooth, jacobian_determinant, warp
from .data.labels import N_LABELS
from .losses import kl_divergence, soft_label_dice, symmetric_lcc

__all__ = ["ModelConfig", "CVAERegistration", "RegistrationResult", "GaussianSmoothing", "Exponentiate",
           "SpatialTransformer", "check_pair"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss hyper-parameters; saved in every checkpoint's ``config.json``.

    ``image_size`` is in voxels (the network has fully connected layers, so it is fixed per model); ``sigma_smooth``
    (sigma_S) and ``sigma_lcc`` (sigma_G) are in voxels; ``n_steps`` is N of scaling and squaring;
    ``integration_downsample`` is the grid reduction at which scaling and squaring runs (1: full resolution; 2 is
    faster but less inverse-consistent, see ``benchmarks/RESULTS.md``); ``lam`` weighs the similarity term against
    the KL divergence. The last decoder stages are thin because they run at full resolution. ``film`` lets the code
    also scale and shift the features of every decoder stage (see :class:`Decoder`).
    """

    image_size: tuple[int, int, int] = (128, 128, 32)
    latent_dim: int = 16
    encoder_channels: tuple[int, ...] = (16, 32, 32, 4)
    encoder_strides: tuple[int, ...] = (2, 2, 2, 1)
    decoder_channels: tuple[int, ...] = (32, 16, 8)
    head_channels: int = 8
    sigma_smooth: float = 3.0
    kernel_smooth: int = 15
    n_steps: int = 4
    integration_downsample: int = 1
    lam: float = 5000.0
    sigma_lcc: float = 2.0
    kernel_lcc: int = 9
    film: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "encoder_channels", "encoder_strides", "decoder_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        factor = 1
        for s in self.encoder_strides:
            factor *= s
        if len(self.image_size) != 3 or any(n % factor for n in self.image_size):
            raise ValueError(f"image_size must be 3 sizes divisible by {factor}, got {self.image_size}")
        if len(self.encoder_channels) != len(self.encoder_strides):
            raise ValueError("encoder_channels and encoder_strides must have the same length")
        if sum(s == 2 for s in self.encoder_strides) != len(self.decoder_channels):
            raise ValueError("need one decoder stage per stride-2 encoder layer")
        if self.latent_dim < 1 or self.n_steps < 1:
            raise ValueError(f"latent_dim and n_steps must be >= 1, got {self.latent_dim} and {self.n_steps}")

    @property
    def bottleneck_size(self) -> tuple[int, int, int]:
        factor = 1
        for s in self.encoder_strides:
            factor *= s
        return tuple(n // factor for n in self.image_size)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclass_fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}: the checkpoint was written by another version "
                             "of cvae-reg")
        return cls(**values)


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
    at fixed positions, while the motion to predict is "this heart, contracting more or less"; the decoder then
    learns the motion from M and ignores the code (posterior collapse). A per-channel gain on features that already
    follow the anatomy can express it directly. On the synthetic cohort FiLM raised the validation Dice (76.6 vs
    75.8 % at step 250) but did not, by itself, make the code informative (model card of ``synthetic-acdc``).
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

    Use :meth:`register` for registration (one forward pass, ``z = mu``), :meth:`encode` / :meth:`decode` for the
    latent space, and ``forward`` for training (it returns the loss terms).
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
        u = self.exponentiate(v)
        return RegistrationResult(warped=self.transformer(moving, u), velocity=v, displacement=u,
                                  inverse_displacement=self.exponentiate(-v) if inverse else None,
                                  jacobian=jacobian_determinant(u), mu=mu, logvar=logvar)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, kl_weight: float = 1.0,
                condition_dropout: float = 0.0, code_target: torch.Tensor | None = None,
                code_weight: float = 0.0, labels: tuple[torch.Tensor, torch.Tensor] | None = None,
                seg_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Training loss terms for a batch, each a scalar (batch mean).

        ``loss = lam * (1 - lcc) + kl_weight * kl``; ``similarity = lam * (1 - lcc)``; ``lcc`` is the symmetric LCC;
        ``kl`` in nats. ``z`` is sampled by the reparameterisation trick. ``kl_weight < 1`` serves the KL warm-up of
        training (the objective is the ELBO only at 1). With probability ``condition_dropout`` (drawn from torch's
        global generator) the decoder is conditioned on a blank image instead of M for this batch, the loss still
        comparing the real F and M: the motion must then come through ``z``, which is meant to keep the code from
        collapsing (the image counterpart of word dropout, Bowman et al. 2016; no effect within 250 steps here).
        With ``code_target`` ``(B, k)``, ``k <= d``, the loss also gets ``code_weight * code``, ``code`` being the
        mean squared distance of the first ``k`` dimensions of ``mu`` to it (the code warm-up of :mod:`cvae.warmup`).
        With ``labels = (moving_label, fixed_label)``, each ``(B, 1, X, Y, Z)`` ACDC labels, and ``seg_weight > 0``,
        the loss also gets ``seg_weight * (1 - dice)``, ``dice`` being the soft Dice of the warped moving labels
        (:func:`cvae.losses.soft_label_dice`): label-supervised fine-tuning, outside the paper's unsupervised method.
        """
        mu, logvar = self.encode(fixed, moving)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        blank = condition_dropout > 0 and bool(torch.rand(()) < condition_dropout)
        v = self.velocity(z, torch.zeros_like(moving) if blank else moving)
        cfg = self.config
        lcc = symmetric_lcc(fixed, moving, v, cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc,
                            cfg.integration_downsample).mean()
        kl = kl_divergence(mu, logvar).mean()
        similarity = cfg.lam * (1.0 - lcc)
        terms = {"loss": similarity + kl_weight * kl, "similarity": similarity, "kl": kl, "lcc": lcc}
        if code_target is not None:
            terms["code"] = (mu[:, :code_target.shape[1]] - code_target).pow(2).mean()
            terms["loss"] = terms["loss"] + code_weight * terms["code"]
        if labels is not None and seg_weight > 0:
            terms["dice"] = soft_label_dice(*labels, self.exponentiate(v), N_LABELS).mean()
            terms["loss"] = terms["loss"] + seg_weight * (1.0 - terms["dice"])
        return terms
