"""What the pages show, computed from a model and preprocessed arrays: registrations, decoded codes, transports.

Plain functions without Streamlit (tests call them directly); :mod:`cvae.app.cached` wraps them in ``st.cache_data``
keyed by names and paths. Volumes are ``(X, Y, Z)`` numpy arrays on the model's grid, fields ``(3, X, Y, Z)`` in
voxels, spacings in mm.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cvae.data.labels import STRUCTURES
from cvae.data.preprocess import PreprocessedPair
from cvae.evaluation.clinical import clinical_measures
from cvae.evaluation.metrics import mean_displacement_mm, mean_scores, negative_jacobian_fraction, structure_scores
from cvae.fields import warp_labels
from cvae.figures.volumes import RegistrationVolumes
from cvae.latent.codes import as_image, decode_codes
from cvae.latent.measures import WARPED_MEASURES
from cvae.latent.refine import register_refined
from cvae.optimize import OptimizeSettings, register_optimized
from cvae.model import CVAERegistration

__all__ = ["Registration", "structure_table", "register_pair", "Decoded", "decode_pair", "Transported",
           "transport_pair"]


@dataclass
class Registration:
    """A registration on the model grid: what the viewer shows, the metrics table and a summary.

    ``metrics`` has one row per structure with Dice (%) and HD95 (mm) before and after registration, and a ``mean``
    row (empty without both segmentations); ``summary`` holds ``folding %``, ``mean |u| mm``, ``seconds`` (and, for a
    refined code ``refine steps``, for an optimised velocity ``optimize steps``, and then ``LCC before`` and ``LCC
    after``); ``mu``/``sigma`` ``(d,)`` are the posterior of the code (``mu`` the refined code after a refinement; after
    a velocity optimisation still the encoder's code, which decodes to the one-pass registration, not to the
    optimised one).
    """

    volumes: RegistrationVolumes
    metrics: pd.DataFrame
    summary: dict[str, float]
    mu: np.ndarray
    sigma: np.ndarray


def _warp_label(label: np.ndarray | None, model: CVAERegistration, displacement: torch.Tensor) -> np.ndarray | None:
    """A label map ``(X, Y, Z)`` warped by nearest neighbour by ``(1, 3, X, Y, Z)`` voxels: uint8, or ``None``."""
    if label is None:
        return None
    return warp_labels(as_image(label, model, "label"), displacement)[0, 0].cpu().numpy()


def structure_table(moving_label: np.ndarray, warped_label: np.ndarray, fixed_label: np.ndarray,
                    spacing: Sequence[float]) -> pd.DataFrame:
    """Dice (%) and HD95 (mm) of the five structures before (``moving_label``) and after (``warped_label``)
    registration against ``fixed_label``, one row per structure and a last row ``mean``."""
    before = structure_scores(moving_label, fixed_label, spacing)
    after = structure_scores(warped_label, fixed_label, spacing)

    def row(name: str, b: dict[str, float], a: dict[str, float]) -> dict[str, object]:
        return {"structure": name, "Dice before (%)": 100 * b["dice"], "Dice after (%)": 100 * a["dice"],
                "HD95 before (mm)": b["hd95"], "HD95 after (mm)": a["hd95"]}

    rows = [row(name, before[name], after[name]) for name in STRUCTURES]
    return pd.DataFrame([*rows, row("mean", mean_scores(before), mean_scores(after))])


def register_pair(model: CVAERegistration, pair: PreprocessedPair, refine_steps: int = 0,
                  optimize_steps: int = 0) -> Registration:
    """Register ``pair.moving`` (ED) to ``pair.fixed`` (ES) in one forward pass, or with the code refined by
    ``refine_steps`` gradient steps first (:func:`cvae.latent.refine.register_refined`), or with the velocity optimised
    on the pair by at most ``optimize_steps`` steps afterwards (:func:`cvae.optimize.register_optimized`; not both),
    and measure the result."""
    if refine_steps and optimize_steps:
        raise ValueError("refine the code or optimise the velocity, not both")
    fixed, moving = as_image(pair.fixed, model, "fixed"), as_image(pair.moving, model, "moving")
    start = time.perf_counter()
    refinement = None
    if refine_steps:
        result, refinement = register_refined(model, fixed, moving, refine_steps, inverse=False)
    elif optimize_steps:
        result, refinement = register_optimized(model, fixed, moving, OptimizeSettings(coarse_steps=optimize_steps),
                                                inverse=False)
    else:
        with torch.no_grad():
            result = model.register(fixed, moving, inverse=False)
    seconds = time.perf_counter() - start
    spacing = tuple(float(s) for s in pair.spacing)
    warped_label = _warp_label(pair.moving_label, model, result.displacement)
    metrics = pd.DataFrame()
    if pair.fixed_label is not None and pair.moving_label is not None:
        metrics = structure_table(pair.moving_label, warped_label, pair.fixed_label, spacing)
    volumes = RegistrationVolumes(
        fixed=pair.fixed, moving=pair.moving, warped=result.warped[0, 0].cpu().numpy(),
        displacement=result.displacement[0].cpu().numpy(), jacobian=result.jacobian[0].cpu().numpy(),
        spacing=spacing, fixed_label=pair.fixed_label, moving_label=pair.moving_label, warped_label=warped_label)
    summary = {"folding %": 100 * negative_jacobian_fraction(result.jacobian),
               "mean |u| mm": mean_displacement_mm(result.displacement, spacing), "seconds": seconds}
    if refinement is not None:
        steps = {"refine steps": float(refine_steps)} if refine_steps else {
            "optimize steps": float(sum(refinement.steps))}
        summary.update({**steps, "LCC before": float(refinement.lcc_before[0]),
                        "LCC after": float(refinement.lcc_after[0])})
    with torch.no_grad():
        logvar = result.logvar if result.logvar is not None else model.encode(fixed, moving)[1]
    return Registration(volumes, metrics, summary, result.mu[0].cpu().numpy(),
                        torch.exp(0.5 * logvar[0]).cpu().numpy())


@dataclass
class Decoded:
    """The deformation decoded from one code for one ED image: ``warped`` and ``jacobian`` ``(X, Y, Z)``,
    ``displacement`` ``(3, X, Y, Z)`` voxels, ``warped_label`` (the ED labels carried along, a simulated ES) or
    ``None``, and the LV/RV volumes (mL) and ejection fractions (%) of ED -> simulated ES."""

    warped: np.ndarray
    displacement: np.ndarray
    jacobian: np.ndarray
    warped_label: np.ndarray | None
    measures: dict[str, float]
    seconds: float


@torch.inference_mode()
def decode_pair(model: CVAERegistration, z: Sequence[float], moving: np.ndarray, moving_label: np.ndarray | None,
                spacing: Sequence[float]) -> Decoded:
    """Decode ``z (d,)`` for the ED image ``moving (X, Y, Z)``; carry its labels along to a simulated ES."""
    start = time.perf_counter()
    result = decode_codes(model, np.asarray(z, dtype=np.float32), moving)
    seconds = time.perf_counter() - start
    warped_label = _warp_label(moving_label, model, result.displacement)
    measures = {} if warped_label is None else {
        k: v for k, v in clinical_measures(moving_label, warped_label, spacing).items() if k in WARPED_MEASURES}
    return Decoded(result.warped[0, 0].cpu().numpy(), result.displacement[0].cpu().numpy(),
                   result.jacobian[0].cpu().numpy(), warped_label, measures, seconds)


@dataclass
class Transported:
    """A source subject's motion applied to a target's ED image, with the images and labels to show and a
    comparison table (LV/RV volumes in mL and EF in % of the source, the target and the simulated target ES)."""

    source: PreprocessedPair
    target: PreprocessedPair
    simulated: Decoded
    table: pd.DataFrame


def transport_pair(model: CVAERegistration, source: PreprocessedPair, target: PreprocessedPair,
                   source_code: Sequence[float]) -> Transported:
    """Decode the source's code ``(d,)`` (its ED -> ES motion, e.g. its ``mu``) for the target's ED image: a
    simulated target ES, measured beside the source's and the target's real ED -> ES."""
    simulated = decode_pair(model, source_code, target.moving, target.moving_label, target.spacing)
    rows = []
    for name, pair, measures in ((f"source {source.subject} (real)", source, None),
                                 (f"target {target.subject} (real)", target, None),
                                 (f"target {target.subject}, simulated ES", target, simulated.measures)):
        if measures is None:
            measures = clinical_measures(pair.moving_label, pair.fixed_label, pair.spacing) \
                if pair.moving_label is not None else {}
        rows.append({"": name, **{k: measures.get(k, float("nan")) for k in ("LVEDV", "LVESV", "LVEF", "RVEF")}})
    return Transported(source, target, simulated, pd.DataFrame(rows).set_index(""))
