"""``WORKDIR/run_status.json``: what a training run is doing, for whoever watches it from outside.

A launcher (``tools/cloud_tpu``) cannot see a worker's exit code once ssh is gone, and a run that
crashed on a healthy slice looks exactly like one that is still training. So process 0 writes this
file through the workdir's path layer (``autext_jax.paths``; local folders and ``gs://`` alike):

.. code-block:: json

    {"state": "running" | "finished" | "failed" | "stopped",
     "exit_code": int | null,     # null while running; 0 finished; 130/143 stopped; 1/2/3 failed
     "step": int | null,          # the newest step with a checkpoint save started (or the final step)
     "updated": 1733300000.0,     # unix time of this write (the writer's clock)
     "beat": 17,                  # write counter: changes at every write, heartbeats included
     "host": "worker-0",          # hostname of process 0
     "commit": "abc123…" | "abc123…+dirty" | null,  # the code that ran (see ``source_commit``)
     "export": "gs://…/export" | null}              # set when finished

- ``running`` when training starts, with ``step`` renewed at each checkpoint save and the whole record
  rewritten every ``HEARTBEAT_S`` (``heartbeat``, from the lease's thread) while the run lives: a
  ``running`` record whose ``beat`` stops changing belongs to a run that died (OOM, kill -9, a libtpu
  abort). Watchers judge that by their own clock (when they saw ``beat`` change), never by comparing
  ``updated`` with theirs;
- ``finished`` (exit 0, ``export`` set) after the export was written;
- ``stopped`` (130 Ctrl-C, 143 SIGTERM) after the stop checkpoint was saved: relaunching resumes;
- ``failed`` with the CLI's exit code (1 bad data/model, 2 usage/storage, 3 diverged; 1 for an
  unexpected exception, which is still recorded before it propagates).

Each write replaces the whole file at once: on local disks through a temporary file and a rename, on
object stores as one object upload (readers see the old or the new record, never half of one). A
write that fails is a warning: the status never ends a run. Readers should treat a missing file as
"not started yet" and unknown keys as extensions.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from autext_jax import paths
from autext_jax.errors import AutextError, Stopped

log = logging.getLogger(__name__)

STATUS_FILE = "run_status.json"
STATES = ("running", "finished", "failed", "stopped")
COMMIT_ENV = "AUTEXT_JAX_SOURCE_COMMIT"
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def source_commit(checkout: Path | None = None) -> str | None:
    """``$AUTEXT_JAX_SOURCE_COMMIT``, else the package checkout's ``HEAD`` (``+dirty`` with local
    changes), else ``None`` (an installed wheel, or no git)."""
    env = os.environ.get(COMMIT_ENV)
    if env:
        return env.strip()
    root = checkout or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = _git(root, "rev-parse", "HEAD").strip()
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def exit_code_of(error: BaseException | None) -> int:
    """The exit code the CLI gives for ``error`` (``None``: success)."""
    if error is None:
        return 0
    if isinstance(error, (AutextError, Stopped)):
        return int(error.exit_code)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_UNEXPECTED


def state_of(exit_code: int) -> str:
    if exit_code == 0:
        return "finished"
    return "stopped" if exit_code > 128 else "failed"


def read_status(workdir: str) -> dict[str, Any] | None:
    """The recorded status, or ``None`` when the run never wrote one (or it is unreadable)."""
    try:
        return json.loads(paths.read_text(paths.join(workdir, STATUS_FILE)))
    except (OSError, ValueError):
        return None


class RunStatus:
    """Process 0's writer of ``run_status.json``; on other processes every call does nothing."""

    def __init__(self, workdir: str, *, enabled: bool, commit: str | None = None):
        self.path = paths.join(workdir, STATUS_FILE)
        self.enabled = enabled
        self.host = socket.gethostname()
        self.commit = commit
        self.step: int | None = None
        self.export: str | None = None
        self.beat = 0
        self._ended = False
        self._lock = threading.Lock()  # heartbeats come from another thread

    def running(self, step: int | None = None) -> None:
        if step is not None:
            self.step = step
        self._write("running", None)

    def heartbeat(self) -> None:
        """Rewrite the ``running`` record (a fresh ``beat``); nothing once the run has ended."""
        self._write("running", None)

    def ended(
        self, error: BaseException | None, *, step: int | None = None, export: str | None = None
    ) -> int:
        """Record the end of the run (``error`` is what ends it, ``None`` for success); returns the code."""
        code = exit_code_of(error)
        if step is not None:
            self.step = step
        if export is not None:
            self.export = export
        self._write(state_of(code), code, final=True)
        return code

    def record(self, state: str, exit_code: int | None) -> dict[str, Any]:
        return {
            "state": state,
            "exit_code": exit_code,
            "step": self.step,
            "updated": time.time(),
            "beat": self.beat,
            "host": self.host,
            "commit": self.commit,
            "export": self.export if state == "finished" else None,
        }

    def _write(self, state: str, exit_code: int | None, *, final: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:  # a late heartbeat must never overwrite how the run ended
            if self._ended and state == "running":
                return
            self._ended = self._ended or final
            self.beat += 1
            try:
                paths.write_text(self.path, json.dumps(self.record(state, exit_code)) + "\n")
            except Exception as err:  # noqa: BLE001 - the status must never be what ends a run
                log.warning("could not write %s: %s", self.path, " ".join(str(err).split())[:200])
