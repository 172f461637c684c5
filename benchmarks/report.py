"""The command line every benchmark report shares (``--data``, ``--checkpoint``, ``--split``, ``--device``, ``--out``)
and how it prints: Markdown on stdout, a one-line error and exit code 2 on bad input. Imported by the scripts of
this folder (it is on ``sys.path`` when they run)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cvae.paths import data_root


def report_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark report shares: ``--data``, ``--checkpoint``, ``--split``, ``--device`` and
    ``--out`` (see :func:`print_report`)."""
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
