"""cvae-reg: probabilistic diffeomorphic registration of 3-D cardiac MRI with a conditional VAE.

The public API::

    import cvae
    model = cvae.load_model("synthetic-acdc")          # shipped checkpoint, eval mode, device="auto"
    result = model.register(fixed, moving)             # (B, 1, 128, 128, 32) tensors in [0, 1]
    result.warped, result.displacement, result.jacobian

Layers: :func:`warp`, :func:`compose`, :func:`exponentiate`, :func:`jacobian_determinant`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .fields import compose, exponentiate, jacobian_determinant, warp  # noqa: E402
from .model import CVAERegistration, ModelConfig, RegistrationResult  # noqa: E402
from .checkpoint import load_model, load_checkpoint, save_checkpoint, CheckpointError  # noqa: E402

__all__ = ["__version__", "warp", "compose", "exponentiate", "jacobian_determinant", "CVAERegistration",
           "ModelConfig", "RegistrationResult", "load_model", "load_checkpoint", "save_checkpoint",
           "CheckpointError"]
