"""The latent space of a trained model: encode a cohort, sample, walk, transport, uncertainty; ``cvae embed``.

Every operation decodes codes ``z (B, d)`` for a moving (ED) image with :meth:`CVAERegistration.decode`, in chunks of
``chunk`` codes so that memory stays bounded, without gradients. Images are ``(1, 1, X, Y, Z)`` tensors on the model's
grid (``(X, Y, Z)`` arrays are accepted too); fields are in voxels, as everywhere in the project, except where a
name says mm. Tensors are built on the model's device (load a checkpoint with ``device="auto"`` to use CUDA).

``encode_cohort`` turns a cohort into a table (one row per subject): ``subject, group, split, mu_1..mu_d,
sigma_1..sigma_d`` and the clinical measures of :data:`cvae.clinical.MEASURE_UNITS` (LVEDV, LVESV, LVEF, RVEF, LVM,
...) computed from the preprocessed ED (moving) and ES (fixed) labels, NaN when labels are missing. The table is
cached as CSV under ``cache_root()/latent/``, keyed by the weights, the cohort folder and its subjects, the split and
the preprocessing grid, so the app reads it instead of recomputing it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import MODEL_FILE, load_checkpoint, read_config, resolve_checkpoint
from .clinical import MEASURE_UNITS, clinical_measures
from .data.dataset import PairDataset
from .data.preprocess import DEFAULT_SPACING
from .fields import warp
from .metrics import negative_jacobian_fraction
from .model import CVAERegistration, ModelConfig, RegistrationResult
from .paths import cache_root, data_root
from .priors import CodePrior, seeded_generator

__all__ = ["encode_cohort", "latent_dim_of", "mu_columns", "sigma_columns", "check_table", "decode_codes",
           "prior_codes", "cohort_prior", "sample", "walk", "transport", "warped_label_measures",
           "simulated_es_measures", "uncertainty", "as_image", "subject_index", "write_csv", "cached_table_path",
           "main", "TABLE_VERSION", "WARPED_MEASURES"]

#: Bump when the columns or the computation of the cohort table change, so that cached tables are rebuilt.
TABLE_VERSION = "1"
#: Columns of :func:`warped_label_measures`.
WARPED_MEASURES: tuple[str, ...] = ("LVEDV", "LVESV", "LVEF", "RVEDV", "RVESV", "RVEF")


def mu_columns(latent_dim: int) -> list[str]:
    """``["mu_1", ..., "mu_d"]``: the code columns of a cohort table (1-based, like the paper's dimensions)."""
    return [f"mu_{i}" for i in range(1, latent_dim + 1)]


def sigma_columns(latent_dim: int) -> list[str]:
    """``["sigma_1", ..., "sigma_d"]``: posterior standard deviations ``exp(logvar / 2)``."""
    return [f"sigma_{i}" for i in range(1, latent_dim + 1)]


def latent_dim_of(table: pd.DataFrame) -> int:
    """Number of ``mu_i`` columns of a cohort table (they must run ``mu_1..mu_d`` without gaps)."""
    d = sum(1 for c in table.columns if str(c).startswith("mu_"))
    if d == 0 or any(c not in table.columns for c in mu_columns(d)):
        raise ValueError("table has no latent code columns mu_1..mu_d: make it with cvae.latent.encode_cohort "
                         "or `cvae embed`")
    return d


def check_table(table: pd.DataFrame, latent_dim: int | None = None) -> int:
    """Validate a cohort table (columns ``subject``, ``group``, ``mu_1..mu_d``); return ``d``.

    With ``latent_dim`` (the model's), a table of another latent size is a ``ValueError`` telling to re-encode.
    """
    missing = [c for c in ("subject", "group") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}: make it with cvae.latent.encode_cohort or `cvae embed`")
    d = latent_dim_of(table)
    if latent_dim is not None and d != latent_dim:
        raise ValueError(f"table has {d}-D codes but the model has a {latent_dim}-D latent space: re-encode the "
                         "cohort with this checkpoint (cvae embed)")
    return d


def subject_index(dataset: PairDataset, table: pd.DataFrame) -> dict[str, int]:
    """``{subject: index in dataset}`` for every subject of ``dataset``; ``ValueError`` if a subject of the cohort
    table ``table`` is not in ``dataset``."""
    index = {s: i for i, s in enumerate(dataset.subjects)}
    missing = sorted(set(table["subject"]) - set(index))
    if missing:
        raise ValueError(f"subjects {missing[:3]} are not in the cohort {dataset.root}: use a table of that cohort "
                         "(encode it first)")
    return index


def as_image(image: torch.Tensor | np.ndarray, model: CVAERegistration, name: str = "image") -> torch.Tensor:
    """``image`` as a float32 ``(1, 1, X, Y, Z)`` tensor on the model's device.

    Accepts ``(X, Y, Z)``, ``(1, X, Y, Z)`` or ``(1, 1, X, Y, Z)`` numpy arrays or tensors (a label map too).
    """
    t = image if isinstance(image, torch.Tensor) else torch.tensor(np.asarray(image))
    while t.dim() < 5:
        t = t.unsqueeze(0)
    if t.dim() != 5 or t.shape[:2] != (1, 1):
        raise ValueError(f"{name} must be one volume (X, Y, Z) or (1, 1, X, Y, Z), got shape {tuple(t.shape)}")
    if tuple(t.shape[2:]) != tuple(model.config.image_size):
        raise ValueError(f"{name} is {tuple(t.shape[2:])} voxels but the model expects "
                         f"{tuple(model.config.image_size)}: preprocess with cvae.data.preprocess first")
    return t.to(device=model.device, dtype=torch.float32)


def _codes(z: torch.Tensor | np.ndarray | Sequence[float], model: CVAERegistration) -> torch.Tensor:
    """``z`` as a float32 ``(B, d)`` tensor on the model's device (a single code ``(d,)`` gives ``B = 1``)."""
    t = z if isinstance(z, torch.Tensor) else torch.tensor(np.asarray(z, dtype=np.float32))
    if t.dim() == 1:
        t = t.unsqueeze(0)
    d = model.config.latent_dim
    if t.dim() != 2 or t.shape[1] != d or t.shape[0] == 0:
        raise ValueError(f"codes must have shape ({d},) or (B, {d}) with B >= 1 for this model, got {tuple(t.shape)}")
    return t.to(device=model.device, dtype=torch.float32)


def _check_chunk(chunk: int) -> int:
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
    codes, image, chunk = _codes(z, model), as_image(moving, model, "moving"), _check_chunk(chunk)
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
    the CPU, repeatable with ``seed``. See :class:`cvae.priors.CodePrior` and :func:`cohort_prior`."""
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
    code = _codes(z0, model)
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
def warped_label_measures(model: CVAERegistration, z: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray,
                          moving_label: torch.Tensor | np.ndarray, spacing: Sequence[float],
                          chunk: int = 8) -> pd.DataFrame:
    """Volumes and ejection fractions when codes ``z (B, d)`` deform an ED image and its labels.

    The ED labels ``moving_label (X, Y, Z)`` are warped by each decoded transform into a simulated ES
    (:func:`simulated_es_measures`). Returns one row per code: LVEDV, LVESV, RVEDV, RVESV (mL), LVEF, RVEF (%) and
    ``negative_jacobian`` (fraction of voxels with a Jacobian determinant <= 0). Used for transport (source codes)
    and prior samples alike.
    """
    codes, label = _codes(z, model), as_image(moving_label, model, "moving_label")
    parts = []
    for start in range(0, codes.shape[0], _check_chunk(chunk)):
        result = decode_codes(model, codes[start:start + chunk], moving, chunk)
        parts.append(simulated_es_measures(label, result.displacement, spacing, result.jacobian))
    return pd.concat(parts, ignore_index=True)


def simulated_es_measures(ed_label: torch.Tensor, displacement: torch.Tensor, spacing: Sequence[float],
                          jacobian: torch.Tensor | None = None) -> pd.DataFrame:
    """The ED labels ``(1, 1, X, Y, Z)`` warped (nearest) by each displacement ``(B, 3, X, Y, Z)`` (voxels) into a
    simulated ES, measured against the ED labels with :func:`cvae.clinical.clinical_measures` (``spacing`` in mm):
    one row per displacement with the columns of :data:`WARPED_MEASURES`, and ``negative_jacobian`` when the
    Jacobian determinants ``(B, X, Y, Z)`` are given."""
    ed = ed_label[0, 0].round().to(torch.uint8).cpu().numpy()
    es_labels = warp(ed_label.to(displacement), displacement, mode="nearest").round().to(torch.uint8).cpu().numpy()
    rows = []
    for b in range(es_labels.shape[0]):
        measures = clinical_measures(ed, es_labels[b, 0], spacing)
        row = {key: measures[key] for key in WARPED_MEASURES}
        if jacobian is not None:
            row["negative_jacobian"] = negative_jacobian_fraction(jacobian[b])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*WARPED_MEASURES, *(["negative_jacobian"] if jacobian is not None else [])])


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
    f, m, chunk = as_image(fixed, model, "fixed"), as_image(moving, model, "moving"), _check_chunk(chunk)
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


# ---------------------------------------------------------------------------------------------------------------
# cohort table


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


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp",
                                         delete=False, newline="")
    try:
        with handle:
            table.to_csv(handle, index=False)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


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
        :data:`cvae.clinical.MEASURE_UNITS` (mL, %, g, m^2, mm; NaN without labels or height/weight).
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
    dataset.prepare(progress=progress)
    was_training = model.training
    model.eval()
    try:
        table = _encode(model, dataset, split, int(batch_size))
    finally:
        model.train(was_training)
    if cache:
        write_csv(table, path)
    return table


def main(argv: list[str] | None = None) -> int:
    """``cvae embed``: encode a cohort to a CSV table of latent codes and clinical measures. Exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="cvae embed", description="Encode a cohort's (ES, ED) pairs to latent "
                                     "codes (mu, sigma) with clinical measures from the labels; writes a CSV.")
    parser.add_argument("--data", default=None, help="ACDC-style cohort folder (default: $CVAE_DATA or "
                        "data/synthetic-acdc)")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="checkpoint name or folder "
                        "(default synthetic-acdc)")
    parser.add_argument("--out", required=True, help="output CSV file")
    parser.add_argument("--split", default="testing", choices=["training", "testing", "all"],
                        help="which subjects (default testing)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if a cached table exists")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    try:
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory: give a file name such as codes.csv")
        table = encode_cohort(args.checkpoint, args.data, None if args.split == "all" else args.split,
                              device=args.device, batch_size=args.batch_size, cache=not args.no_cache,
                              progress=True)
        write_csv(table, out)
    except (ValueError, OSError) as exc:
        print(f"cvae embed: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {len(table)} subjects x {latent_dim_of(table)}-D codes to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
