"""The ``cvae`` command: ``cvae <command> [options]``; each command lives in its own module's ``main(argv)``.

Also what every command shares: :func:`run_command`. Every command ends with one line and a conventional exit code:

==========  ===================================================================================================
exit code   meaning
==========  ===================================================================================================
0           done; the line says what was written
2           bad input (a missing or corrupt file, a bad option, an unwritable output): ``<prog>: error: ...``
130         interrupted by Ctrl-C (SIGINT)
143         stopped by SIGTERM (a scheduler, ``kill``); a training run saves ``last/`` first
==========  ===================================================================================================

Outputs are written atomically (:mod:`cvae.io.atomic`), so an interrupted command leaves no half-written file.
Nothing heavy is imported here: ``cvae --help`` answers at once.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable

#: command -> (its module in cvae.commands, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cvae.commands.synth", "write a synthetic ACDC-like cohort (or the held-out foreign one) in the ACDC "
              "layout"),
    "train": ("cvae.commands.train", "train the CVAE (single process or torchrun)"),
    "adapt": ("cvae.commands.adapt", "fine-tune a trained CVAE on your own cohort, no segmentations needed"),
    "track": ("cvae.commands.track", "track a cine: the ED frame registered to every frame, labels carried, volume "
              "curves"),
    "train-motion": ("cvae.commands.train_motion", "fit the motion model (a temporal network over the codes of "
                     "tracked cines)"),
    "register": ("cvae.commands.register", "register two NIfTI images, write NIfTI outputs and metrics"),
    "evaluate": ("cvae.commands.evaluate", "evaluate registration methods on a cohort (the CVAE and its baselines)"),
    "embed": ("cvae.commands.embed", "encode a cohort to a table of latent codes and clinical measures"),
    "standardise": ("cvae.commands.standardise", "re-centre and re-scale a checkpoint's latent space to a cohort's "
                    "codes (exact, lowers the KL)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cvae <command> [options]   (cvae <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


class Interrupted(BaseException):
    """A command stopped by the signal ``signum`` (SIGINT or SIGTERM); ``message`` says what it kept, if anything.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` does not swallow it, while every
    ``finally`` and atomic writer on the way out still cleans up.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum, self.message = int(signum), message


def _terminate(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def run_command(prog: str, body: Callable[[], str]) -> int:
    """Run a command's ``body`` and print the line it returns (exit code 0), or end with one line on stderr and the
    exit code of the table above: bad input (``ValueError``, ``OSError``: a missing file, a corrupt checkpoint...)
    gives ``<prog>: error: <first line of the message>`` and 2; Ctrl-C 130; SIGTERM 143. Never a traceback."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        line = body()
    except (ValueError, OSError) as exc:
        text = str(exc).strip()
        print(f"{prog}: error: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        how = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        message = getattr(exc, "message", "") or "nothing half-written was kept"
        print(f"{prog}: {how}: {message}", file=sys.stderr)
        return 128 + signum
    finally:
        if in_main:  # a handler installed outside Python reads as None: the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    print(line)
    return 0


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Run ``cvae <command> [options]`` (``argv``, default the command line). With ``own_process`` (the console
    script) the command may first set up the process for itself: its module's ``own_process()``, when it has one."""
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
    if own_process and hasattr(module, "own_process"):
        module.own_process()
    return int(module.main(args[1:]) or 0)


def run() -> None:
    """The ``cvae`` console script: :func:`main`, then an immediate exit. Once torch is loaded, the interpreter's
    normal shutdown spends about a second tearing it down, and there is nothing left to clean up: every command has
    finished its work, its outputs are complete (written atomically, flushed to disk) and its worker processes are
    joined. Only the console script does this; ``main`` returns as any function does."""
    code = main(own_process=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
