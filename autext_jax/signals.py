"""SIGINT and SIGTERM while scoring: a stop flag the scoring loop checks, instead of an exception.

Why a flag: a ``KeyboardInterrupt`` raised wherever Python happens to be can land inside JAX's
garbage-collection callback, which swallows it ("Exception ignored in ... _xla_gc_callback") and the
run goes on; and a preempted VM's SIGTERM would kill the process mid-record. With ``StopFlag``
installed (first thing in the CLI, before JAX is imported) a signal only records its number; the
engine asks between batches and while waiting for input, the run stops at the next check, writes
nothing half, and exits ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM). A second Ctrl-C raises
``KeyboardInterrupt`` at once, for a user who will not wait. Until the run has begun writing
(``begin_work``: imports, model loading, compiling) there is nothing to finish, so a signal ends the
process at once with one line and the same exit code.
"""

from __future__ import annotations

import os
import signal
import threading

from autext_jax.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Installed handlers for SIGINT/SIGTERM that set ``requested`` (the first signal's number)."""

    def __init__(self) -> None:
        self.requested = 0
        self.starting = True  # nothing written yet: a signal may end the process at once
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.starting:
            name = signal.Signals(signum).name
            os.write(2, f"autext-jax: interrupted by {name} while starting; nothing was written\n".encode())
            os._exit(128 + signum)
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = self.requested or signum

    def install(self) -> StopFlag:
        """Take over both signals (main thread only; elsewhere the defaults stay). Installing again
        keeps a signal that came in between (``python -m`` installs first thing, ``main`` again)."""
        if self._previous:
            return self
        self.requested = 0
        self.starting = True
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def begin_work(self) -> None:
        """From here on a signal is a request, answered at the next check (output is being written)."""
        self.starting = False

    def __call__(self) -> bool:
        """Whether a stop was asked for (the engine's ``stop`` callback)."""
        return bool(self.requested)

    def check(self) -> None:
        """Raise ``Stopped`` if a signal came."""
        if self.requested:
            raise Stopped(self.requested, f"interrupted by {signal.Signals(self.requested).name}; "
                          "every record written is complete")


STOP = StopFlag()  # the scoring CLI's flag (installed by ``infer`` when it starts)
