"""The ``cvae`` command: ``cvae <command> [options]``; each command lives in its own module's ``main(argv)``."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

#: command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cvae.data.synthetic", "write a synthetic ACDC-like cohort in the ACDC layout"),
    "train": ("cvae.train", "train the CVAE (single process or torchrun)"),
    "register": ("cvae.register", "register two NIfTI images, write NIfTI outputs and metrics"),
    "evaluate": ("cvae.evaluate", "evaluate methods (cvae, demons, voxelmorph, identity) on a cohort"),
    "embed": ("cvae.latent", "encode a cohort to a table of latent codes and clinical measures"),
    "standardise": ("cvae.standardise", "re-centre and re-scale a checkpoint's latent space to a cohort's codes "
                    "(exact, lowers the KL)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cvae <command> [options]   (cvae <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def report_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark report shares: ``--data``, ``--checkpoint``, ``--split``, ``--device`` and
    ``--out`` (see :func:`print_report`)."""
    from .paths import data_root

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(data_root()), help="cohort folder (default: $CVAE_DATA or "
                        "data/synthetic-acdc)")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="checkpoint name or folder")
    parser.add_argument("--split", default="testing", help="cohort split (default testing)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--out", default=None, help="also write the Markdown to this file")
    return parser


def print_report(name: str, make_text: Callable[[], str], out: str | None = None) -> int:
    """Print the Markdown of ``make_text()`` (and write it to ``out`` when given) and return 0; a ``ValueError``
    becomes one line ``<name>: error: ...`` on stderr and return code 2. For the benchmark scripts."""
    try:
        text = make_text()
    except ValueError as exc:
        print(f"{name}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from . import __version__
        print(f"cvae-reg {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"cvae: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
