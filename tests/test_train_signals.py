"""Stopping a training run by hand or by Cloud TPU: Ctrl-C, a second Ctrl-C, ``stop_check_every``,
SIGTERM with the workdir on gs:// (where the compile cache also lives by default), run status and lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from autext_jax.train.checkpointing import CheckpointConfig, Checkpointer
from tests.helpers.gcs import _gcs_env, _gs_records
from tests.helpers.training import _cmd, _records, _run, _start, _wait_for_step

STEPS = 60


def _checkpoints(workdir) -> list[int]:
    ckpt = Checkpointer(str(workdir / "checkpoints"), CheckpointConfig())
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def _status(workdir) -> dict:
    return json.loads((workdir / "run_status.json").read_text())


def test_ctrl_c_saves_exits_130_at_a_stop_check_and_resumes(setup):
    workdir = setup["root"] / "ctrl_c"
    extra = (
        "--max-steps",
        str(STEPS),
        "--set",
        "checkpoint.every_steps=1000",
        "--set",
        "checkpoint.stop_check_every=7",
    )
    proc, log = _start(setup, workdir, *extra, name="ctrl_c")
    _wait_for_step(workdir, 3, [proc])
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "with a checkpoint saved" in text
    stopped = max(r["step"] for r in _records(workdir, "train"))
    assert stopped % 7 == 0 and _checkpoints(workdir) == [stopped]  # checked every 7 steps only
    assert (_status(workdir)["state"], _status(workdir)["exit_code"]) == ("stopped", 130)
    assert _status(workdir)["step"] == stopped and not (workdir / "lease.json").exists()
    resumed = _run(setup, workdir, *extra)
    assert f"resumed from step {stopped} " in resumed.stderr
    assert _status(workdir)["state"] == "finished"


def test_a_second_ctrl_c_interrupts_without_waiting(setup):
    workdir = setup["root"] / "ctrl_c_twice"
    # No stop check before the end: only the second Ctrl-C can end the run early.
    extra = (
        "--max-steps",
        "5000",
        "--set",
        "checkpoint.every_steps=5",
        "--set",
        "checkpoint.stop_check_every=100000",
    )
    proc, log = _start(setup, workdir, *extra, name="ctrl_c_twice")
    _wait_for_step(workdir, 12, [proc])
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, log.read_text()[-3000:]  # the first one waits for the stop check
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "interrupted" in text and "Traceback" not in text
    status = _status(workdir)
    assert (status["state"], status["exit_code"]) == ("stopped", 130)
    assert status["step"] == max(_checkpoints(workdir)) >= 10  # what a relaunch resumes from
    assert not (workdir / "lease.json").exists()


def test_sigterm_with_the_workdir_on_gs_keeps_the_compile_cache_there(setup, gs_in_process, tmp_path):
    fs = gs_in_process
    env = dict(setup["env"], **{k: os.environ[k] for k in _gcs_env(0)})
    env.pop("JAX_COMPILATION_CACHE_DIR")  # neither variable set: the default, WORKDIR/compile_cache
    env.pop("AUTEXT_JAX_COMPILE_CACHE", None)
    workdir = "gs://bkt/sigterm-gs"
    extra = ("--max-steps", str(STEPS), "--set", "checkpoint.every_steps=1000")
    log = tmp_path / "sigterm_gs.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_cmd(setup, workdir, *extra), env=env, cwd=tmp_path, stdout=out, stderr=out)
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        if any(r["step"] >= 3 for r in _gs_records(fs, workdir) if r["split"] == "train"):
            break
        time.sleep(0.2)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 143 and time.monotonic() - signalled < 30, text[-3000:]
    assert "with a checkpoint saved" in text and "Traceback" not in text
    status = json.loads(fs.cat(f"{workdir}/run_status.json"))
    assert (status["state"], status["exit_code"]) == ("stopped", 143) and status["step"] >= 3
    assert fs.exists(f"{workdir}/checkpoints/{status['step']}/commit_success.txt")
    assert fs.find(f"{workdir}/compile_cache"), "no compiled step in the workdir's compile cache"
    assert not fs.exists(f"{workdir}/lease.json")
    resumed = subprocess.run(
        _cmd(setup, workdir, *extra), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {status['step']} " in resumed.stderr
    assert json.loads(fs.cat(f"{workdir}/run_status.json"))["state"] == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sigterm_gs.log"]  # no local "gs:" folder
