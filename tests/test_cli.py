"""The shared CLI runner: one line per error, the documented exit codes, tracebacks only with --debug."""

from __future__ import annotations

import argparse
import errno
import signal

import pytest

from autext_jax import cli, errors
from autext_jax.config import ConfigError
from autext_jax.data.dataset import DataError, DataUsageError


def _raiser(exc: BaseException):
    def command() -> int:
        raise exc

    return command


@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.InputDataError("data.tsv:3: bad label 'x'"), errors.EXIT_BAD_INPUT),
        (DataError("data.tsv: no text column"), errors.EXIT_BAD_INPUT),
        (DataUsageError("data path nowhere does not exist"), errors.EXIT_USAGE),
        (ConfigError("threshold must be a number"), errors.EXIT_USAGE),
        (errors.TrainingDiverged("loss became nan"), errors.EXIT_DIVERGED),
        (errors.Stopped(signal.SIGTERM), 128 + signal.SIGTERM),
        (OSError(errno.ENOSPC, "No space left on device", "/dev/full"), errors.EXIT_BAD_INPUT),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), errors.EXIT_USAGE),
    ],
)
def test_errors_become_one_line_and_their_exit_code(exc, code, capsys):
    assert cli.run("prog", _raiser(exc)) == code
    err = capsys.readouterr().err
    assert err.startswith("prog: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_interrupt_is_130_and_debug_shows_the_traceback(capsys):
    assert cli.run("prog", _raiser(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"
    assert cli.run("prog", _raiser(ConfigError("bad")), debug=True) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("prog: error: bad\n")


def test_programming_errors_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        cli.run("prog", lambda: 1 // 0)


def test_main_parses_and_passes_the_debug_flag(capsys):
    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--value", type=int, default=0)
    cli.add_debug_flag(parser)
    assert cli.main("prog", parser, lambda args: args.value, ["--value", "7"]) == 7
    assert cli.main("prog", parser, lambda args: _raiser(ConfigError("x"))(), ["--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
