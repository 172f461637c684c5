"""Checkpoints: ``model.safetensors`` + ``config.json`` in one folder; never pickle.

``config.json`` holds ``format``, ``version``, ``model`` (:class:`~cvae.model.ModelConfig`), ``spacing`` (mm of the
preprocessed grid), free-form ``training`` and ``metrics`` sections and, for a standardised model, a
``latent_standardisation`` section (:mod:`cvae.latent.standardise`). A training folder may also hold
``optimizer.safetensors`` + ``trainer.json`` for ``--resume``. Folders are written atomically: into a temporary
sibling, then swapped in by renames, so a killed process leaves either the old or the new checkpoint.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .data.grid import DEFAULT_SPACING
from .device import resolve_device
from .io.atomic import atomic_folder
from .model import CVAERegistration, ModelConfig

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "load_weights",
           "load_training_state", "training_step", "resolve_checkpoint", "read_config", "checkpoint_dirs",
           "SHIPPED_CHECKPOINTS", "FORMAT"]

FORMAT = "cvae-reg checkpoint"
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OPTIMIZER_FILE, TRAINER_FILE = "optimizer.safetensors", "trainer.json"

#: The repository's shipped checkpoints.
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


def checkpoint_dirs() -> list[Path]:
    """Where named checkpoints are looked up, in order: ``$CVAE_CHECKPOINTS`` (read at each call, when set), then
    the repository's ``checkpoints/``."""
    extra = os.environ.get("CVAE_CHECKPOINTS")
    return ([Path(extra).expanduser()] if extra else []) + [SHIPPED_CHECKPOINTS]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """Folder of a checkpoint given by name (``"synthetic-acdc"``) or by path (folder or its ``config.json``)."""
    path = Path(name_or_path).expanduser()
    if path.name in (CONFIG_FILE, MODEL_FILE) and path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    if len(path.parts) == 1:
        for root in checkpoint_dirs():
            if (root / path).is_dir():
                return root / path
    known = sorted(p.name for root in checkpoint_dirs() if root.is_dir() for p in root.iterdir()
                   if (p / CONFIG_FILE).is_file())
    raise CheckpointError(f"checkpoint {str(name_or_path)!r} not found: give a folder holding {CONFIG_FILE} and "
                          f"{MODEL_FILE}, or one of the shipped names {known}")


def read_config(folder: str | os.PathLike, fmt: str = FORMAT) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder, checked for its ``format`` (``fmt``) and a model section."""
    path = resolve_checkpoint(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {MODEL_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.__class__.__name__}): the file is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != fmt or "model" not in config:
        raise CheckpointError(f"{path} is not a {fmt!r} config (needs format={fmt!r} and 'model')")
    return config


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer ``state_dict`` into tensors (for safetensors) and a JSON-able rest."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        meta["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
                meta["state"][str(pid)][key] = "tensor"
            else:
                meta["state"][str(pid)][key] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {int(pid): {key: tensors[f"{pid}.{key}"] if value == "tensor" else value for key, value in entries.items()}
             for pid, entries in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: str | os.PathLike, model: torch.nn.Module, *,
                    spacing: tuple[float, float, float] = DEFAULT_SPACING,
                    training: dict | None = None, metrics: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, trainer: dict | None = None,
                    extra_files: dict[str, str] | None = None, sections: dict[str, Any] | None = None,
                    fmt: str = FORMAT) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (and the optimizer and trainer state, and ``extra_files``
    name -> text such as a ``README.md`` model card, when given) atomically; ``sections`` are further top-level
    entries of ``config.json`` (such as :mod:`cvae.latent.standardise`'s ``latent_standardisation``).

    ``model`` has a ``config`` with ``to_dict()``; ``fmt`` names the kind of checkpoint (another model, such as the
    VoxelMorph baseline, uses its own).
    """
    folder = Path(folder)
    config = {"format": fmt, "version": __version__, "model": model.config.to_dict(),
              "spacing": [float(s) for s in spacing], "training": training or {}, "metrics": metrics or {},
              **(sections or {})}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            (tmp / TRAINER_FILE).write_text(json.dumps({"optimizer": meta, **(trainer or {})}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    return atomic_folder(folder, write)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None


def load_weights(model: torch.nn.Module, folder: str | os.PathLike) -> torch.nn.Module:
    """Load ``<folder>/model.safetensors`` into ``model`` after checking every key and shape (one-line errors)."""
    folder = resolve_checkpoint(folder)
    weights = _load_tensors(folder / MODEL_FILE)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{folder / MODEL_FILE} does not match its config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{folder / MODEL_FILE}: {key} has shape {tuple(weights[key].shape)}, the config "
                                  f"implies {tuple(tensor.shape)}")
    model.load_state_dict(weights)
    return model


def build_checkpoint(name_or_path: str | os.PathLike, build: Callable[[dict], torch.nn.Module], fmt: str = FORMAT,
                     device: str | torch.device = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model in eval mode, config)``: ``build(config["model"])`` makes the model, then its weights are loaded."""
    folder = resolve_checkpoint(name_or_path)
    config = read_config(folder, fmt)
    try:
        model = build(config["model"])
    except (TypeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"{folder / CONFIG_FILE}: model section does not match this code ({message})") from None
    load_weights(model, folder)
    return model.to(resolve_device(device)).eval(), config


def load_checkpoint(name_or_path: str | os.PathLike, device: str | torch.device = "auto"
                    ) -> tuple[CVAERegistration, dict[str, Any]]:
    """Build the CVAE of a checkpoint and load its weights; returns ``(model in eval mode, config)``."""
    return build_checkpoint(name_or_path, lambda values: CVAERegistration(ModelConfig.from_dict(values)),
                            FORMAT, device)


def load_model(name_or_path: str | os.PathLike = "synthetic-acdc", device: str | torch.device = "auto"
               ) -> CVAERegistration:
    """The model of a shipped checkpoint name or a checkpoint folder, ready for :meth:`register` (eval mode)."""
    return load_checkpoint(name_or_path, device)[0]


def load_training_state(folder: str | os.PathLike) -> tuple[dict, dict] | None:
    """``(optimizer state_dict, trainer dict)`` of a training checkpoint folder, or ``None`` if it has none."""
    folder = Path(folder)
    if not (folder / TRAINER_FILE).is_file():
        return None
    try:
        trainer = json.loads((folder / TRAINER_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{folder / TRAINER_FILE} is corrupt") from None
    optimizer = _unflatten_optimizer(_load_tensors(folder / OPTIMIZER_FILE), trainer.pop("optimizer"))
    return optimizer, trainer


def training_step(folder: str | os.PathLike, fmt: str = FORMAT) -> int | None:
    """The optimiser step a training checkpoint folder (``<out>/last``) of format ``fmt`` holds, or ``None`` when it
    is incomplete or does not load (config, weights, optimiser and trainer state are all read)."""
    try:
        read_config(folder, fmt)
        _load_tensors(Path(folder) / MODEL_FILE)
        state = load_training_state(folder)
        return None if state is None else int(state[1]["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
