"""cvae.cli: the `cvae` command's dispatch, every command's options documented, one-line errors."""
from __future__ import annotations

import argparse
import importlib

import pytest

import cvae.cli
from cvae.cli import COMMANDS, run_command


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
