"""The settings of the registration network and its objective (:class:`ModelConfig`), saved in every checkpoint.

Kept apart from the network (:mod:`cvae.model`) so that reading them needs no torch: ``cvae train --help`` lists
them at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields

from cvae.config import at_least, option
from cvae.data.grid import DEFAULT_SIZE

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective hyper-parameters; saved in every checkpoint's ``config.json`` (each field's help
    line says what it is, with its unit; ``cvae train --help`` shows them).

    The network has fully connected layers, so ``image_size`` is fixed per model. The last decoder stages are thin
    because they run at full resolution. ``lam`` weighs the similarity against the prior's penalty in the one
    objective of :func:`cvae.losses.objective`.

    The defaults are the shipped ``synthetic-acdc`` model: the paper's architecture and smoothing, plus FiLM, and
    ``lam = 40000`` (the paper trained with 5000; the model card says how the shipped model got from one to the
    other).
    """

    image_size: tuple[int, int, int] = option(DEFAULT_SIZE, "grid of the network's input, voxels (X Y Z)")
    latent_dim: int = option(16, "d, the size of the latent code z")
    encoder_channels: tuple[int, ...] = option((16, 32, 32, 4), "channels of the encoder's convolutions")
    encoder_strides: tuple[int, ...] = option((2, 2, 2, 1), "strides of the encoder's convolutions (one per layer)")
    decoder_channels: tuple[int, ...] = option((32, 16, 8), "channels of the decoder's transposed convolutions "
                                                            "(one per stride-2 encoder layer)")
    head_channels: int = option(8, "channels of the decoder's last convolution at full resolution")
    sigma_smooth: float = option(3.0, "sigma_S of the Gaussian smoothing of the velocity, voxels")
    kernel_smooth: int = option(15, "taps of that smoothing kernel, voxels (odd)")
    n_steps: int = option(4, "N, the scaling-and-squaring steps of exp(v)")
    integration_downsample: int = option(1, "integrate exp(v) on a grid this many times coarser (1 = full "
                                            "resolution; 2 is faster, less inverse-consistent)")
    lam: float = option(40000.0, "lambda, weight of 1 - LCC against the prior's penalty (the KL divergence)")
    sigma_lcc: float = option(2.0, "sigma_G of the LCC's Gaussian windows, voxels")
    kernel_lcc: int = option(9, "taps of the LCC windows, voxels (odd)")
    film: bool = option(True, "the code also scales and shifts the features of every decoder stage (FiLM)")

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
        at_least(self, 1, "latent_dim", "n_steps", "head_channels", "integration_downsample")
        at_least(self, 0, "lam")
        if min(self.encoder_channels + self.encoder_strides + self.decoder_channels) < 1:
            raise ValueError("every channel count and stride must be >= 1")
        for sigma, kernel in (("sigma_smooth", "kernel_smooth"), ("sigma_lcc", "kernel_lcc")):
            if not getattr(self, sigma) > 0 or getattr(self, kernel) < 1 or getattr(self, kernel) % 2 == 0:
                raise ValueError(f"--{sigma.replace('_', '-')} must be > 0 and --{kernel.replace('_', '-')} an odd "
                                 f"number >= 1, got {getattr(self, sigma)} and {getattr(self, kernel)}")

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
