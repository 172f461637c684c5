"""cvae.cli: the `cvae` command's dispatch, every command's options documented, one-line errors."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import cvae.cli
from cvae.cli import COMMANDS, Interrupted, run_command
from cvae.io.atomic import atomic_write


class ParserCaught(Exception):
    """Raised instead of parsing: carries the parser the command built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def built_parser(monkeypatch: pytest.MonkeyPatch, run) -> argparse.ArgumentParser:
    """The ``ArgumentParser`` that ``run()`` builds, caught when it parses its arguments."""

    def catch(self, args=None, namespace=None):
        raise ParserCaught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(ParserCaught) as caught:
        run()
    return caught.value.parser


SCRIPTS = {**{f"cvae {name}": (lambda name=name: cvae.cli.main([name, "--help"])) for name in COMMANDS},
           "python -m cvae.methods.train_voxelmorph":
               lambda: importlib.import_module("cvae.methods.train_voxelmorph").main(["--help"])}


@pytest.mark.parametrize("command", list(SCRIPTS))
def test_every_option_of_every_command_has_a_help_line(command, monkeypatch):
    parser = built_parser(monkeypatch, SCRIPTS[command])
    assert parser.prog == command  # the parser is the command's own (usage lines name it)
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert options
    undocumented = [a.option_strings or a.dest for a in options
                    if not isinstance(a.help, str) or not a.help.strip() or a.help == argparse.SUPPRESS]
    assert undocumented == [], f"{command}: options without help: {undocumented}"
    text = parser.format_help()  # renders (a stray '%' in a help line would break argparse's formatting)
    for action in options:
        assert any(flag in text for flag in action.option_strings), action.option_strings


def test_cvae_without_a_known_command_prints_the_commands(capsys):
    assert cvae.cli.main([]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert cvae.cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_only_the_console_script_lets_a_command_set_up_its_own_process(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("cvae.commands.register.own_process", lambda: calls.append("set up"))
    for own_process in (False, True):
        with pytest.raises(SystemExit):
            cvae.cli.main(["register", "--help"], own_process=own_process)
    assert calls == ["set up"]  # a test or the app calling main keeps its process as it is


def test_run_command_prints_the_line_or_one_line_of_error(capsys):
    assert run_command("cvae x", lambda: "done: 3 files") == 0
    assert capsys.readouterr().out == "done: 3 files\n"

    def bad_value() -> str:
        raise ValueError("the cohort is empty\nsecond line with details")

    def missing() -> str:
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x.nii.gz")

    def silent() -> str:
        raise ValueError()

    assert run_command("cvae x", bad_value) == 2
    assert capsys.readouterr().err == "cvae x: error: the cohort is empty\n"
    assert run_command("cvae x", missing) == 2
    assert capsys.readouterr().err == "cvae x: error: [Errno 2] No such file or directory: '/nowhere/x.nii.gz'\n"
    assert run_command("cvae x", silent) == 2
    assert capsys.readouterr().err == "cvae x: error: ValueError\n"

    def bug() -> str:
        raise KeyError("a programming error is not bad input")

    with pytest.raises(KeyError):  # not turned into exit code 2: the traceback is needed
        run_command("cvae x", bug)


# ---------------------------------------------------------------------------------------------------------------
# interrupts: Ctrl-C (130) and SIGTERM (143), one line each, cleaned up on the way out


def test_run_command_turns_ctrl_c_into_exit_130_with_one_line(capsys):
    def interrupted() -> str:
        raise KeyboardInterrupt

    assert run_command("cvae x", interrupted) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "cvae x: interrupted (Ctrl-C): nothing half-written was kept\n"


@pytest.mark.parametrize("message, said", [
    ("saved last/ at step 7 of 100: continue with --resume", "saved last/ at step 7 of 100: continue with --resume"),
    ("", "nothing half-written was kept"),
])
def test_run_command_turns_interrupted_into_128_plus_the_signal(message, said, capsys):
    def stopped() -> str:
        raise Interrupted(signal.SIGTERM, message)

    assert run_command("cvae train", stopped) == 143
    assert capsys.readouterr().err == f"cvae train: stopped by SIGTERM: {said}\n"

    def hung_up() -> str:
        raise Interrupted(signal.SIGHUP, message)

    assert run_command("cvae train", hung_up) == 128 + signal.SIGHUP
    assert capsys.readouterr().err == f"cvae train: stopped by SIGHUP: {said}\n"

    def ctrl_c_seen_by_a_loop() -> str:  # a first Ctrl-C, seen by a training loop that saved before stopping
        raise Interrupted(signal.SIGINT, message)

    assert run_command("cvae train", ctrl_c_seen_by_a_loop) == 130
    assert capsys.readouterr().err == f"cvae train: interrupted (Ctrl-C): {said}\n"


def test_interrupted_is_not_swallowed_by_except_exception():
    caught = []
    with pytest.raises(Interrupted) as info:
        try:
            raise Interrupted(signal.SIGTERM, "why")
        except Exception:  # what a command's own error handling catches
            caught.append(True)
    assert not caught and issubclass(Interrupted, BaseException)
    assert info.value.signum == signal.SIGTERM and info.value.message == "why"


def previous_handler(signum, frame):  # a handler of the caller's, to be put back
    raise AssertionError("the caller's SIGTERM handler must not run while the command runs")


def test_sigterm_while_the_body_runs_stops_it_cleanly_and_the_old_handler_is_restored(tmp_path, capsys):
    original = signal.signal(signal.SIGTERM, previous_handler)
    try:
        seen = []

        def writer(tmp: Path) -> None:
            tmp.write_text("half written")
            seen.append(signal.getsignal(signal.SIGTERM))
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` or a scheduler would
            for _ in range(500):  # the handler raises at the next bytecode; never reached the end
                time.sleep(0.01)
            seen.append("not stopped")

        def body() -> str:
            atomic_write(tmp_path / "result.txt", writer)
            return "done"

        assert run_command("cvae x", body) == 143
        assert capsys.readouterr().err == "cvae x: stopped by SIGTERM: nothing half-written was kept\n"
        assert seen[0] is not previous_handler and "not stopped" not in seen
        assert list(tmp_path.iterdir()) == []  # the temporary file went on the way out
        assert signal.getsignal(signal.SIGTERM) is previous_handler  # put back after the command

        def bad() -> str:
            raise ValueError("bad input")

        assert run_command("cvae x", bad) == 2
        assert run_command("cvae x", lambda: "ok") == 0
        assert signal.getsignal(signal.SIGTERM) is previous_handler  # also after an error or a success
        capsys.readouterr()
    finally:
        signal.signal(signal.SIGTERM, original)


def test_run_command_in_another_thread_leaves_the_signal_handlers_alone(capsys):
    before = signal.getsignal(signal.SIGTERM)
    results, during = [], []

    def body() -> str:
        during.append(signal.getsignal(signal.SIGTERM))
        return "done in a thread"

    thread = threading.Thread(target=lambda: results.append(run_command("cvae x", body)))
    thread.start()
    thread.join(timeout=30)
    assert results == [0]  # signal.signal would raise ValueError outside the main thread
    assert during == [before] and signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().out == "done in a thread\n"


HEAVY = ("torch", "numpy", "scipy", "nibabel", "pandas")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_and_a_bad_option_answer_without_importing_the_heavy_libraries(command):
    """`cvae --help`, `cvae COMMAND --help` and an option error need only the parsers: a fresh interpreter shows
    which modules they loaded (none of torch, numpy, scipy, nibabel, pandas)."""
    import json
    import subprocess
    import sys

    probe = (f"import contextlib, io, json, sys\nfrom cvae.cli import main\nout = io.StringIO()\n"
             f"codes = []\nfor argv in ({[command, '--help'] if command else ['--help']!r}, "
             f"{[command, '--no-such-option'] if command else ['no-such-command']!r}):\n"
             f"    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
             f"        try:\n            codes.append(main(argv))\n"
             f"        except SystemExit as exc:\n            codes.append(exc.code)\n"
             f"print(json.dumps([codes, len(out.getvalue()), sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(cvae.cli.__file__).parents[1])
    codes, help_chars, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [0, 2] and help_chars > 200
    assert loaded == []
