"""The run status contract (``run_status.json``) and the lease's staleness rules, without training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from autext_jax import errors, paths
from autext_jax.train import rundir
from autext_jax.train.run_status import COMMIT_ENV, STATES, RunStatus, read_status, source_commit


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_commit_from_env_then_checkout_then_none(tmp_path, monkeypatch):
    monkeypatch.setenv(COMMIT_ENV, "abc123")
    assert source_commit(tmp_path) == "abc123"
    monkeypatch.delenv(COMMIT_ENV)
    assert source_commit(tmp_path) is None  # not a checkout (an installed wheel)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert source_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == head.stdout.strip() + "+dirty"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_status_records_every_ending(tmp_path, where):
    workdir = str(tmp_path / "run") if where == "local" else f"memory://status-{os.getpid()}/run"
    if where == "local":
        paths.makedirs(workdir)
    status = RunStatus(workdir, enabled=True, commit="c0ffee")
    assert read_status(workdir) is None
    status.running()
    first = read_status(workdir)
    assert first["state"] == "running" and first["exit_code"] is None and first["step"] is None
    status.running(10)
    assert read_status(workdir)["step"] == 10
    assert read_status(workdir)["updated"] >= first["updated"]
    cases = [
        (errors.Stopped(signal.SIGTERM), "stopped", 143),
        (KeyboardInterrupt(), "stopped", 130),
        (errors.TrainingDiverged("nan"), "failed", 3),
        (errors.UsageError("bad"), "failed", 2),
        (errors.InputDataError("bad"), "failed", 1),
        (RuntimeError("unexpected"), "failed", 1),
    ]
    for error, state, code in cases:
        assert status.ended(error) == code
        record = read_status(workdir)
        assert (record["state"], record["exit_code"], record["export"]) == (state, code, None)
    status.ended(None, step=20, export="X/export")
    record = read_status(workdir)
    assert record == {**record, "state": "finished", "exit_code": 0, "step": 20, "export": "X/export"}
    assert set(record) == {"state", "exit_code", "step", "updated", "beat", "host", "commit", "export"}
    assert record["state"] in STATES and record["host"] == socket.gethostname()
    assert record["commit"] == "c0ffee"


def test_status_of_other_processes_and_failed_writes_do_nothing(tmp_path, caplog):
    RunStatus(str(tmp_path), enabled=False).running(3)
    assert read_status(str(tmp_path)) is None
    (tmp_path / "file").write_text("")
    RunStatus(str(tmp_path / "file"), enabled=True).running(3)  # a workdir that is a file: one warning
    assert "could not write" in caplog.text
    # Local writes go through a temporary file and a rename: nothing else is left in the folder.
    RunStatus(str(tmp_path), enabled=True).running(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run_status.json"]


# ---- the lease ---------------------------------------------------------------------------------------


def _lease(tmp_path, **fields) -> dict:
    record = {
        "token": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": rundir.boot_id(),
        "started": rundir.process_start(os.getpid()),
        "state": "running",
        "heartbeat": time.time(),
        **fields,
    }
    (tmp_path / rundir.LEASE_FILE).write_text(json.dumps(record))
    return record


def _acquire(tmp_path) -> rundir.Lease:
    lease = rundir.Lease(str(tmp_path))
    lease.acquire()
    return lease


def test_a_live_holder_on_this_boot_blocks(tmp_path):
    _lease(tmp_path)
    with pytest.raises(rundir.WorkdirBusy, match="in use by another run"):
        _acquire(tmp_path)


@pytest.mark.skipif(rundir.boot_id() is None, reason="no boot id on this system")
@pytest.mark.parametrize(
    "fields",
    [
        {"boot_id": "another-boot"},  # the same hostname on a re-created VM
        {"started": -1},  # a live pid, but not the process that wrote the lease (pid reused)
        {"pid": 2**22 + 17},  # no such process
        {"state": "stopping", "heartbeat": time.time() - rundir.STOPPING_GRACE_S - 1},
        {"host": "elsewhere", "heartbeat": time.time() - rundir.LEASE_TTL_S - 1},
        {"host": "elsewhere", "state": "stopping", "heartbeat": time.time() - rundir.STOPPING_GRACE_S - 1},
    ],
)
def test_stale_leases_are_taken_over(tmp_path, fields):
    _lease(tmp_path, **fields)
    lease = _acquire(tmp_path)
    held = json.loads((tmp_path / rundir.LEASE_FILE).read_text())
    assert held["token"] == lease.token and held["boot_id"] == rundir.boot_id()
    assert held["started"] == rundir.process_start(os.getpid()) and held["state"] == "running"
    lease.release()
    assert not (tmp_path / rundir.LEASE_FILE).exists()


def test_a_recent_lease_elsewhere_blocks_even_when_stopping(tmp_path):
    _lease(tmp_path, host="elsewhere", state="stopping", heartbeat=time.time() - 5)
    with pytest.raises(rundir.WorkdirBusy):
        _acquire(tmp_path)
    _lease(tmp_path, host="elsewhere", heartbeat=time.time() - rundir.STOPPING_GRACE_S - 1)
    with pytest.raises(rundir.WorkdirBusy):  # running, not stopping: the full TTL applies
        _acquire(tmp_path)


def test_a_stop_request_is_written_to_the_lease_at_once(tmp_path):
    lease = _acquire(tmp_path)
    try:
        lease.note_stopping()
        deadline = time.monotonic() + 5
        while json.loads((tmp_path / rundir.LEASE_FILE).read_text())["state"] != "stopping":
            assert time.monotonic() < deadline, "the heartbeat thread did not write the stopping state"
            time.sleep(0.05)
    finally:
        lease.release()


def test_the_lease_heartbeat_renews_the_status_and_never_overwrites_its_end(tmp_path, monkeypatch):
    """A live run's ``beat`` keeps changing (how ``watch`` tells it from a dead one); once the run has
    ended, a heartbeat that comes late must not turn the record back into ``running``."""
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    workdir = str(tmp_path)
    status = RunStatus(workdir, enabled=True)
    lease = rundir.Lease(workdir, on_beat=status.heartbeat)
    lease.acquire()
    try:
        status.running(5)
        first = read_status(workdir)["beat"]
        deadline = time.monotonic() + 30
        while read_status(workdir)["beat"] < first + 3:
            assert time.monotonic() < deadline, "the heartbeat did not renew the status"
            time.sleep(0.02)
        assert read_status(workdir)["state"] == "running" and read_status(workdir)["step"] == 5
        status.ended(None, step=7, export="X/export")
        renewed = json.loads((tmp_path / rundir.LEASE_FILE).read_text())["heartbeat"]
        for _ in range(2):  # two more lease renewals, each followed by a heartbeat call
            while json.loads((tmp_path / rundir.LEASE_FILE).read_text())["heartbeat"] == renewed:
                assert time.monotonic() < deadline, "the lease stopped renewing"
                time.sleep(0.02)
            renewed = json.loads((tmp_path / rundir.LEASE_FILE).read_text())["heartbeat"]
    finally:
        lease.release()
    assert (read_status(workdir)["state"], read_status(workdir)["step"]) == ("finished", 7)
