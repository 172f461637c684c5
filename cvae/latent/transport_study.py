"""The transport study of a cohort: source subjects' motion codes applied to target subjects' ED images.

Each source's ``mu`` (its ED -> ES motion) decodes a deformation of each target's ED image; the target's ED labels
warped by it (nearest) are a simulated ES whose volumes and ejection fractions :func:`cvae.latent.warped_label_measures`
measures. Summarised per (source group -> target group) it gives the 5 x 5 table of the paper's transport claim (a
dilated heart's weak contraction carried to a normal heart lowers its LVEF). Used by
``benchmarks/latent_claims.py`` and by the app's Transport page, which reads the table cached on disk beside the
cohort's latent table.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.checkpoint import load_checkpoint, resolve_checkpoint
from cvae.data.dataset import PairDataset
from cvae.io.atomic import write_csv
from cvae.latent.cohort import cached_table_path, encode_cohort
from cvae.latent.measures import warped_label_measures
from cvae.latent.table import group_order, latent_dim_of, mu_columns, subject_index

__all__ = ["pick", "transport_pairs", "group_matrix", "target_lvef", "TRANSPORT_CLAIMS", "claim_lvefs", "fraction",
           "markdown_matrix", "cohort_transport", "cached_path"]

#: Bump when the columns or the computation of the transport table change, so that cached tables are rebuilt.
TRANSPORT_VERSION = "1"


def pick(table: pd.DataFrame, per_group: int) -> pd.DataFrame:
    """The first ``per_group`` labelled subjects of each group of a cohort table (by subject id), groups in ACDC
    order."""
    if int(per_group) < 1:
        raise ValueError(f"subjects per group must be >= 1, got {per_group}")
    labelled = table[np.isfinite(table["LVEF"])].sort_values("subject")
    parts = [labelled[labelled["group"] == g].head(int(per_group)) for g in group_order(labelled["group"])]
    return pd.concat(parts) if parts else labelled.head(0)


def transport_pairs(model, dataset: PairDataset, sources: pd.DataFrame, targets: pd.DataFrame,
                    chunk: int = 8) -> pd.DataFrame:
    """One row per (source, target) pair, each target's own code included (``source == target``, a calibration).

    ``sources`` and ``targets`` are rows of a cohort table (:func:`cvae.latent.encode_cohort`) whose subjects are in
    ``dataset``. Columns: ``source, source_group, target, target_group``, the simulated ES measures of
    :data:`cvae.latent.WARPED_MEASURES` (mL, %), ``negative_jacobian`` and ``target_LVEF`` (%, the target's real
    LVEF from its ES labels).
    """
    index = subject_index(dataset, targets)
    d = latent_dim_of(targets)
    rows = []
    for _, target in targets.iterrows():
        pair = dataset.pair(index[target["subject"]])
        codes = pd.concat([sources[sources["subject"] != target["subject"]], target.to_frame().T])
        measures = warped_label_measures(model, codes[mu_columns(d)].to_numpy(np.float32), pair.moving,
                                         pair.moving_label, pair.spacing, chunk)
        measures.insert(0, "source", codes["subject"].to_numpy())
        measures.insert(1, "source_group", codes["group"].to_numpy())
        measures.insert(2, "target", target["subject"])
        measures.insert(3, "target_group", target["group"])
        measures["target_LVEF"] = float(target["LVEF"])
        rows.append(measures)
    return pd.concat(rows, ignore_index=True)


def group_matrix(pairs: pd.DataFrame, values: pd.Series | str = "LVEF") -> pd.DataFrame:
    """Mean of ``values`` (a column name of ``pairs`` or a Series aligned with it) per source group (rows) and
    target group (columns), self pairs left out; groups in ACDC order."""
    column = pairs[values] if isinstance(values, str) else values
    frame = pairs.assign(value=column.astype(float))
    frame = frame[frame["source"] != frame["target"]]
    groups = group_order(pd.concat([pairs["source_group"], pairs["target_group"]]))
    matrix = frame.pivot_table(index="source_group", columns="target_group", values="value", aggfunc="mean")
    matrix = matrix.reindex(index=groups, columns=groups)
    matrix.index.name, matrix.columns.name = "source group", "target group"
    return matrix


def target_lvef(pairs: pd.DataFrame) -> pd.Series:
    """Mean real LVEF (%) of the targets of each target group (ACDC order): what each column would show if the
    transported motion were the target's own."""
    own = pairs.drop_duplicates("target")
    return own.groupby("target_group")["target_LVEF"].mean().reindex(group_order(own["target_group"]))


#: The paper's transport claims: (source group, target group, text, test of a simulated LVEF in %).
TRANSPORT_CLAIMS: tuple[tuple[str, str, str, Callable[[pd.Series], pd.Series]], ...] = (
    ("DCM", "NOR", "DCM -> NOR gives LVEF < 40 %", lambda lvef: lvef < 40),
    ("NOR", "NOR", "NOR -> NOR keeps LVEF > 50 %", lambda lvef: lvef > 50),
)


def claim_lvefs(pairs: pd.DataFrame) -> dict[str, tuple[pd.Series, Callable[[pd.Series], pd.Series]]]:
    """For each of :data:`TRANSPORT_CLAIMS`: the simulated LVEFs (%) of its pairs (self pairs left out) and its
    test."""
    other = pairs[pairs["source"] != pairs["target"]]
    return {text: (other[(other["source_group"] == source) & (other["target_group"] == target)]["LVEF"], test)
            for source, target, text, test in TRANSPORT_CLAIMS}


def fraction(values: pd.Series, test: Callable[[pd.Series], pd.Series]) -> str:
    """``"k / n (p %)"`` of the values passing ``test``; ``"n/a"`` without values."""
    values = values.dropna()
    if values.empty:
        return "n/a"
    k = int(test(values).sum())
    return f"{k} / {len(values)} ({100 * k / len(values):.0f} %)"


def markdown_matrix(frame: pd.DataFrame, fmt: str) -> list[str]:
    """A source x target DataFrame (:func:`group_matrix`) as Markdown table lines, values formatted by ``fmt``."""
    lines = ["| source \\ target | " + " | ".join(frame.columns) + " |", "|---" * (len(frame.columns) + 1) + "|"]
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join("" if pd.isna(v) else format(v, fmt) for v in row) + " |")
    return lines


def cohort_transport(checkpoint: str | os.PathLike, root: str | os.PathLike, split: str | None = "testing", *,
                     sources_per_group: int = 2, targets_per_group: int = 1, device: str = "auto", chunk: int = 8,
                     cache: bool = True) -> pd.DataFrame:
    """:func:`transport_pairs` of the first ``sources_per_group`` / ``targets_per_group`` labelled subjects of each
    group of a cohort, cached as CSV beside the cohort's latent table (same key: weights, cohort, split, grid)."""
    folder = resolve_checkpoint(checkpoint)
    path = cached_path(folder, root, split, sources_per_group, targets_per_group)
    if cache and path.is_file():
        return pd.read_csv(path, dtype={"source": str, "target": str})
    model, config = load_checkpoint(folder, device)
    table = encode_cohort(folder, root, split, device=model.device)
    sources, targets = pick(table, sources_per_group), pick(table, targets_per_group)
    if len(sources) < 2:
        raise ValueError(f"transport needs at least 2 subjects with labels in {root} ({split or 'all'} split)")
    dataset = PairDataset(root, split=split, size=model.config.image_size, spacing=config["spacing"])
    pairs = transport_pairs(model, dataset, sources, targets, chunk)
    if cache:
        write_csv(pairs, path)
    return pairs


def cached_path(checkpoint: str | os.PathLike, root: str | os.PathLike, split: str | None, sources_per_group: int,
                targets_per_group: int) -> Path:
    """Where :func:`cohort_transport` caches its table (the file may not exist yet)."""
    table = cached_table_path(resolve_checkpoint(checkpoint), root, split)
    return table.with_name(f"{table.stem}-transport{TRANSPORT_VERSION}-{int(sources_per_group)}x"
                           f"{int(targets_per_group)}.csv")
