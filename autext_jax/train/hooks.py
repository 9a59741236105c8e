"""What the train loop does besides stepping: log, save, evaluate, stop. Each hook owns its frequency.

The loop (``loop.train_loop``) calls, after every step, ``act`` on each hook that is ``due`` and
then ``after_step`` on all of them. Metrics are checked for NaN/inf (``LogHook.flush``) before any
hook marked ``needs_finite`` acts, so a checkpoint never holds the result of a diverged step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from autext_jax.errors import Stopped, TrainingDiverged
from autext_jax.signals import StopFlag
from autext_jax.train.checkpointing import Checkpointer
from autext_jax.train.metric_writers import MetricWriters
from autext_jax.train.preemption import StopAgreement
from autext_jax.train.throughput import mfu, train_flops

log = logging.getLogger("autext_jax.train")

State = dict[str, Any]


class Hook:
    """``act`` every ``every`` steps (0: never); ``after_step`` after every step."""

    needs_finite = False

    def __init__(self, every: int):
        self.every = every

    def due(self, step: int, last: bool) -> bool:
        return bool(self.every) and step % self.every == 0

    def act(self, step: int, state: State) -> None:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass


@dataclass(frozen=True)
class LogSettings:
    """What a training log line is computed from besides the metrics: the schedule and the sizes."""

    lr: Callable[[int], float]
    batch_size: int
    encoder: Any  # the EncoderConfig: FLOPs per example for the MFU
    per_epoch: int


class LogHook(Hook):
    """Training metrics averaged over the last ``every`` steps → the metric writers and the progress bar."""

    def __init__(self, every: int, writers: MetricWriters, progress, settings: LogSettings):
        super().__init__(every)
        self.writers, self.progress, self.settings = writers, progress, settings
        self.devices = jax.devices()
        self._window: list[tuple[dict[str, jax.Array], int]] = []
        self._start = time.perf_counter()

    def record(self, metrics: dict[str, jax.Array], seq_len: int) -> None:
        self._window.append((metrics, seq_len))

    def act(self, step: int, state: State) -> None:
        self.flush(step)

    def flush(self, step: int) -> None:
        """Fetch the window's metrics (raising on NaN/inf) and write their summary at ``step``."""
        if not self._window:
            return
        records = [{k: float(v) for k, v in m.items()} for m in jax.device_get([m for m, _ in self._window])]
        for offset, rec in enumerate(records):
            _check_finite(rec, step - len(records) + offset + 1)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        cfg = self.settings
        flops = sum(train_flops(cfg.encoder, cfg.batch_size, seq) for _, seq in self._window)
        summary: dict[str, Any] = {
            k: float(np.mean([r[k] for r in records]))
            for k in ("loss", "bot_loss", "english_loss", "grad_norm")
        }
        summary["lr"] = cfg.lr(step)
        summary["examples_per_s"] = len(records) * cfg.batch_size / elapsed
        summary["tokens_per_s"] = sum(r["tokens"] for r in records) / elapsed
        utilisation = mfu(flops, elapsed, self.devices[0].device_kind, len(self.devices))
        if utilisation is not None:
            summary["mfu"] = utilisation
        self.writers.write({"split": "train", "step": step, "epoch": (step - 1) // cfg.per_epoch, **summary})
        self.progress.set_postfix(loss=f"{summary['loss']:.4f}", ex_s=f"{summary['examples_per_s']:.1f}")
        self._window, self._start = [], time.perf_counter()


def _check_finite(metrics: dict[str, float], step: int) -> None:
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(metrics[k])]
    if bad:
        raise TrainingDiverged(
            f"step {step}: {' and '.join(bad)} became {metrics[bad[0]]}; stopped, the last good checkpoint "
            "is kept (lower optimizer.learning_rate or check the data)"
        )


class SaveHook(Hook):
    """A checkpoint every ``every`` steps and at the last; a failed save is reported at the next step."""

    needs_finite = True

    def __init__(
        self,
        every: int,
        checkpointer: Checkpointer,
        meta: Callable[[int], dict[str, Any]],
        on_saved: Callable[[int], None] | None = None,
    ):
        super().__init__(every)
        self.checkpointer, self.meta, self.on_saved = checkpointer, meta, on_saved
        self.saved_at = -1

    def due(self, step: int, last: bool) -> bool:
        return super().due(step, last) or last

    def act(self, step: int, state: State) -> None:
        if self.saved_at != step:
            self.checkpointer.save(step, state, self.meta(step))
            self.saved_at = step
            if self.on_saved is not None:
                self.on_saved(step)

    def save_now(self, step: int, state: State) -> int:
        """A committed checkpoint before the process leaves; returns its step.

        With a periodic save still in flight, that one is finished instead of writing a second one
        after it: a preempted VM has 30 s, and resuming from either step gives the same result.
        """
        in_flight = self.checkpointer.in_flight()
        if in_flight is None:
            self.act(step, state)
        else:
            log.info("stopping: finishing the checkpoint of step %d that is being written", in_flight)
        self.checkpointer.wait()
        return step if in_flight is None else in_flight

    def after_step(self, step: int) -> None:
        self.checkpointer.check()


class EvalHook(Hook):
    """Validation every ``every`` steps (the final evaluation is the finish's, not this hook's)."""

    needs_finite = True

    def __init__(self, every: int, evaluate: Callable[[int, State], dict[str, Any]]):
        super().__init__(every)
        self.evaluate = evaluate

    def due(self, step: int, last: bool) -> bool:
        return super().due(step, last) and not last

    def act(self, step: int, state: State) -> None:
        self.evaluate(step, state)


class StopHook(Hook):
    """At the steps ``agreement`` names all processes learn whether one was signalled; then flush,
    save and stop (``preemption.py``)."""

    def __init__(
        self,
        agreement: StopAgreement,
        signals: StopFlag,
        *,
        flush: Callable[[int], None],
        save: Callable[[int, State], int],
    ):
        super().__init__(agreement.every)
        self.agreement, self.signals, self.flush, self.save = agreement, signals, flush, save

    def due(self, step: int, last: bool) -> bool:
        return self.agreement.due(step) and not last  # the last step saves and finishes anyway

    def act(self, step: int, state: State) -> None:
        signum = self.agreement.check(step, self.signals.requested)
        if not signum:
            return
        self.flush(step)
        saved = self.save(step, state)
        which = "" if saved == step else f" (of step {saved}: the save that was in flight)"
        raise Stopped(
            signum,
            f"stopped at step {step} with a checkpoint saved{which}; run the same command again to resume",
        )

    def after_step(self, step: int) -> None:
        self.agreement.post(self.signals.requested)
