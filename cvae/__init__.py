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

import importlib

__version__ = "0.1.0"

#: Public name -> the module that holds it. Imported on first use (PEP 562), so that ``import cvae.cli`` and
#: ``cvae --help`` do not load torch.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"], "checkpoint"),
    **dict.fromkeys(["compose", "exponentiate", "image_tensor", "jacobian_determinant", "warp", "warp_labels"],
                    "fields"),
    **dict.fromkeys(["CVAERegistration", "RegistrationResult"], "model"),
    "ModelConfig": "model_config",
}

__all__ = ["__version__", "warp", "warp_labels", "image_tensor", "compose", "exponentiate", "jacobian_determinant",
           "CVAERegistration", "ModelConfig", "RegistrationResult", "load_model", "load_checkpoint", "save_checkpoint",
           "CheckpointError"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cvae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
