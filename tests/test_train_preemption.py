"""A run directory you can trust: SIGTERM (one and two processes), a busy workdir, hosts that do not
share the workdir, damaged checkpoints, a broken metrics line and the config digest on restore."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autext_jax import errors
from autext_jax.train import __main__ as train_cli
from autext_jax.train.metric_writers import METRICS_FILE
from tests.helpers.training import _cmd, _free_port, _records, _run, _start, _wait_for_step

STEPS = 60
SLOW = ("--set", "checkpoint.every_steps=1000")  # no periodic save: only the stop's checkpoint exists


def _dist(port: int, i: int) -> tuple[str, ...]:
    return ("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))


def _same_export(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "config.json"):
        assert (a / "export" / name).read_bytes() == (b / "export" / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(setup):
    workdir = setup["root"] / "preemption_reference"
    _run(setup, workdir, "--max-steps", str(STEPS), *SLOW)
    return workdir


def test_sigterm_saves_exits_143_and_resumes_identically(setup, reference):
    workdir = setup["root"] / "sigterm_one"
    extra = ("--max-steps", str(STEPS), *SLOW)
    proc, log = _start(setup, workdir, *extra, name="sigterm_one")
    _wait_for_step(workdir, 5, [proc])
    proc.send_signal(signal.SIGSTOP)  # paused (not finished) while a second run tries the workdir
    # A second run on the busy workdir is refused at once, with one line.
    started = time.monotonic()
    busy = subprocess.run(_cmd(setup, workdir, *extra), env=setup["env"], capture_output=True, text=True)
    assert busy.returncode == errors.EXIT_USAGE and time.monotonic() - started < 60
    assert "is in use by another run" in busy.stderr and "Traceback" not in busy.stderr
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGCONT)
    proc.wait(timeout=30)
    assert time.monotonic() - signalled < 30
    text = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text and "with a checkpoint saved" in text
    stopped = max(r["step"] for r in _records(workdir, "train"))
    status = json.loads((workdir / "run_status.json").read_text())
    assert (status["state"], status["exit_code"], status["step"]) == ("stopped", 143, stopped)
    resumed = _run(setup, workdir, *extra)
    assert f"resumed from step {stopped} " in resumed.stderr
    assert [r["step"] for r in _records(workdir, "train")] == list(range(1, STEPS + 1))
    _same_export(workdir, reference)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(setup):
    extra = ("--max-steps", str(STEPS), *SLOW)
    reference, workdir = setup["root"] / "two_reference", setup["root"] / "sigterm_two"

    def both(target: Path, name: str):
        port = _free_port()
        return [_start(setup, target, *extra, *_dist(port, i), name=f"{name}{i}") for i in range(2)]

    runs = both(reference, "two_reference")
    assert [p.wait(timeout=600) for p, _ in runs] == [0, 0], runs[0][1].read_text()[-3000:]
    runs = both(workdir, "sigterm_two")
    _wait_for_step(workdir, 5, [p for p, _ in runs])
    runs[1][0].send_signal(signal.SIGTERM)  # only the second process is told
    for proc, log in runs:
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    # Progress is logged by process 0 only; the other keeps to warnings.
    assert "training rows" in runs[0][1].read_text() and "training rows" not in runs[1][1].read_text()
    stopped = max(r["step"] for r in _records(workdir, "train"))
    runs = both(workdir, "sigterm_two_resume")
    assert [p.wait(timeout=600) for p, _ in runs] == [0, 0], runs[0][1].read_text()[-3000:]
    assert f"resumed from step {stopped} " in runs[0][1].read_text()
    _same_export(workdir, reference)


def test_processes_that_do_not_share_the_workdir_exit_2(setup):
    port = _free_port()
    started = time.monotonic()
    runs = [
        _start(setup, setup["root"] / f"host{i}", "--max-steps", "3", *_dist(port, i), name=f"unshared{i}")
        for i in range(2)
    ]
    for proc, log in runs:
        proc.wait(timeout=90)
        text = log.read_text()
        assert proc.returncode == errors.EXIT_USAGE, text[-3000:]
        assert "do not see the --workdir" in text and "Traceback" not in text
    assert time.monotonic() - started < 60


def _newest(workdir: Path) -> Path:
    return max(
        (p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(setup, reference, damage):
    workdir = setup["root"] / f"damaged_{damage}"
    extra = ("--max-steps", str(STEPS), "--checkpoint-every", "10")
    _run(setup, workdir, *extra)
    newest = _newest(workdir)
    files = sorted((f for f in (newest / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    if damage == "missing":
        for f in files:
            if f.parent.name == "d":
                f.unlink()
    else:
        for f in files:
            if f.parent.name == "d":
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    shutil.rmtree(workdir / "export")
    with (workdir / METRICS_FILE).open("a") as f:
        f.write('{"split": "train", "st')  # a run killed in the middle of a line
    rerun = _run(setup, workdir, *extra)
    assert f"checkpoint {newest.name} in " in rerun.stderr and "cannot be restored" in rerun.stderr
    assert "resumed from step 50 " in rerun.stderr and "Traceback" not in rerun.stderr
    assert "Exception ignored" not in rerun.stderr and rerun.stderr.count("abandoned checkpoint") <= 1
    assert [r["step"] for r in _records(workdir, "train")] == list(range(1, STEPS + 1))
    _same_export(workdir, reference)


def test_config_digest_in_the_checkpoint_is_checked(setup, reference, tmp_path, capsys):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    os.remove(workdir / "train_config.json")  # only the checkpoint still knows the config
    base = [*setup["base"], "--workdir", str(workdir), "--max-steps", str(STEPS)]
    code = train_cli.main([*base, "--set", "seed=5"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE and "config digest" in err and "allow_config_change" in err
