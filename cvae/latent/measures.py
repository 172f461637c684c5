"""Volumes and ejection fractions of a simulated ES: the ED labels carried along by a deformation.

Used for transport (a source subject's code decoded for a target's ED image), for prior samples, and with the
synthetic cohort's exact ED -> ES transform (``benchmarks/lvef_ceiling.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cvae.evaluation.clinical import clinical_measures
from cvae.evaluation.metrics import negative_jacobian_fraction
from cvae.fields import warp_labels
from cvae.latent.codes import as_image, check_chunk, code_tensor, decode_codes
from cvae.model import CVAERegistration

__all__ = ["WARPED_MEASURES", "warped_label_measures", "simulated_es_measures"]

#: Columns of :func:`warped_label_measures`.
WARPED_MEASURES: tuple[str, ...] = ("LVEDV", "LVESV", "LVEF", "RVEDV", "RVESV", "RVEF")


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
    codes, label = code_tensor(z, model), as_image(moving_label, model, "moving_label")
    parts = []
    for start in range(0, codes.shape[0], check_chunk(chunk)):
        result = decode_codes(model, codes[start:start + chunk], moving, chunk)
        parts.append(simulated_es_measures(label, result.displacement, spacing, result.jacobian))
    return pd.concat(parts, ignore_index=True)


def simulated_es_measures(ed_label: torch.Tensor, displacement: torch.Tensor, spacing: Sequence[float],
                          jacobian: torch.Tensor | None = None) -> pd.DataFrame:
    """The ED labels ``(1, 1, X, Y, Z)`` warped (nearest) by each displacement ``(B, 3, X, Y, Z)`` (voxels) into a
    simulated ES, measured against the ED labels with :func:`cvae.evaluation.clinical.clinical_measures` (``spacing``
    in mm): one row per displacement with the columns of :data:`WARPED_MEASURES`, and ``negative_jacobian`` when the
    Jacobian determinants ``(B, X, Y, Z)`` are given."""
    ed = ed_label[0, 0].round().to(torch.uint8).cpu().numpy()
    es_labels = warp_labels(ed_label, displacement).cpu().numpy()
    rows = []
    for b in range(es_labels.shape[0]):
        measures = clinical_measures(ed, es_labels[b, 0], spacing)
        row = {key: measures[key] for key in WARPED_MEASURES}
        if jacobian is not None:
            row["negative_jacobian"] = negative_jacobian_fraction(jacobian[b])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*WARPED_MEASURES, *(["negative_jacobian"] if jacobian is not None else [])])
