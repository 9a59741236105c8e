"""SIGINT and SIGTERM: a stop flag the work loop checks, instead of an exception — for scoring and training.

Why a flag: a ``KeyboardInterrupt`` raised wherever Python happens to be can land inside JAX's
garbage-collection callback, which swallows it ("Exception ignored in ... _xla_gc_callback") and the
run goes on; and a preempted VM's SIGTERM would kill the process mid-record. With a ``StopFlag``
installed a signal only records its number; the loop asks at its checks, stops there, writes nothing
half, and exits ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM). A second Ctrl-C raises
``KeyboardInterrupt`` at once, for a user who will not wait.

Scoring (``STOP``, installed first thing in the CLI, before JAX is imported) starts in the *starting*
mode: until the run has begun writing (``begin_work``: imports, model loading, compiling) there is
nothing to finish, so a signal ends the process at once with one line and the same exit code. Training
(``with StopFlag(on_request=...)``) is never in that mode: a signal even during compilation is a request,
acted on at the next stop check (``train/preemption.py`` agrees on it across processes), and
``on_request`` is told at once (the workdir's lease notes that the run is stopping). This module imports
nothing from training: scoring code must never import training code.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from autext_jax.errors import Stopped

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Installed handlers for SIGINT/SIGTERM that set ``requested`` (the first signal's number)."""

    def __init__(self, on_request: Callable[[], None] | None = None, announce: str | None = None) -> None:
        self.requested = 0
        self.starting = True  # nothing written yet: a signal may end the process at once
        self.on_request = on_request  # told at once, from the signal handler: must only set flags
        self.announce = announce  # logged at the first request ("%s": the signal's name)
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.starting:
            name = signal.Signals(signum).name
            os.write(2, f"autext-jax: interrupted by {name} while starting; nothing was written\n".encode())
            os._exit(128 + signum)
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if not self.requested and self.announce:
            log.warning(self.announce, signal.Signals(signum).name)
        self.requested = self.requested or signum
        if self.on_request is not None:
            self.on_request()

    def install(self, *, starting: bool = True) -> StopFlag:
        """Take over both signals (main thread only; elsewhere the defaults stay). Installing again
        keeps a signal that came in between (``python -m`` installs first thing, ``main`` again).
        ``starting=False``: every signal is a request from the start (training)."""
        if self._previous:
            return self
        self.requested = 0
        self.starting = starting
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __enter__(self) -> StopFlag:
        return self.install(starting=False)

    def __exit__(self, *exc) -> None:
        self.restore()

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
