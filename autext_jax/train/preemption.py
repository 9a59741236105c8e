"""SIGTERM (Cloud TPU's notice before a Spot VM is preempted) and Ctrl-C: stop at an agreed step.

``StopSignals`` turns the first SIGTERM/SIGINT into a request instead of an exception; the train loop
then asks ``agreed()`` at fixed steps. With several processes only the signalled one knows, so each
check is a small all-gather: every process sees the same answer at the same step, saves the
checkpoint of that step, and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). A second
Ctrl-C interrupts at once. Python's handler replaces the one ``jax.distributed`` installs (which
only logs "SIGTERM caught").
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

import jax
import numpy as np

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context manager: while inside, SIGTERM/SIGINT set ``requested`` instead of ending the process."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.requested = 0
        self.on_request = on_request  # told at once (from the signal handler: must only set flags)
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        if not self.requested:
            log.warning("%s received: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = self.requested or signum
        if self.on_request is not None:
            self.on_request()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self) -> int:
        """The signal any process received (0: none); a collective when there are several processes."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        everyone = multihost_utils.process_allgather(np.int32(self.requested))
        return int(np.max(np.asarray(everyone)))
