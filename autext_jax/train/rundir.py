"""The run directory (``--workdir``, local or a URL): probed, leased to one run, its config guarded.

- ``probe``: before any step, write and read back a small file, so an unknown scheme, a missing
  bucket or no write permission is one line (exit 2) instead of a failure at the first checkpoint.
- ``Lease``: ``lease.json`` names the run that owns the workdir and is renewed by a heartbeat
  thread (which also calls ``on_beat``: the run status's heartbeat); a second run exits 2 at once.
  It works on object stores (no locks there). A lease is stale
  when its heartbeat is older than ``LEASE_TTL_S``; when it was written on this host during another
  boot (a re-created VM keeps its hostname) or its process is gone (kill -9; a pid reused by another
  process is told apart by the process's start time); or when its run was stopping (SIGTERM/Ctrl-C)
  and its heartbeat is older than ``STOPPING_GRACE_S`` (time for the stop checkpoint, not the TTL).
- ``check_shared``: every process of a multi-process run must see the lease process 0 wrote, else
  the hosts do not share the workdir (exit 2, instead of each host writing its own run).
- ``train_config.json``: written by process 0; a checkpoint of another config is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from autext_jax import paths
from autext_jax.errors import UsageError
from autext_jax.train.checkpointing import CheckpointMismatchError

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
LEASE_FILE = "lease.json"
LEASE_TTL_S = 120.0
HEARTBEAT_S = 20.0
STOPPING_GRACE_S = 45.0  # a preempted VM gets 30 s to save; then its lease no longer blocks
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
SHARED_WAIT_S = 20.0  # how long other processes look for process 0's lease (object stores lag a little)
# Fields that may change between a run and its resumption without changing the trajectory.
RESUMABLE_FIELDS = (
    "allow_config_change",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.async_save",
    "checkpoint.stop_check_every",
    "eval.every_steps",
    "eval.batch_size",
    "log_every",
    "progress",
    "tensorboard",
)


class WorkdirBusy(UsageError):
    """Another run holds the workdir's lease."""


def probe(workdir: str) -> None:
    """Create ``workdir`` (local) and write, read and delete a file there; any failure is one line."""
    target = paths.join(workdir, f".probe-{socket.gethostname()}-{os.getpid()}")
    try:
        if not paths.is_url(workdir):
            paths.makedirs(workdir)  # object stores have no folders (and gcsfs would create a bucket)
        paths.write_text(target, "probe\n")
        if paths.read_text(target) != "probe\n":
            raise OSError("a file written there reads back differently")
        paths.remove(target)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - missing bucket, permission, network: all the same to users
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UsageError(
            f"cannot write to --workdir {workdir} ({type(err).__name__}: {reason}); check that it (or "
            "its bucket) exists and that you may write there"
        ) from None


def boot_id() -> str | None:
    """This machine's boot id (Linux): a hostname can come back on a new VM, a boot id cannot."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as stream:
            return stream.read().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot; Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; the two before the ")" split are pid and name
    except (OSError, IndexError, ValueError):
        return None


def _alive_here(record: dict[str, Any]) -> bool:
    """Whether the lease's process runs on this host in this boot (``False`` when not, or unknown)."""
    if record.get("host") != socket.gethostname():
        return False
    if record.get("boot_id") and record.get("boot_id") != boot_id():
        return False  # the same hostname on a re-created VM: that process died with the old one
    try:
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, OverflowError):
        return False
    started = record.get("started")
    return started is None or process_start(pid) in (None, started)


def _stale(record: dict[str, Any], now: float) -> bool:
    age = now - float(record.get("heartbeat", 0))
    if record.get("state") == "stopping" and age > STOPPING_GRACE_S:
        return True
    if record.get("host") == socket.gethostname():
        return not _alive_here(record)
    return age > LEASE_TTL_S


class Lease:
    """The workdir's owner record, renewed every ``HEARTBEAT_S`` until ``release``."""

    def __init__(self, workdir: str, on_beat: Callable[[], None] | None = None):
        self.path = paths.join(workdir, LEASE_FILE)
        self.on_beat = on_beat
        self.token = uuid.uuid4().hex
        self.stopping = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "boot_id": boot_id(),
            "started": process_start(os.getpid()),
            "state": "stopping" if self.stopping else "running",
            "heartbeat": time.time(),
        }

    def note_stopping(self) -> None:
        """The run was told to stop: say so at once (cheap; safe from a signal handler), so that a
        relaunch elsewhere waits only ``STOPPING_GRACE_S`` if this process never gets to release."""
        if not self.stopping:
            self.stopping = True
            self._wake.set()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(paths.read_text(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # half-written by a run that died: stale

    def acquire(self) -> None:
        held = self._read()
        if held and held.get("token") != self.token and not _stale(held, time.time()):
            raise WorkdirBusy(self._busy_line(held))
        paths.write_text(self.path, json.dumps(self._record()) + "\n")
        # Two runs started together both wrote; the later write wins and the other one leaves.
        time.sleep(0.2)
        now = self._read()
        if not now or now.get("token") != self.token:
            raise WorkdirBusy(self._busy_line(now or {}))
        self._thread = threading.Thread(target=self._beat, name="autext-lease", daemon=True)
        self._thread.start()

    def _busy_line(self, held: dict[str, Any]) -> str:
        age = time.time() - float(held.get("heartbeat", time.time()))
        return (
            f"--workdir {self.path.rsplit('/', 1)[0]} is in use by another run (pid {held.get('pid')} on "
            f"{held.get('host')}, alive {age:.0f}s ago); wait for it to finish, stop it, or use another "
            f"--workdir (a lease older than {LEASE_TTL_S:.0f}s is taken over)"
        )

    def _beat(self) -> None:
        while True:
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                paths.write_text(self.path, json.dumps(self._record()) + "\n")
            except Exception as err:  # noqa: BLE001 - a missed heartbeat is not fatal; the TTL is long
                log.warning("could not renew %s: %s", self.path, err)
            if self.on_beat is not None and not self.stopping:
                self.on_beat()

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._thread = None
        held = self._read()
        if held and held.get("token") == self.token:
            paths.remove(self.path)


def claim(workdir: str, on_beat: Callable[[], None] | None = None) -> Lease | None:
    """Process 0 takes the lease; every process then checks that it sees it (the workdir is shared).
    ``on_beat`` is called from the lease's heartbeat thread on process 0.

    Returns the lease on process 0 (``None`` elsewhere). All processes raise together on failure.
    """
    import jax

    lease = Lease(workdir, on_beat) if jax.process_index() == 0 else None
    failure = ""
    if lease is not None:
        try:
            lease.acquire()
        except UsageError as err:
            failure = str(err)
    if jax.process_count() == 1:
        if failure:
            raise WorkdirBusy(failure)
        return lease
    from jax.experimental import multihost_utils

    # Process 0's outcome and token, as bytes, to everyone (a failed claim must not leave them waiting).
    token = (lease.token if lease is not None and not failure else "").encode().ljust(32, b"\0")
    shared = multihost_utils.broadcast_one_to_all(np.frombuffer(token, np.uint8))
    token = bytes(np.asarray(shared, np.uint8)).rstrip(b"\0").decode()
    if not token:
        if lease is None:
            raise WorkdirBusy(f"--workdir {workdir} is in use by another run (process 0 could not take it)")
        raise WorkdirBusy(failure)
    seen = lease is not None or _sees_token(paths.join(workdir, LEASE_FILE), token)
    everyone = np.asarray(multihost_utils.process_allgather(np.int32(seen)))
    if not everyone.all():
        if lease is not None:
            lease.release()
        blind = [int(i) for i in np.flatnonzero(everyone == 0)]
        raise UsageError(
            f"process(es) {blind} do not see the --workdir {workdir} that process 0 uses: every process "
            "of a run must be given the same workdir on shared storage (e.g. gs://BUCKET/RUN)"
        )
    return lease


def _sees_token(path: str, token: str) -> bool:
    deadline = time.monotonic() + SHARED_WAIT_S
    while True:
        try:
            if json.loads(paths.read_text(path)).get("token") == token:
                return True
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


# ---- the run's config -----------------------------------------------------------------------------


def config_digest(resolved: dict[str, Any]) -> str:
    """A short hash of the trajectory-defining part of a resolved config."""
    kept = _without(resolved, RESUMABLE_FIELDS)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _without(tree: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    for key in dotted:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every trajectory-defining field that differs."""
    a, b = _flatten(_without(old, RESUMABLE_FIELDS)), _flatten(_without(new, RESUMABLE_FIELDS))
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def guard_config(workdir: str, resolved: dict[str, Any], has_checkpoint: bool, allow_change: bool) -> None:
    """Refuse to resume a checkpoint written under another configuration unless explicitly allowed."""
    path = paths.join(workdir, CONFIG_FILE)
    if not has_checkpoint or not paths.isfile(path):
        return
    try:
        old = json.loads(paths.read_text(path))
    except json.JSONDecodeError as err:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({err}); move the workdir away") from None
    diffs = config_differences(old, json.loads(json.dumps(resolved)))
    if diffs:
        _refuse_or_warn(
            workdir,
            "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""),
            allow_change,
        )


def check_digest(workdir: str, saved: str | None, current: str, allow_change: bool) -> None:
    """The digest stored in the restored checkpoint must be the current config's."""
    if saved != current:
        _refuse_or_warn(workdir, f"config digest {saved} in the checkpoint, {current} now", allow_change)


def _refuse_or_warn(workdir: str, shown: str, allow_change: bool) -> None:
    if allow_change:
        log.warning("resuming %s under a changed config (allow_config_change=true): %s", workdir, shown)
        return
    raise CheckpointMismatchError(
        f"{workdir} holds a checkpoint of a different config ({shown}); use another --workdir, or "
        "pass --set allow_config_change=true to resume it anyway"
    )


def write_config(workdir: str, resolved: dict[str, Any]) -> str:
    path = paths.join(workdir, CONFIG_FILE)
    paths.write_text(path, json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    return path
