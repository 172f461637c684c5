"""A cohort encoded by a trained model: one row per subject with its code and clinical measures; ``cvae embed``.

``encode_cohort`` turns a cohort into a table (see :mod:`cvae.latent.table`): ``subject, group, split, mu_1..mu_d,
sigma_1..sigma_d`` and the clinical measures of :data:`cvae.evaluation.clinical.MEASURE_UNITS` (LVEDV, LVESV, LVEF,
RVEF, LVM, ...) computed from the preprocessed ED (moving) and ES (fixed) labels, NaN when labels are missing. The
table is cached as CSV under ``cache_root()/latent/``, keyed by the weights, the cohort folder and its subjects, the
split and the preprocessing grid, so the app reads it instead of recomputing it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cvae.checkpoint import MODEL_FILE, load_checkpoint, read_config, resolve_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SPACING
from cvae.evaluation.clinical import MEASURE_UNITS, clinical_measures
from cvae.io.atomic import write_csv
from cvae.latent.table import check_table, mu_columns, sigma_columns
from cvae.model import CVAERegistration, ModelConfig
from cvae.paths import cache_root, data_root

__all__ = ["TABLE_VERSION", "encode_cohort", "cached_table_path"]

#: Bump when the columns or the computation of the cohort table change, so that cached tables are rebuilt.
TABLE_VERSION = "1"


def _fingerprint_model(model: CVAERegistration) -> str:
    """sha256 of an in-memory model's weights (names, shapes and bytes of its ``state_dict``)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fingerprint_file(path: Path) -> str:
    """sha256 of a weights file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_source(model_or_checkpoint: CVAERegistration | str | os.PathLike, spacing: Sequence[float] | None
                  ) -> tuple[tuple[int, ...], int, tuple[float, ...], str]:
    """``(image_size, latent_dim, spacing, weights hash)`` without loading the weights of a checkpoint."""
    if isinstance(model_or_checkpoint, CVAERegistration):
        cfg = model_or_checkpoint.config
        grid = tuple(float(s) for s in (spacing if spacing is not None else DEFAULT_SPACING))
        return cfg.image_size, cfg.latent_dim, grid, _fingerprint_model(model_or_checkpoint)
    folder = resolve_checkpoint(model_or_checkpoint)
    config = read_config(folder)
    try:
        cfg = ModelConfig.from_dict(config["model"])
        grid = tuple(float(s) for s in (spacing if spacing is not None else config.get("spacing", DEFAULT_SPACING)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{folder}: config.json has a malformed model section or spacing ({exc})") from None
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise ValueError(f"{weights} is missing: a checkpoint folder needs config.json and {MODEL_FILE}")
    return cfg.image_size, cfg.latent_dim, grid, _fingerprint_file(weights)


def _table_path(weights: str, dataset: PairDataset, split: str | None) -> Path:
    text = "|".join([TABLE_VERSION, weights, str(dataset.root.resolve()), str(split), repr(dataset.size),
                     repr(dataset.spacing), ",".join(dataset.subjects)])
    return cache_root() / "latent" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.csv"


def cached_table_path(model_or_checkpoint: CVAERegistration | str | os.PathLike,
                      root: str | os.PathLike | None = None, split: str | None = "testing",
                      spacing: Sequence[float] | None = None) -> Path:
    """Where :func:`encode_cohort` caches the table of this model and cohort (the file may not exist yet)."""
    size, _, grid, weights = _model_source(model_or_checkpoint, spacing)
    dataset = PairDataset(root if root is not None else data_root(), split=split, size=size, spacing=grid)
    return _table_path(weights, dataset, split)


def _read_table(path: Path, latent_dim: int) -> pd.DataFrame | None:
    """A cached table, or ``None`` (with a warning) when it is unreadable or of another latent size."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"subject": str, "group": str, "split": str})
        d = check_table(table)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        warnings.warn(f"cached latent table {path} is unusable ({exc}): recomputing", stacklevel=3)
        return None
    if d != latent_dim:
        warnings.warn(f"cached latent table {path} has {d}-D codes but the checkpoint has {latent_dim}-D: "
                      "recomputing", stacklevel=3)
        return None
    table["split"] = table["split"].fillna("")
    return table


@torch.no_grad()
def _encode(model: CVAERegistration, dataset: PairDataset, split: str | None, batch_size: int) -> pd.DataFrame:
    d = model.config.latent_dim
    rows = []
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(len(dataset), start + batch_size))
        pairs = [dataset.pair(i) for i in indices]
        fixed = torch.from_numpy(np.stack([p.fixed for p in pairs]).astype(np.float32))[:, None]
        moving = torch.from_numpy(np.stack([p.moving for p in pairs]).astype(np.float32))[:, None]
        mu, logvar = model.encode(fixed.to(model.device), moving.to(model.device))
        mu, sigma = mu.cpu().numpy(), torch.exp(0.5 * logvar).cpu().numpy()
        for b, (i, pair) in enumerate(zip(indices, pairs)):
            info = dataset.infos[i]
            row: dict[str, object] = {"subject": info.subject, "group": info.group,
                                      "split": info.split or (split or "")}
            row.update(zip(mu_columns(d), mu[b].tolist()))
            row.update(zip(sigma_columns(d), sigma[b].tolist()))
            row.update(clinical_measures(pair.moving_label, pair.fixed_label, pair.spacing, info.height, info.weight))
            rows.append(row)
    return pd.DataFrame(rows, columns=["subject", "group", "split", *mu_columns(d), *sigma_columns(d),
                                       *MEASURE_UNITS])


def encode_cohort(model_or_checkpoint: CVAERegistration | str | os.PathLike,
                  root: str | os.PathLike | None = None, split: str | None = "testing", *,
                  spacing: Sequence[float] | None = None, device: str | torch.device = "auto",
                  batch_size: int = 8, cache: bool = True, progress: bool = False) -> pd.DataFrame:
    """Encode every (ES, ED) pair of a cohort: one row per subject with its code and clinical measures.

    Args:
        model_or_checkpoint: a model, or a checkpoint name/folder (loaded on ``device`` only on a cache miss; an
            in-memory model stays on its own device).
        root: ACDC-style cohort folder; default :func:`cvae.paths.data_root`.
        split: ``"training"``, ``"testing"`` or ``None`` for both.
        spacing: preprocessing voxel size (mm); default the checkpoint's, or 1.5 x 1.5 x 3.15 for a model. The
            preprocessing size is always the model's ``image_size``.
        batch_size: pairs per forward pass.
        cache: read/write the CSV under ``cache_root()/latent/``; a cached table of another latent size is
            recomputed with a warning.
        progress: a tqdm bar while preprocessing.

    Returns:
        ``DataFrame`` with ``subject, group, split, mu_1..mu_d, sigma_1..sigma_d`` and every key of
        :data:`cvae.evaluation.clinical.MEASURE_UNITS` (mL, %, g, m^2, mm; NaN without labels or height/weight).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size, latent_dim, grid, _ = _model_source(model_or_checkpoint, spacing)
    dataset = PairDataset(root if root is not None else data_root(), split=split, size=size, spacing=grid)
    path = cached_table_path(model_or_checkpoint, root, split, spacing)
    if cache:
        table = _read_table(path, latent_dim)
        if table is not None:
            return table
    if isinstance(model_or_checkpoint, CVAERegistration):
        model = model_or_checkpoint
    else:
        model = load_checkpoint(model_or_checkpoint, device)[0]
    dataset.prepare(progress=progress, workers=os.cpu_count() or 1)
    was_training = model.training
    model.eval()
    try:
        table = _encode(model, dataset, split, int(batch_size))
    finally:
        model.train(was_training)
    if cache:
        write_csv(table, path)
    return table
