"""SIGTERM (Cloud TPU's notice before a Spot VM is preempted) and Ctrl-C: stop at an agreed step.

The signals themselves are taken by ``autext_jax.signals.StopFlag`` (the same flag scoring uses): the
first SIGTERM/SIGINT becomes a request instead of an exception (a second Ctrl-C interrupts at once). The
train loop asks at the steps ``StopAgreement`` names: every process must stop at the same step, save
that step's checkpoint and exit with ``128 + signal`` (143 SIGTERM, 130 Ctrl-C), though only the
signalled process knows.

With one process the check is a flag read every ``stop_check_every`` steps. With several,
``StopAgreement`` agrees through JAX's coordination service key-value store, never through the
devices: a signalled process posts its request; at each check step process 0 collects the requests
and posts the verdict and the next check step, chosen so that checks come about every
``CHECK_INTERVAL_S`` seconds (and at least ``stop_check_every`` steps apart); the others read it.
Between checks a step does no stop work at all. Python's handler replaces the one
``jax.distributed`` installs (which only logs "SIGTERM caught").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import jax

from autext_jax.errors import AutextError
from autext_jax.signals import StopFlag

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
VERDICT_TIMEOUT_S = 1800.0  # process 0 may be evaluating between two checks
_PREFIX = "autext_stop"
_KEEP_KEYS = 16  # verdicts kept in the store: late readers are at most a few checks behind
ANNOUNCE = "%s received: saving a checkpoint and stopping"


def training_signals(on_request: Callable[[], None] | None = None) -> StopFlag:
    """The stop flag of a training run (use as ``with training_signals(...) as signals``)."""
    return StopFlag(on_request=on_request, announce=ANNOUNCE)


class StopAgreement:
    """When to check and what every process decides: ``check(step, requested) -> (signum, next_step)``.

    ``client`` is JAX's distributed client (``key_value_set``, ``key_value_dir_get``,
    ``blocking_key_value_get``, ``key_value_delete``); ``None`` with a single process.
    """

    def __init__(
        self,
        every: int,
        *,
        client: Any = None,
        process_index: int = 0,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every, self.client, self.index = every, client, process_index
        self.interval_s, self.clock = interval_s, clock
        self.next_step = every
        self._posted = False
        self._last: tuple[int, float] | None = None
        self._verdicts: list[str] = []

    @classmethod
    def for_this_run(cls, every: int) -> StopAgreement:
        if jax.process_count() == 1:
            return cls(every)
        from jax._src import distributed

        return cls(every, client=distributed.global_state.client, process_index=jax.process_index())

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def check(self, step: int, requested: int) -> int:
        """The signal every process acts on at ``step`` (0: go on); sets ``next_step``."""
        if self.client is None:
            self.next_step = step + self.every
            return requested
        self.post(requested)
        key = f"{_PREFIX}/at/{step}"
        if self.index == 0:
            signum = max(
                [requested, *(int(v) for _, v in self.client.key_value_dir_get(f"{_PREFIX}/request/"))]
            )
            stride = self._stride(step)
            self.client.key_value_set(key, f"{signum},{stride}")
            self._forget_old(key)
        else:
            try:
                value = self.client.blocking_key_value_get(key, int(VERDICT_TIMEOUT_S * 1000))
            except Exception as err:  # noqa: BLE001 - a timeout comes as XlaRuntimeError
                raise AutextError(
                    f"process {self.index}: process 0 gave no stop verdict for step {step} within "
                    f"{VERDICT_TIMEOUT_S:.0f}s ({' '.join(str(err).split())[:160]}); see its log"
                ) from None
            signum, stride = (int(v) for v in value.split(","))
        self.next_step = step + stride
        return signum

    def post(self, requested: int) -> None:
        """Tell process 0 about this process's signal as soon as the loop sees it (once; cheap otherwise)."""
        if requested and not self._posted and self.client is not None:
            self.client.key_value_set(f"{_PREFIX}/request/{self.index}", str(requested))
            self._posted = True

    def _stride(self, step: int) -> int:
        """Steps until the next check: about ``interval_s`` at the pace since the last one."""
        now = self.clock()
        last, self._last = self._last, (step, now)
        if last is None or step <= last[0]:
            return self.every
        per_step = (now - last[1]) / (step - last[0])
        return max(self.every, math.ceil(self.interval_s / max(per_step, 1e-6)))

    def _forget_old(self, key: str) -> None:
        self._verdicts.append(key)
        if len(self._verdicts) > _KEEP_KEYS:
            try:
                self.client.key_value_delete(self._verdicts.pop(0))
            except Exception as err:  # noqa: BLE001 - a leftover key costs a few bytes
                log.debug("could not delete %s: %s", key, err)
