"""The ``cvae`` command: ``cvae <command> [options]``; each command lives in its own module's ``main(argv)``.

Also what every command shares: :func:`run_command` (one-line errors, exit codes 0 / 2). Nothing heavy is imported
here: ``cvae --help`` answers at once.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

#: command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cvae.data.synthetic", "write a synthetic ACDC-like cohort in the ACDC layout"),
    "train": ("cvae.training.train", "train the CVAE (single process or torchrun)"),
    "register": ("cvae.io.register", "register two NIfTI images, write NIfTI outputs and metrics"),
    "evaluate": ("cvae.evaluation.evaluate", "evaluate registration methods on a cohort (the CVAE and its baselines)"),
    "embed": ("cvae.latent.cohort", "encode a cohort to a table of latent codes and clinical measures"),
    "standardise": ("cvae.latent.standardise", "re-centre and re-scale a checkpoint's latent space to a cohort's "
                    "codes (exact, lowers the KL)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cvae <command> [options]   (cvae <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(prog: str, body: Callable[[], str]) -> int:
    """Run a command's ``body`` and print the line it returns: exit code 0. Bad input (``ValueError``, ``OSError``:
    a missing file, a corrupt checkpoint...) is one line ``<prog>: error: <first line of the message>`` on stderr
    and exit code 2, never a traceback."""
    try:
        line = body()
    except (ValueError, OSError) as exc:
        text = str(exc).strip()
        print(f"{prog}: error: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2
    print(line)
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
