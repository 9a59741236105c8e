"""Orbax checkpoints of the training state: save with errors reported at once, restore with fallback.

A checkpoint holds two items: ``state`` (params and optimizer state; restored into an abstract
target so arrays land directly in their shardings) and ``meta`` (JSON: data position and the run's
config digest). Orbax writes each step to a temporary directory and renames it (local disks) or
writes into the step directory and marks it complete with ``commit_success.txt`` (``gs://``), so a
process killed mid-save leaves the previous checkpoint intact. What such a save left behind (a
temporary directory, or on ``gs://`` a step directory without the marker) would make saving that
step again fail for good; ``sweep_uncommitted`` removes it before the run starts (process 0, under
the workdir's lease). A checkpoint damaged later (a file missing or truncated) is skipped with one
warning: the newest intact one is restored instead, and the damaged ones are removed so that the
run can save those steps again. Waits between processes time out (``BARRIER_TIMEOUT_S``) with one
line naming the barrier, instead of a process waiting forever for another that failed.
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
COMMIT_MARKER = "commit_success.txt"  # Orbax's "this step is complete" file on object stores
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's temporary step directories on local disks
BARRIER_TIMEOUT_S = 600.0


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
            # Orbax's own waits between processes (a save's commit) end like ours instead of after 20 min.
            async_options=ocp.AsyncOptions(timeout_secs=int(BARRIER_TIMEOUT_S)),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._unchecked: int | None = None  # the step of a save whose outcome is not yet known
        self._closed = False
        _silence_closed_loop_callbacks()

    def uncommitted(self) -> list[str]:
        """Step directories a killed save left behind: never restorable, and in the way of a new save."""
        if not paths.isdir(self.directory):
            return []
        found = []
        for entry in paths.listdir(self.directory):
            name = paths.name(entry)
            if TMP_SUFFIX in name and name.split(".", 1)[0].isdigit():
                found.append(entry)
            elif paths.is_url(self.directory) and name.isdigit():
                if not paths.exists(paths.join(entry, COMMIT_MARKER)):
                    found.append(entry)
        return found

    def sweep_uncommitted(self) -> None:
        """Process 0 removes what killed saves left behind; every process must call this."""
        removed = []
        if jax.process_index() == 0:
            for entry in self.uncommitted():
                try:
                    paths.remove(entry, recursive=True)
                except FileNotFoundError:  # Orbax's own clean-up (in the background) was faster
                    pass
                removed.append(paths.name(entry))
        if removed:
            log.warning(
                "removed the unfinished checkpoint(s) %s in %s (a save was interrupted)",
                ", ".join(removed),
                self.directory,
            )
        barrier("autext_sweep_uncommitted")
        if removed or jax.process_count() > 1:
            self.manager.reload()

    def newest_on_storage(self) -> int | None:
        """The newest complete step as the storage holds it now, read without Orbax (no collective).

        For the run status on the way out: a save interrupted inside ``save`` (a second Ctrl-C) can
        still commit while the manager's own list of steps misses it.
        """
        if not paths.isdir(self.directory):
            return None
        steps = []
        for entry in paths.listdir(self.directory):
            name = paths.name(entry)
            if not name.isdigit():
                continue
            if paths.is_url(self.directory) and not paths.exists(paths.join(entry, COMMIT_MARKER)):
                continue
            steps.append(int(name))
        return max(steps, default=None)

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
        who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
        return CheckpointError(
            f"{who}saving {what} to {self.directory} failed ({reason}); the newest complete checkpoint "
            "is kept: rerun the same command to resume (if this happens again, check that the storage "
            "is writable and has room)"
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
        barrier("autext_drop_damaged")
        self.manager.reload()

    def close(self) -> None:
        """Wait for every save (one an interrupt cut off inside ``save`` too), release Orbax; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.manager.close()
        except Exception as err:  # noqa: BLE001 - a failed save was reported already (see wait)
            log.debug("closing the checkpoint manager: %s", err)


class UnreadableCheckpoints(CheckpointError, InputDataError):
    """No checkpoint in the workdir can be read (exit 1: the stored data is bad)."""

    exit_code = InputDataError.exit_code


def _silence_closed_loop_callbacks() -> None:
    """A failed save or restore leaves tensorstore callbacks aimed at Orbax's closed event loop, and
    Orbax's reads of a damaged checkpoint are abandoned unfinished; Python would print a traceback
    for each when they are collected ("Exception ignored in: <coroutine ...>", "Event loop is
    closed"), even steps later, ~100 lines for one fallback. Those become one warning line per
    process; other unraisable errors are printed as usual (installed once, for the rest of the process)."""
    previous = sys.unraisablehook
    if getattr(previous, "autext_closed_loop_filter", False):
        return
    warned = []

    def hook(unraisable) -> None:
        if not _orbax_leftover(unraisable):
            previous(unraisable)
            return
        if not warned:
            warned.append(True)
            log.warning(
                "abandoned checkpoint reads or writes were cancelled (%s); nothing is lost",
                " ".join(str(unraisable.exc_value).split())[:120] or type(unraisable.exc_value).__name__,
            )

    hook.autext_closed_loop_filter = True
    sys.unraisablehook = hook


def _orbax_leftover(unraisable) -> bool:
    """Whether an unraisable error is an abandoned Orbax/tensorstore task (not a bug elsewhere)."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None) or getattr(unraisable.object, "gi_code", None)
    return code is not None and any(part in code.co_filename for part in ("orbax", "tensorstore"))


def _all_processes_ok(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process got here, through JAX's coordination service (no device work); a
    process that does not arrive within ``timeout_s`` (it failed) is a ``CheckpointError``."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # not started by jax.distributed (cannot happen with several processes)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    try:
        client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as err:  # noqa: BLE001 - the coordination service reports timeouts as XlaRuntimeError
        raise CheckpointError(
            f"process {jax.process_index()}: the other processes did not reach {name} within "
            f"{timeout_s:.0f}s ({' '.join(str(err).split())[:200]}); see their logs for what failed"
        ) from None
