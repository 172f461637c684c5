"""Re-centre and re-scale a trained model's latent space to a cohort's codes; ``cvae standardise``.

Training fits ``lam * (1 - LCC) + KL(q(z | F, M) || N(0, I))``, but the codes of a cohort need not fill ``N(0, I)``:
their mean can lie off the origin and their spread differ from 1 per axis, and codes drawn from ``N(0, I)`` then
decode to motions the cohort does not have (``benchmarks/RESULTS.md``, section 3). The code enters the decoder only
through linear layers (``decoder.fc`` and the FiLM layers), so the reparametrisation ``z = m + s * z'``
(``m, s (d,)``, ``s > 0``, elementwise) folded into the weights is an exact symmetry of the data term:

- decoder ``fc`` and every FiLM layer: ``W' = W diag(s)``, ``b' = b + W m``;
- encoder ``mu`` head: ``W' = diag(1/s) W``, ``b' = (b - m) / s``; ``logvar`` head: ``b' = b - 2 log s``.

Registrations, transport and decoded deformations stay the same (up to float32 rounding; the ``logvar`` clamp of
:data:`cvae.model.LOGVAR_RANGE` is not moved), while the KL summed over a cohort changes. Its minimiser is the
aggregate posterior's mean and per-dimension standard deviation, :func:`kl_optimal_affine`: afterwards that cohort's
codes have mean 0 and variance 1 per dimension, and codes drawn from ``N(0, I)`` decode to motions like the cohort's.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvae.checkpoint import load_checkpoint, read_config, resolve_checkpoint, save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.io.atomic import check_writable
from cvae.latent.codes import as_image
from cvae.latent.cohort import encode_cohort
from cvae.latent.table import latent_dim_of, mu_columns, sigma_columns
from cvae.losses import kl_divergence
from cvae.model import CVAERegistration

__all__ = ["kl_optimal_affine", "mean_kl", "standardise_model", "standardise_checkpoint", "SECTION"]

#: The ``config.json`` section of a standardised checkpoint.
SECTION = "latent_standardisation"


def _check_codes(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mu, sigma (n, d)`` as float64 arrays, checked for shape, finiteness and ``sigma >= 0``."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 2 or mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma must both be (subjects, d), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("the codes hold NaN or infinite values: re-encode the cohort (cvae embed)")
    if (sigma < 0).any():
        raise ValueError("sigma holds negative values: give posterior standard deviations exp(logvar / 2)")
    return mu, sigma


def kl_optimal_affine(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(m, s)`` (each ``(d,)``) of ``z = m + s * z'`` that minimise the cohort's KL to ``N(0, I)``.

    ``mu`` and ``sigma`` ``(n, d)`` are the posterior means and standard deviations of ``n >= 2`` subjects;
    ``m = mean_i mu_i`` and ``s_j^2 = mean_i[(mu_ij - m_j)^2 + sigma_ij^2]``: the mean and per-dimension variance of
    the aggregate posterior ``(1/n) sum_i N(mu_i, diag(sigma_i^2))``.
    """
    mu, sigma = _check_codes(mu, sigma)
    if len(mu) < 2:
        raise ValueError(f"standardising needs the codes of at least 2 subjects, got {len(mu)}")
    m = mu.mean(axis=0)
    s = np.sqrt(((mu - m) ** 2 + sigma ** 2).mean(axis=0))
    if (s == 0).any():
        raise ValueError(f"latent dimension(s) {(np.flatnonzero(s == 0) + 1).tolist()} have zero spread (every "
                         "code equal, sigma 0): they cannot be re-scaled; encode a cohort with varied motions")
    return m, s


def mean_kl(mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean over subjects of ``KL(N(mu_i, diag(sigma_i^2)) || N(0, I))`` in nats; ``mu, sigma (n, d)``,
    ``sigma > 0``."""
    mu, sigma = _check_codes(mu, sigma)
    if (sigma == 0).any():
        raise ValueError("sigma holds zeros: the KL of a point mass is infinite")
    return float(kl_divergence(torch.tensor(mu), torch.tensor(2.0 * np.log(sigma))).mean())


def _fold_input(layer: nn.Linear, m: torch.Tensor, s: torch.Tensor) -> None:
    """``layer(m + s * z')`` as a linear layer of ``z'``: ``W' = W diag(s)``, ``b' = b + W m`` (in float64)."""
    w = layer.weight.double()
    layer.bias.copy_(layer.bias.double() + w @ m)
    layer.weight.copy_(w * s)


def standardise_model(model: CVAERegistration, m: np.ndarray, s: np.ndarray) -> CVAERegistration:
    """A copy of ``model`` whose codes are ``z' = (z - m) / s`` (``m, s (d,)``, ``s > 0``), every deformation unchanged.

    The affine is folded into the encoder's ``mu`` and ``logvar`` heads and the decoder's ``fc`` and FiLM layers (in
    float64, then cast back); ``model`` itself is not modified. ``copy.decode(z')`` equals
    ``model.decode(m + s * z')``.
    """
    d = model.config.latent_dim
    m, s = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
    if m.shape != (d,) or s.shape != (d,):
        raise ValueError(f"m and s must both have shape ({d},) for this model, got {m.shape} and {s.shape}")
    if not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("m must be finite and s finite and > 0: fit them with kl_optimal_affine")
    result = copy.deepcopy(model)
    device = next(result.parameters()).device
    mean, scale = (torch.as_tensor(a, device=device) for a in (m, s))
    with torch.no_grad():
        for layer in (result.decoder.fc, *result.decoder.film):
            _fold_input(layer, mean, scale)
        mu_head, logvar_head = result.encoder.mu, result.encoder.logvar
        mu_head.weight.copy_(mu_head.weight.double() / scale[:, None])
        mu_head.bias.copy_((mu_head.bias.double() - mean) / scale)
        logvar_head.bias.copy_(logvar_head.bias.double() - 2.0 * torch.log(scale))
    return result


def standardise_checkpoint(checkpoint: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike,
                           split: str | None = "training", device: str | torch.device = "auto") -> dict:
    """Fit :func:`kl_optimal_affine` to a cohort split's codes, fold it into the checkpoint, write it to ``out``.

    ``out`` (a new folder) gets the source's config sections and a ``latent_standardisation`` section (returned):
    ``split``, ``subjects``, ``mean`` and ``scale`` (``d`` values each), ``mean_kl_before`` and ``mean_kl_after``
    (nats per subject, on that split), ``source``, ``data`` and a ``note``; plus ``velocity_change``, the largest
    change (voxels) of the velocity field on the table's first pair, and ``velocity_max`` (its max ``|v|``), which
    are not written. Raises ``ValueError`` (one line) for a standardised source, an existing ``out`` or a bad cohort.
    """
    folder, out, root = resolve_checkpoint(checkpoint), Path(out).expanduser(), Path(root).expanduser()
    config = read_config(folder)
    if SECTION in config:
        raise ValueError(f"{folder} is already standardised (on its {config[SECTION].get('split')} split): doing it "
                         "again changes nothing; standardise the original checkpoint instead")
    if out.resolve() == folder.resolve():
        raise ValueError(f"--out {out} is the source checkpoint folder: write the standardised one to a new folder")
    if out.exists():
        raise ValueError(f"--out {out} already exists: remove it or choose a new folder")
    check_writable(out)
    if not root.is_dir():
        raise ValueError(f"cohort folder {root} not found: give an ACDC-style folder with --data")
    model, config = load_checkpoint(folder, device)
    table = encode_cohort(folder, root, split, device=model.device, progress=True)
    d = latent_dim_of(table)
    mu, sigma = table[mu_columns(d)].to_numpy(np.float64), table[sigma_columns(d)].to_numpy(np.float64)
    m, s = kl_optimal_affine(mu, sigma)
    standard = standardise_model(model, m, s)

    pair = PairDataset(root, split, size=model.config.image_size, spacing=config["spacing"],
                       subjects=[table["subject"].iloc[0]]).pair(0)
    fixed, moving = as_image(pair.fixed, model, "fixed"), as_image(pair.moving, model, "moving")
    with torch.no_grad():
        before = model.register(fixed, moving, inverse=False).velocity
        after = standard.register(fixed, moving, inverse=False).velocity

    section = {"split": split or "all", "subjects": len(table), "mean": m.tolist(), "scale": s.tolist(),
               "mean_kl_before": mean_kl(mu, sigma), "mean_kl_after": mean_kl((mu - m) / s, sigma / s),
               "source": str(checkpoint), "data": str(root),
               "note": "z = mean + scale * z' folded into the encoder's mu/logvar heads and the decoder's linear "
                       "layers: registrations are unchanged, codes are (source codes - mean) / scale, and this "
                       "split's aggregate posterior has mean 0 and variance 1 per dimension."}
    save_checkpoint(out, standard, spacing=config["spacing"], training=config.get("training"),
                    metrics=config.get("metrics"), sections={SECTION: section})
    return {**section, "velocity_change": float((after - before).abs().max()),
            "velocity_max": float(before.abs().max())}
