"""Configuration dataclasses and their command-line form.

:func:`option` declares a config field with its default and its help line (meaning and unit; argparse adds the
default), :func:`at_least` checks a field's range (the error names its option), :func:`add_config_arguments` makes one
``--flag`` per field of a config class (a field holding another config class contributes that class's fields as flags
of their own), and :func:`config_from_arguments` builds the config back from the parsed values. Used by
:class:`cvae.model.ModelConfig`, the training configs and their commands.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import field
from typing import Any

__all__ = ["option", "at_least", "add_config_arguments", "config_from_arguments"]


def option(default: Any, help: str) -> Any:  # noqa: A002 - argparse's name for it
    """A dataclass field with its default and its command-line help (unit included)."""
    if dataclasses.is_dataclass(default):  # a nested config: each instance gets its own copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _nested(f: dataclasses.Field) -> type | None:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if dataclasses.is_dataclass(default) else None


def at_least(config: object, minimum: float, *names: str) -> None:
    """``ValueError`` naming the command-line option of the first field of ``names`` below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not value >= minimum:  # also catches NaN
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum:g}, got {value}")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--flag`` per field of a config dataclass, typed from its default, with the field's help.

    A ``tuple[int, ...]`` takes any count of values, a fixed-length tuple that many; booleans get ``--no-flag``; a
    field holding another config dataclass contributes that class's fields as flags of their own.
    """
    for f in dataclasses.fields(config_class):
        nested = _nested(f)
        if nested is not None:
            add_config_arguments(parser, nested)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, tuple):
            nargs = "+" if "..." in str(f.type) else len(default)
            metavar = "N" if nargs == "+" else ("X", "Y", "Z") if nargs == 3 else None
            parser.add_argument(flag, nargs=nargs, type=type(default[0]), default=default, help=text, metavar=metavar)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default, help=text)


def config_from_arguments(config_class: type, values: dict[str, Any]) -> Any:
    """The config dataclass from parsed ``values`` (lists back to tuples, nested configs rebuilt)."""
    kwargs = {}
    for f in dataclasses.fields(config_class):
        nested = _nested(f)
        if nested is not None:
            kwargs[f.name] = config_from_arguments(nested, values)
        elif f.name in values:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**kwargs)
