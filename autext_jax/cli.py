"""The one runner behind every command line (``infer``, ``train``, ``evaluate``, ``tools/``).

It sets up logging once, runs the command, and turns what a user can cause into one line on stderr
and the exit code of ``errors.py``; ``--debug`` shows the traceback instead. Commands raise
``AutextError`` subclasses (or let ``KeyboardInterrupt`` through) and never print errors themselves.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from autext_jax.errors import EXIT_BAD_INPUT, EXIT_SIGNAL_BASE, EXIT_USAGE, AutextError

LOGGER_NAME = "autext_jax"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. under test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(prog: str, *, verbose: bool = True, timestamps: bool = False, primary: bool = True) -> None:
    """Our package's messages on stderr, without touching the root logger (absl/orbax have their own).

    ``verbose`` shows INFO; ``primary=False`` (every process but 0 of a multi-process run) keeps only
    WARNING and above so that a pod's log is not repeated once per host.
    """
    package = logging.getLogger(LOGGER_NAME)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps else f"{prog}: %(message)s"
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(fmt))
    package.handlers[:] = [handler]
    package.setLevel(logging.INFO if verbose and primary else logging.WARNING)
    package.propagate = False


def threshold_arg(text: str) -> float:
    """argparse ``type`` for a decision threshold (the range check of ``config.check_threshold``)."""
    from autext_jax.config import ConfigError, check_threshold

    try:
        return check_threshold(float(text))
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.strip("'\"") if isinstance(err, KeyError) else text


def _os_error_line(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    reason = (err.strerror or os.strerror(err.errno)) if err.errno else str(err)
    return f"cannot access{where}: {reason}"


def run(prog: str, command: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``command`` and return the process exit code; errors become one line on stderr."""
    try:
        return int(command() or 0)
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, like other command-line tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        _report(prog, "interrupted", debug)
        return EXIT_SIGNAL_BASE + signal.SIGINT
    except AutextError as err:
        _report(prog, f"error: {_one_line(err)}", debug)
        return err.exit_code
    except OSError as err:  # the environment: permissions, a full disk, a missing device or file
        _report(prog, f"error: {_os_error_line(err)}", debug)
        return EXIT_BAD_INPUT if err.errno == errno.ENOSPC else EXIT_USAGE


def _report(prog: str, line: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{prog}: {line}", file=sys.stderr)


def main(
    prog: str,
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` with ``parser`` (which must have ``--debug``), then ``run`` the command."""
    args = parser.parse_args(argv)
    return run(prog, lambda: command(args), debug=getattr(args, "debug", False))
