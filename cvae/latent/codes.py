"""Operations on latent codes of a trained model: decode, sample, walk, transport, posterior uncertainty.

Every operation decodes codes ``z (B, d)`` for a moving (ED) image with :meth:`CVAERegistration.decode`, in chunks of
``chunk`` codes so that memory stays bounded, without gradients. Images are ``(1, 1, X, Y, Z)`` tensors on the model's
grid (``(X, Y, Z)`` arrays are accepted too); fields are in voxels, as everywhere in the project, except where a
name says mm. Tensors are built on the model's device (load a checkpoint with ``device="auto"`` to use CUDA).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cvae.data.grid import DEFAULT_SPACING
from cvae.fields import image_tensor
from cvae.latent.priors import CodePrior, seeded_generator
from cvae.latent.table import check_table, mu_columns, sigma_columns
from cvae.model import CVAERegistration, RegistrationResult

__all__ = ["as_image", "code_tensor", "check_chunk", "decode_codes", "prior_codes", "cohort_prior", "sample", "walk",
           "transport", "uncertainty"]


def as_image(image: torch.Tensor | np.ndarray, model: CVAERegistration, name: str = "image") -> torch.Tensor:
    """``image`` (``(X, Y, Z)`` to ``(1, 1, X, Y, Z)``) as the model's float32 input on its device and grid."""
    return image_tensor(image, model.device, model.config.image_size, name)


def code_tensor(z: torch.Tensor | np.ndarray | Sequence[float], model: CVAERegistration) -> torch.Tensor:
    """``z`` as a float32 ``(B, d)`` tensor on the model's device (a single code ``(d,)`` gives ``B = 1``)."""
    t = z if isinstance(z, torch.Tensor) else torch.tensor(np.asarray(z, dtype=np.float32))
    if t.dim() == 1:
        t = t.unsqueeze(0)
    d = model.config.latent_dim
    if t.dim() != 2 or t.shape[1] != d or t.shape[0] == 0:
        raise ValueError(f"codes must have shape ({d},) or (B, {d}) with B >= 1 for this model, got {tuple(t.shape)}")
    return t.to(device=model.device, dtype=torch.float32)


def check_chunk(chunk: int) -> int:
    """``chunk`` (codes per forward pass) as an int, ``ValueError`` below 1."""
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1 codes per forward pass, got {chunk}")
    return int(chunk)


@torch.no_grad()
def decode_codes(model: CVAERegistration, z: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray,
                 chunk: int = 8, inverse: bool = False) -> RegistrationResult:
    """Decode codes ``z (B, d)`` (or ``(d,)``) for one moving image, ``chunk`` codes per forward pass.

    Returns one :class:`RegistrationResult` with batch ``B`` (``warped (B, 1, X, Y, Z)``, fields ``(B, 3, X, Y, Z)``
    in voxels, ``jacobian (B, X, Y, Z)``, ``mu = z``), on the model's device.
    """
    codes, image, chunk = code_tensor(z, model), as_image(moving, model, "moving"), check_chunk(chunk)
    parts = [model.decode(codes[i:i + chunk], image, inverse=inverse) for i in range(0, codes.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return RegistrationResult(
        warped=torch.cat([p.warped for p in parts]), velocity=torch.cat([p.velocity for p in parts]),
        displacement=torch.cat([p.displacement for p in parts]),
        inverse_displacement=torch.cat([p.inverse_displacement for p in parts]) if inverse else None,
        jacobian=torch.cat([p.jacobian for p in parts]), mu=codes, logvar=None)


def prior_codes(model: CVAERegistration, n: int, temperature: float = 1.0, seed: int | None = None,
                prior: CodePrior | None = None) -> torch.Tensor:
    """``n`` codes drawn from ``prior`` (default the model's ``N(0, I)``: ``z = temperature * eps``): ``(n, d)`` on
    the CPU, repeatable with ``seed``. See :class:`cvae.latent.priors.CodePrior` and :func:`cohort_prior`."""
    d = model.config.latent_dim
    prior = CodePrior.standard(d) if prior is None else prior
    if prior.latent_dim != d:
        raise ValueError(f"the prior is {prior.latent_dim}-D but the model has a {d}-D latent space: fit it to "
                         "codes of this checkpoint")
    return prior.draw(n, temperature, seed)


def cohort_prior(table: pd.DataFrame) -> CodePrior:
    """The Gaussian fit of a cohort's aggregate posterior (:meth:`CodePrior.aggregate`) from a table of
    :func:`encode_cohort` (its ``mu_i`` and ``sigma_i`` columns): codes drawn from it stay where the cohort's are."""
    d = check_table(table)
    missing = [c for c in sigma_columns(d) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the posterior widths {missing[0]}...: make it with encode_cohort or "
                         "`cvae embed`")
    return CodePrior.aggregate(table[mu_columns(d)].to_numpy(), table[sigma_columns(d)].to_numpy())


def sample(model: CVAERegistration, moving: torch.Tensor | np.ndarray, n: int, temperature: float = 1.0,
           seed: int | None = None, chunk: int = 8, prior: CodePrior | None = None) -> RegistrationResult:
    """``n`` deformations of ``moving`` drawn from ``prior``, by default the model's ``N(0, I)``
    (``z = temperature * eps``, ``eps ~ N(0, I)``); :func:`cohort_prior` gives one that stays near a cohort's codes.

    ``seed`` makes the draws repeatable (on any device). Returns a batch of ``n`` (see :func:`decode_codes`).
    """
    return decode_codes(model, prior_codes(model, n, temperature, seed, prior), moving, chunk)


def walk(model: CVAERegistration, moving: torch.Tensor | np.ndarray, z0: torch.Tensor | np.ndarray, dim: int,
         values: Sequence[float] | np.ndarray | torch.Tensor, chunk: int = 8) -> RegistrationResult:
    """Decode ``z0 (d,)`` with its coordinate ``dim`` (0-based: column ``mu_{dim+1}``) set to each of ``values``.

    Frame ``i`` of the result (batch ``len(values)``) is the deformation for ``values[i]``: an animation along one
    latent axis.
    """
    code = code_tensor(z0, model)
    if code.shape[0] != 1:
        raise ValueError(f"z0 must be one code of shape ({model.config.latent_dim},), got {code.shape[0]} codes")
    d = model.config.latent_dim
    if not 0 <= int(dim) < d:
        raise ValueError(f"dim must be a 0-based latent axis in [0, {d - 1}], got {dim}")
    steps = values if isinstance(values, torch.Tensor) else torch.tensor(np.asarray(values, dtype=np.float32))
    if steps.dim() != 1 or steps.numel() == 0 or not torch.isfinite(steps).all():
        raise ValueError("values must be a non-empty 1-D sequence of finite numbers")
    z = code.repeat(steps.numel(), 1)
    z[:, int(dim)] = steps.to(z)
    return decode_codes(model, z, moving, chunk)


def transport(model: CVAERegistration, z_source: torch.Tensor | np.ndarray, moving_target: torch.Tensor | np.ndarray,
              chunk: int = 8) -> RegistrationResult:
    """Apply the deformation code(s) of one subject (``(d,)`` or ``(B, d)``, e.g. its ``mu``) to another subject's
    ED image ``moving_target``: the target's ED warped by the source's motion pattern (a simulated ES)."""
    return decode_codes(model, z_source, moving_target, chunk)



@torch.no_grad()
def uncertainty(model: CVAERegistration, fixed: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray,
                k: int, seed: int | None = None, spacing: Sequence[float] = DEFAULT_SPACING, chunk: int = 8,
                per_axis: bool = False) -> torch.Tensor:
    """Per-voxel standard deviation (mm) of the displacement over ``k`` samples ``z ~ q(z | F, M)``.

    Returns ``(X, Y, Z)``: ``sqrt(sum_i Var[u_i])`` with ``u_i`` in mm (``spacing`` of the model's grid), or
    ``(3, X, Y, Z)`` per axis with ``per_axis``. Unbiased (``k - 1``) variances, accumulated in float64 chunk by
    chunk (Chan's update); a posterior with zero variance gives 0 up to the float32 rounding of the decoder.
    """
    if int(k) < 2:
        raise ValueError(f"k must be >= 2 samples to estimate a standard deviation, got {k}")
    scale = torch.as_tensor(np.asarray(spacing, dtype=np.float64).ravel())
    if scale.numel() != 3 or not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing!r}")
    f, m, chunk = as_image(fixed, model, "fixed"), as_image(moving, model, "moving"), check_chunk(chunk)
    mu, logvar = model.encode(f, m)
    eps = torch.randn(int(k), mu.shape[1], generator=seeded_generator(seed)).to(mu)
    z = mu + eps * torch.exp(0.5 * logvar)
    scale = scale.to(device=mu.device).view(1, 3, 1, 1, 1)
    count, mean, m2 = 0, None, None
    for start in range(0, int(k), chunk):
        u = model.decode(z[start:start + chunk], m).displacement.double() * scale
        n_b, mean_b = u.shape[0], u.mean(dim=0)
        m2_b = ((u - mean_b) ** 2).sum(dim=0)
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
        count = total
    variance = m2 / (count - 1)
    std = variance.sqrt() if per_axis else variance.sum(dim=0).sqrt()
    return std.float()
