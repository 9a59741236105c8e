"""Orbax checkpoints of the training state: save with errors reported at once, restore with fallback.

A checkpoint holds two items: ``state`` (params and optimizer state; restored into an abstract
target so arrays land directly in their shardings) and ``meta`` (JSON: data position and the run's
config digest). Orbax writes each step to a temporary directory and renames (or, on ``gs://``,
marks) it when complete, so a process killed mid-save leaves the previous checkpoint intact. A
checkpoint damaged later (a file missing or truncated) is skipped with a warning: the newest intact
one is restored instead, and the damaged ones are removed so that the run can save those steps again.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from autext_jax import paths
from autext_jax.errors import AutextError, InputDataError, UsageError
from autext_jax.train.config import CheckpointConfig

__all__ = [
    "CheckpointConfig",
    "Checkpointer",
    "CheckpointError",
    "CheckpointMismatchError",
    "UnreadableCheckpoints",
]

log = logging.getLogger(__name__)

# Storage Orbax (tensorstore) can write checkpoints to; other fsspec schemes hold everything else.
CHECKPOINT_SCHEMES = (None, "gs")


class CheckpointMismatchError(AutextError, ValueError):
    """The workdir belongs to a run with a different configuration (or different data)."""


class CheckpointError(AutextError):
    """A checkpoint could not be saved (exit 2: storage) or none of those present can be read (exit 1)."""


class Checkpointer:
    """``ocp.CheckpointManager`` with the two items above, for a local folder or a ``gs://`` URL."""

    def __init__(self, directory: str, cfg: CheckpointConfig):
        if paths.scheme(directory) not in CHECKPOINT_SCHEMES:
            raise UsageError(
                f"checkpoints cannot be written to {directory}: Orbax saves to local folders and gs:// "
                "only; pass such a --workdir"
            )
        self.directory = directory if paths.is_url(directory) else str(paths.local(directory).absolute())
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._unchecked: int | None = None  # the step of a save whose outcome is not yet known
        _silence_closed_loop_callbacks()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.check()  # the previous save's error, if any, before starting another
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as err:  # noqa: BLE001 - storage errors come in many types; all end the run
            # Orbax first waits for the previous save: its failure surfaces here.
            raise self._save_error(step if self._unchecked is None else self._unchecked, err) from None
        self._unchecked = step

    def in_flight(self) -> int | None:
        """The step of an asynchronous save still being written (``None``: none)."""
        return (
            self._unchecked if self._unchecked is not None and self.manager.is_saving_in_progress() else None
        )

    def check(self) -> None:
        """Raise ``CheckpointError`` as soon as an asynchronous save has failed (cheap when none runs)."""
        if self._unchecked is None or self.manager.is_saving_in_progress():
            return
        step, self._unchecked = self._unchecked, None
        try:
            # Nothing is writing any more, so this returns at once; it also finalises the save (Orbax
            # writes the commit marker then), whose failure would otherwise surface one save later.
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as err:  # noqa: BLE001
            raise self._save_error(step, err) from None

    def wait(self) -> None:
        """Block until an asynchronous save has been committed; raise if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            step, self._unchecked = self._unchecked, None
            raise self._save_error(step, err) from None
        self.check()

    def wait_quietly(self) -> None:
        """``wait`` while another error is already being raised: a save failure is only logged."""
        try:
            self.wait()
        except CheckpointError as err:
            log.debug("also: %s", err)

    def _save_error(self, step: int | None, err: Exception) -> CheckpointError:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
        return CheckpointError(
            f"saving {what} to {self.directory} failed ({reason}); check that the "
            "storage is writable and has room, then rerun the same command to resume"
        )

    def restore_newest_intact(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores completely; ``None`` when there is none at all.

        Every process must call this: they agree on each attempt, so all restore the same step.
        """
        steps = self.all_steps()
        damaged: list[int] = []
        for step in reversed(steps):
            restored, error = self._try_restore(step, abstract_state)
            if _all_processes_ok(restored is not None):
                if damaged:
                    self._drop_damaged(damaged, step)
                return restored
            log.warning(
                "checkpoint %d in %s cannot be restored (%s); trying an older one",
                step,
                self.directory,
                error or "damaged on another process",
            )
            damaged.append(step)
        if steps:
            raise UnreadableCheckpoints(
                f"none of the checkpoints {steps} in {self.directory} can be restored (damaged); move the "
                "workdir away to start again, or restore its files"
            )
        return None

    def _try_restore(self, step: int, abstract_state: Any) -> tuple[Any, str]:
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
            return (restored["state"], dict(restored["meta"])), ""
        except Exception as err:  # noqa: BLE001 - a missing or truncated file fails in many ways
            return None, f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"

    def _drop_damaged(self, damaged: list[int], kept: int) -> None:
        """Remove damaged steps (newer than ``kept``) so that the run can write them again."""
        if jax.process_index() == 0:
            for step in damaged:
                paths.remove(paths.join(self.directory, str(step)), recursive=True)
        log.warning("resuming from checkpoint %d; removed the damaged checkpoint(s) %s", kept, damaged)
        _barrier("autext_drop_damaged")
        self.manager.reload()

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as err:  # noqa: BLE001 - a failed save was reported already (see wait)
            log.debug("closing the checkpoint manager: %s", err)


class UnreadableCheckpoints(CheckpointError, InputDataError):
    """No checkpoint in the workdir can be read (exit 1: the stored data is bad)."""

    exit_code = InputDataError.exit_code


def _silence_closed_loop_callbacks() -> None:
    """A failed save or restore leaves tensorstore callbacks aimed at Orbax's closed event loop; each
    would print a "RuntimeError: Event loop is closed" traceback, even steps later. Only those are
    silenced (installed once, for the rest of the process)."""
    previous = sys.unraisablehook
    if getattr(previous, "autext_closed_loop_filter", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.autext_closed_loop_filter = True
    sys.unraisablehook = hook


def _all_processes_ok(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
