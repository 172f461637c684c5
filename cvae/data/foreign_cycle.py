"""The foreign phantom's whole cardiac cycle (``cvae synth --style foreign --cine``): a timing of its own.

Like the rest of the foreign phantom (:mod:`cvae.data.foreign`) this is written apart from the own generator's cycle
(:mod:`cvae.data.synthetic_cycle`) and shares only the file format of the exact truth (:mod:`cvae.data.cycle_truth`).

**Frames.** Frame ``t`` is the ED scene pulled back by the subject's own ES -> ED motion with every amount scaled by
a contraction phase ``alpha_t`` in [0, 1] (:func:`scaled_motion`: the radial gains of both ventricles, the base
descent and the twist; the shape of the motion, its infarct and its reach stay), rendered and acquired as the ES frame
is, with the inflow pattern of the blood blended from its ED to its ES state. ``alpha`` = 0 gives the identity (ED),
1 the ES frame itself, so the ED and ES frames of the cine are those of the frame files.

**Timing** (:func:`foreign_phase`, parameters drawn per subject by :func:`draw_timing`). Systole is a power sigmoid
``x^p / (x^p + (1 - x)^p)`` of the fraction ``x`` of systole elapsed (``p`` in [1.3, 2.2]: slow onset, fast
mid-systolic ejection, slow end). Diastole refills a share ``E`` (0.55-0.85) of the stroke volume by an exponential
early filling of time constant ``tau`` (0.06-0.18 of diastole), then the atrial contraction adds the rest from
``s_a`` (0.65-0.85 of diastole) on, with a smoothstep, so the last frame leads back into the next cycle's ED. The
heart rate (50-95 bpm) gives the frame interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from cvae.data.foreign_motion import Motion

__all__ = ["Timing", "draw_timing", "foreign_phase", "scaled_motion"]


@dataclass(frozen=True)
class Timing:
    """A subject's cycle timing (module docstring): systolic steepness ``p``, early-filling share ``E`` and time
    constant ``tau`` (fraction of diastole), start ``s_a`` of the atrial contraction (fraction of diastole), heart
    rate (beats per minute)."""

    steepness: float
    early_share: float
    tau: float
    atrial_start: float
    heart_rate: float


def draw_timing(rng: np.random.Generator) -> Timing:
    """One subject's :class:`Timing` from ``rng``."""
    return Timing(steepness=float(rng.uniform(1.3, 2.2)), early_share=float(rng.uniform(0.55, 0.85)),
                  tau=float(rng.uniform(0.06, 0.18)), atrial_start=float(rng.uniform(0.65, 0.85)),
                  heart_rate=float(rng.uniform(50.0, 95.0)))


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def foreign_phase(frame: int, nb_frame: int, es_frame: int, timing: Timing) -> float:
    """Contraction phase in [0, 1] of 1-based ``frame`` of ``nb_frame``: 0 at ED (frame 1), 1 at ``es_frame``."""
    if not 1 < es_frame < nb_frame or not 1 <= frame <= nb_frame:
        raise ValueError(f"need 1 < es_frame < nb_frame and 1 <= frame <= nb_frame, got frame {frame}, es_frame "
                         f"{es_frame}, nb_frame {nb_frame}")
    if frame <= es_frame:
        x, p = (frame - 1) / (es_frame - 1), timing.steepness
        return x ** p / (x ** p + (1.0 - x) ** p)
    s = (frame - es_frame) / (nb_frame + 1 - es_frame)  # diastole: 0 at ES, 1 at the next cycle's ED
    early = (1.0 - math.exp(-s / timing.tau)) / (1.0 - math.exp(-1.0 / timing.tau))
    atrial = _smoothstep((s - timing.atrial_start) / (1.0 - timing.atrial_start))
    return 1.0 - (timing.early_share * early + (1.0 - timing.early_share) * atrial)


def scaled_motion(motion: Motion, alpha: float) -> Motion:
    """``motion`` with its amounts (radial gains, base descent, twist) scaled by ``alpha`` in [0, 1]: the pull-back
    of the frame at contraction phase ``alpha``; ``alpha = 1`` returns ``motion`` itself."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return motion
    return replace(motion, lv_gain=alpha * motion.lv_gain, rv_gain=alpha * motion.rv_gain,
                   descent=alpha * motion.descent, twist=(alpha * motion.twist[0], alpha * motion.twist[1]))
