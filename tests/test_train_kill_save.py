"""kill -9 at chosen moments of a checkpoint save to gs:// (the GCS emulator), then the same command.

The emulator (``gcs_journal_emulator.py``) reports each object of the step-20 checkpoint as it is
stored and holds the save there for a moment, so each case kills the run exactly: after the first
object of the step (before any manifest), right after an OCDBT manifest (the save half-written),
right after the items' own markers (``state/commit_success.txt``, the step's not yet written) and
right after the step's ``commit_success.txt``. Every rerun must complete and export the bytes of
a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.gcs import BUCKET, _gcs_env, start_emulator
from tests.helpers.training import _cmd, _run

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

EMULATOR = Path(__file__).with_name("gcs_journal_emulator.py")
STEPS, EVERY, KILLED_STEP = 30, 10, 20
PATTERN = f"/checkpoints/{KILLED_STEP}/"
PAUSE_S = 1.0
EXTRA = ("--max-steps", str(STEPS), "--checkpoint-every", str(EVERY))
STEP_MARKER = f"/checkpoints/{KILLED_STEP}/commit_success.txt"  # the step is complete (Orbax on gs://)
MOMENTS = {  # when to kill: the first journal line (an object of the step's save) that matches
    "before_manifest": lambda name: True,
    "after_a_manifest": lambda name: name.endswith("manifest.ocdbt"),
    "after_the_items_markers": lambda name: name.endswith("/state/commit_success.txt"),
    "after_the_step_marker": lambda name: name.endswith(STEP_MARKER),
}


@pytest.fixture(scope="module")
def journal_gcs(tmp_path_factory):
    journal = tmp_path_factory.mktemp("journal") / "uploads.txt"
    journal.touch()
    proc, port = start_emulator(
        [str(EMULATOR), BUCKET, str(journal), PATTERN, str(PAUSE_S)], journal.with_name("emulator.log")
    )
    yield _gcs_env(port), journal
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def local_export_sha(setup):
    workdir = setup["root"] / "kill_save_reference"
    _run(setup, workdir, *EXTRA)
    return hashlib.sha256((workdir / "export" / "model.safetensors").read_bytes()).hexdigest()


def _uploads(journal: Path, run: str) -> list[str]:
    return [line for line in journal.read_text().splitlines() if f"{run}/checkpoints/" in line]


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_during_a_gs_save_then_rerun_completes_identically(
    setup,
    journal_gcs,
    local_export_sha,
    tmp_path,
    monkeypatch,
    moment,
):
    gcs_env, journal = journal_gcs
    for key, value in gcs_env.items():
        monkeypatch.setenv(key, value)
    env = dict(setup["env"], **gcs_env)
    run = f"kill-{moment}"
    workdir = f"gs://{BUCKET}/{run}"
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_cmd(setup, workdir, *EXTRA), env=env, cwd=tmp_path, stdout=log, stderr=log)
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    fs = gcsfs.GCSFileSystem()
    marker = f"{workdir}/checkpoints/{KILLED_STEP}/commit_success.txt"
    reached = None
    deadline = time.monotonic() + 400
    while reached is None and time.monotonic() < deadline and proc.poll() is None:
        reached = next((n for n in _uploads(journal, run) if MOMENTS[moment](n)), None)
        if reached is not None and moment == "after_the_step_marker" and not fs.exists(marker):
            # a journal line can come before the object is readable: wait until the marker is
            fs.invalidate_cache()
            reached = None
        if reached is None:
            time.sleep(0.05)
    if reached is not None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert reached is not None, f"the save never reached {moment}: {log_path.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    uploaded = _uploads(journal, run)
    assert all(PATTERN in n for n in uploaded)  # nothing of a later step had been written yet
    fs.invalidate_cache()
    committed = fs.exists(marker)  # what a rerun will find, not what the journal says was sent
    assert committed == (moment == "after_the_step_marker"), uploaded

    rerun = subprocess.run(
        _cmd(setup, workdir, *EXTRA), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = KILLED_STEP if committed else KILLED_STEP - EVERY
    assert f"resumed from step {resumed} " in rerun.stderr, rerun.stderr[-6000:]
    assert "Traceback" not in rerun.stderr and "Exception ignored" not in rerun.stderr
    gcsfs.GCSFileSystem.clear_instance_cache()
    exported = gcsfs.GCSFileSystem().cat(f"{workdir}/export/model.safetensors")
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert hashlib.sha256(exported).hexdigest() == local_export_sha


def test_sigterm_with_a_periodic_save_in_flight_stops_within_30_s(
    setup,
    journal_gcs,
    tmp_path,
    monkeypatch,
):
    """A preempted VM gets 30 s: the stop finishes the save in flight instead of queueing another."""
    gcs_env, journal = journal_gcs
    for key, value in gcs_env.items():
        monkeypatch.setenv(key, value)
    env = dict(setup["env"], **gcs_env)
    run = "sigterm-in-flight"
    workdir = f"gs://{BUCKET}/{run}"
    log_path = tmp_path / "sigterm.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_cmd(setup, workdir, *EXTRA), env=env, cwd=tmp_path, stdout=log, stderr=log)
    deadline = time.monotonic() + 400
    while not _uploads(journal, run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert _uploads(journal, run), log_path.read_text()[-3000:]
    signalled = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    took = time.monotonic() - signalled
    text = log_path.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    print(f"SIGTERM with the step-{KILLED_STEP} save in flight: exited after {took:.1f}s")
    assert took < 30, text[-3000:]
    assert f"(of step {KILLED_STEP}: the save that was in flight)" in text, text[-3000:]
    import json

    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    fs = gcsfs.GCSFileSystem()
    assert fs.exists(f"{workdir}/checkpoints/{KILLED_STEP}/commit_success.txt")
    status = json.loads(fs.cat(f"{workdir}/run_status.json"))
    assert (status["state"], status["exit_code"], status["step"]) == ("stopped", 143, KILLED_STEP)
    assert not fs.exists(f"{workdir}/lease.json")
    gcsfs.GCSFileSystem.clear_instance_cache()
