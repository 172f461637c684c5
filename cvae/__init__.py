"""cvae-reg: probabilistic diffeomorphic registration of 3-D cardiac MRI with a conditional VAE.

The public API::

    import cvae
    model = cvae.load_model("synthetic-acdc")          # shipped checkpoint, eval mode, device="auto"
    result = model.register(fixed, moving)             # (B, 1, 128, 128, 32) tensors in [0, 1]
    result.warped, result.displacement, result.jacobian

Layers: :func:`warp` (and :func:`warp_labels` for label maps), :func:`compose`, :func:`exponentiate`,
:func:`jacobian_determinant`; :func:`image_tensor` puts one volume in the ``(1, 1, X, Y, Z)`` layout they take.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint  # noqa: E402
from .fields import compose, exponentiate, image_tensor, jacobian_determinant, warp, warp_labels  # noqa: E402
from .model import CVAERegistration, ModelConfig, RegistrationResult  # noqa: E402

__all__ = ["__version__", "warp", "warp_labels", "image_tensor", "compose", "exponentiate", "jacobian_determinant",
           "CVAERegistration", "ModelConfig", "RegistrationResult", "load_model", "load_checkpoint", "save_checkpoint",
           "CheckpointError"]
