"""Cohort tables of latent codes: their columns, checks, and the helpers every latent-space study shares.

A cohort table (made by :func:`cvae.latent.cohort.encode_cohort` or ``cvae embed``) has one row per subject:
``subject, group, split, mu_1..mu_d, sigma_1..sigma_d`` and the clinical measures of
:data:`cvae.evaluation.clinical.MEASURE_UNITS`. Columns are 1-based, like the paper's latent dimensions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvae.data.dataset import PairDataset
from cvae.data.labels import GROUPS

__all__ = ["mu_columns", "sigma_columns", "latent_dim_of", "check_table", "subject_index", "group_order"]


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



def group_order(groups: np.ndarray | pd.Series | list[str]) -> list[str]:
    """The distinct groups present, ACDC groups first in :data:`GROUPS` order, any others sorted after them."""
    present = set(map(str, groups))
    return [g for g in GROUPS if g in present] + sorted(present - set(GROUPS))
