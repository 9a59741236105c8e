"""Errors a user can cause, and the one exit-code scheme every command line shares.

Every such error derives from ``AutextError`` and carries the exit code the CLIs return for it, so
callers of the Python API can catch one class and the CLI runner (``cli.py``) needs no table of
exception types. Subclasses keep ``ValueError``/``FileNotFoundError`` as mixins where users may
already catch those.

Exit codes (documented in the README):

====  =====================================================================================
0     done
1     bad input data: a malformed record, a corrupt or unusable model, unreadable training data
2     bad usage, configuration or environment: flags, config files, paths, permissions, devices
3     training diverged (the loss or gradient norm became NaN/inf; the last good checkpoint is kept)
128+N stopped by signal N (130 for Ctrl-C, 143 for SIGTERM); whatever was written is complete
====  =====================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_SIGNAL_BASE = 128


class AutextError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what a CLI exits with."""

    exit_code: int = EXIT_USAGE


class UsageError(AutextError):
    """A bad command line, option value, path or environment (exit 2)."""

    exit_code = EXIT_USAGE


class InputDataError(AutextError, ValueError):
    """Input data that cannot be used as given; the message names the file and line (exit 1)."""

    exit_code = EXIT_BAD_INPUT


class TrainingDiverged(AutextError, RuntimeError):
    """The loss or the gradient norm became NaN/inf (exit 3)."""

    exit_code = EXIT_DIVERGED


class Stopped(AutextError):
    """The run was stopped by a signal after finishing cleanly what it could (exit 128 + signal)."""

    def __init__(self, signum: int, message: str = ""):
        import signal

        name = signal.Signals(signum).name
        super().__init__(message or f"stopped by {name}")
        self.signum = signum
        self.exit_code = EXIT_SIGNAL_BASE + signum
