"""The probabilistic motion model: a temporal network over a cycle's codes, trained with temporal dropout.

A cycle of ``T`` frames is tracked by the registration CVAE (ED -> frame ``t``, :mod:`cvae.motion.track`), which
gives the *motion matrix* ``Z (T, d)`` of codes ``z_t``. After Krebs et al. (STACOM 2019, "Probabilistic motion
modeling from medical image sequences"), a temporal convolutional network learns the dynamics of ``Z``; our design:

- **Input** per frame: the standardised code where the frame is observed and 0 where hidden, the observation mask,
  and the cycle phase ``(t - 1) / T`` as ``sin``/``cos`` of one and two turns. The convolutions pad *circularly*:
  a cine holds one whole cycle, so the frame after the last one is the next ED.
- **ED context** ``c``: a small 3-D CNN over the ED frame (on the registration grid, average-pooled 4x) gives
  ``context`` numbers: the anatomy (a dilated DCM ventricle, a thick HCM wall) tells which motion to expect when no
  other frame is seen.
- **Style** ``w ~ N(0, I)`` (``style`` numbers) for the variability of the cycles of one anatomy: the encoder reads
  the observed frames and gives ``q(w | observed)``; simulating draws ``w`` from the prior, so that a sampled cycle
  is coherent over time (one draw per cycle, not noise per frame).
- **Output** per frame: mean and log-variance of the standardised code (a diagonal Gaussian).

**Objective** (unsupervised: the codes come from registering the training cycles, no labels): Gaussian negative
log-likelihood of the hidden frames' codes under the prediction, plus ``beta`` times ``KL(q(w) || N(0, I))``. **Temporal
dropout**: in each training cycle the ED frame is always observed; with probability ``ed_only`` no other frame is
(simulation from ED alone), otherwise each other frame is kept with a probability drawn from ``keep`` per cycle.

Shapes: codes ``(T, d)`` (one cycle, ``T`` may differ between cycles), masks ``(T,)`` bool, ED images
``(X, Y, Z)`` on the registration model's grid in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MotionConfig", "MotionModel", "temporal_dropout", "phase_features", "MOTION_FORMAT"]

#: ``format`` of a motion-model checkpoint's ``config.json``.
MOTION_FORMAT = "cvae-reg motion model"


@dataclass
class MotionConfig:
    """Sizes of the motion model; ``latent_dim`` is the registration model's."""

    latent_dim: int = 16
    hidden: int = 64
    levels: int = 4
    kernel: int = 3
    context: int = 8
    style: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MotionConfig:
        return cls(**values)


def phase_features(frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(4, T)``: ``sin``/``cos`` of one and two turns of the cycle phase ``(t - 1) / T``."""
    phase = 2 * math.pi * torch.arange(frames, device=device, dtype=torch.float32) / frames
    return torch.stack([phase.sin(), phase.cos(), (2 * phase).sin(), (2 * phase).cos()])


def temporal_dropout(frames: int, generator: torch.Generator, ed_frame: int = 1, ed_only: float = 0.25,
                     keep: tuple[float, float] = (0.2, 0.9)) -> torch.Tensor:
    """Observation mask ``(T,)`` bool of one training cycle: ED (1-based ``ed_frame``) always; with probability
    ``ed_only`` nothing else, otherwise each other frame with one probability drawn uniformly from ``keep``."""
    u = torch.rand(2, generator=generator)
    rate = 0.0 if u[0] < ed_only else keep[0] + float(u[1]) * (keep[1] - keep[0])
    mask = torch.rand(frames, generator=generator) < rate
    mask[ed_frame - 1] = True
    return mask


class _Block(nn.Module):
    """Residual dilated circular 1-D convolution block."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        frames = h.shape[-1]  # circular padding by indexing: wraps any number of times, so any cycle length works
        x = h[..., torch.arange(-self.pad, frames + self.pad, device=h.device) % frames] if self.pad else h
        return h + self.mix(F.gelu(self.conv(x)))


def _tcn(cin: int, cout: int, cfg: MotionConfig) -> nn.Sequential:
    """A temporal convolutional network ``(B, cin, T) -> (B, cout, T)`` with dilations 1, 2, 4, ..."""
    layers: list[nn.Module] = [nn.Conv1d(cin, cfg.hidden, 1)]
    layers += [_Block(cfg.hidden, cfg.kernel, 2 ** k) for k in range(cfg.levels)]
    layers += [nn.GELU(), nn.Conv1d(cfg.hidden, cout, 1)]
    return nn.Sequential(*layers)


class MotionModel(nn.Module):
    """Temporal motion model over standardised codes (module docstring). ``code_mean``/``code_std`` ``(d,)``
    standardise the registration codes (set from the training cycles)."""

    def __init__(self, config: MotionConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = cfg = config or MotionConfig(**overrides)
        d = cfg.latent_dim
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_std", torch.ones(d))
        self.anatomy = nn.Sequential(
            nn.AvgPool3d(4), nn.Conv3d(1, 8, 3, padding=1), nn.GELU(), nn.MaxPool3d(2),
            nn.Conv3d(8, 16, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
            nn.Linear(16, cfg.context))
        inputs = d + 1 + 4 + cfg.context
        self.encoder = _tcn(inputs, 2 * cfg.style, cfg)
        self.decoder = _tcn(inputs + cfg.style, 2 * d, cfg)

    @property
    def device(self) -> torch.device:
        return self.code_mean.device

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.code_mean) / self.code_std

    def unstandardise(self, codes: torch.Tensor) -> torch.Tensor:
        return codes * self.code_std + self.code_mean

    def context(self, ed: torch.Tensor) -> torch.Tensor:
        """``(B, context)`` of ED images ``(B, 1, X, Y, Z)``."""
        return self.anatomy(ed)

    def _inputs(self, codes: torch.Tensor, mask: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``(1, d + 5 + context, T)`` network input of one cycle (standardised codes ``(T, d)``)."""
        frames = codes.shape[0]
        observed = mask.to(codes.dtype)[:, None]
        return torch.cat([(codes * observed).T, observed.T, phase_features(frames, codes.device),
                          context.reshape(-1, 1).expand(-1, frames)])[None]

    def posterior(self, codes: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(w | observed frames)``: ``(mu, logvar)`` each ``(style,)``; codes standardised ``(T, d)``."""
        out = self.encoder(self._inputs(codes, mask, context)).mean(dim=2)[0]
        mu, logvar = out.chunk(2)
        return mu, logvar.clamp(-8, 4)

    def predict(self, codes: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, style: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame's standardised code distribution: ``(mean, logvar)`` each ``(T, d)``, given the observed
        frames of ``codes`` (standardised ``(T, d)``; hidden rows are ignored), the ED context and a style ``w``."""
        frames = codes.shape[0]
        x = torch.cat([self._inputs(codes, mask, context), style.reshape(1, -1, 1).expand(1, -1, frames)], dim=1)
        mean, logvar = self.decoder(x)[0].T.chunk(2, dim=1)
        return mean, logvar.clamp(-8, 4)

    def loss(self, codes: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, beta: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Objective of one cycle (module docstring): ``(loss, {"nll": per code number, "kl": ...})``."""
        mu, logvar = self.posterior(codes, mask, context)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device) if generator is not None else \
            torch.randn_like(mu)
        mean, var_log = self.predict(codes, mask, context, mu + eps * (0.5 * logvar).exp())
        hidden = ~mask if bool((~mask).any()) else torch.ones_like(mask)
        nll = 0.5 * (var_log + (codes - mean) ** 2 / var_log.exp() + math.log(2 * math.pi))[hidden].mean()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum()
        return nll + beta * kl / codes.numel(), {"nll": float(nll.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def complete(self, codes: np.ndarray | torch.Tensor, observed: np.ndarray | torch.Tensor, ed: torch.Tensor,
                 samples: int = 0, seed: int | None = None) -> np.ndarray:
        """Codes of every frame of one cycle (registration units, ``(T, d)``) from the observed ones.

        ``codes`` ``(T, d)`` (rows of hidden frames are ignored), ``observed`` ``(T,)`` bool, ``ed`` the ED image
        ``(1, 1, X, Y, Z)``. With ``samples`` = 0 the mean under the posterior mean style, observed frames kept
        exactly; with ``samples`` = n > 0, ``(n, T, d)`` cycles with styles drawn from the prior ``N(0, I)``
        (``seed`` repeatable), observed frames kept too.
        """
        given = torch.as_tensor(np.asarray(codes), dtype=torch.float32, device=self.device)
        mask = torch.as_tensor(np.asarray(observed), dtype=torch.bool, device=self.device)
        if given.dim() != 2 or given.shape[1] != self.config.latent_dim or mask.shape != (given.shape[0],):
            raise ValueError(f"codes must be (T, {self.config.latent_dim}) and the mask (T,), got "
                             f"{tuple(given.shape)} and {tuple(mask.shape)}")
        z = self.standardise(given)
        if not bool(mask.any()):
            raise ValueError("observe at least one frame (the ED frame)")
        context = self.context(ed.to(self.device))[0]
        if samples == 0:
            styles = self.posterior(z, mask, context)[0][None]
        else:
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            styles = torch.randn((samples, self.config.style), generator=gen).to(self.device)
        out = self.unstandardise(torch.stack([self.predict(z, mask, context, w)[0] for w in styles]))
        result = torch.where(mask[None, :, None], given, out).cpu().numpy()
        return result[0] if samples == 0 else result
