"""``watch`` left overnight, on the simulated slice (``tests/fake_gcloud.py``) with the stand-in project
(``tests/helpers/cloud_tpu.py``): a run killed on an ACTIVE slice is relaunched, a stale status is never
adopted, every loop gives up with its reason, usage errors come before anything is created, no call can
prompt or hang, logs outlive the slice, the slice is deleted only after ``finished`` — by worker 0 itself
when ``watch`` is gone, and at the ``--max-hours`` deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_gcloud import FakeCloud
from tests.helpers.cloud_tpu import (
    REPO,
    WHERE,
    gcs,
    make_stand_in,
    put_status,
    status,
    tool,
    verbs,
    watch,
    watch_argv,
)


@pytest.fixture
def stand_in(tmp_path) -> Path:
    return make_stand_in(tmp_path / "checkout")


@pytest.fixture
def fake(tmp_path) -> FakeCloud:
    return FakeCloud(tmp_path / "cloud")


def _create(fake: FakeCloud) -> None:
    assert tool("create", *WHERE, "--poll", "0", env=fake.env()).returncode == 0


def _wait(what: str, check, timeout: float = 120.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _background_watch(fake: FakeCloud, stand_in: Path, log: Path, *extra: str, script: str, skew: float = 0):
    argv = [sys.executable, "-m", "tools.cloud_tpu", *watch_argv(stand_in, *extra, script=script, skew=skew)]
    return subprocess.Popen(
        argv,
        env=dict(fake.env(), PYTHONPATH=str(REPO)),
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _status_or_none(fake: FakeCloud) -> dict | None:
    try:
        return status(fake)
    except (OSError, ValueError):
        return None


def _decisions(text: str) -> list[str]:
    return [line for line in text.splitlines() if " cloud_tpu: " in line]


def test_a_run_killed_on_an_active_slice_is_relaunched_and_a_live_one_adopted(fake, stand_in, tmp_path):
    """A run started before ``watch`` is adopted once its heartbeat moves — though its VM's clock is an
    hour behind (no clocks are compared); kill -9 of its process leaves ``running`` in the status, and the
    silent heartbeat gets it relaunched after ``--stale-after``."""
    _create(fake)
    assert tool("setup", *WHERE, "--source", str(stand_in), env=fake.env(), timeout=300).returncode == 0
    started = tool(
        "train",
        *WHERE,
        "--workdir",
        "gs://bkt/run",
        "--",
        "--script",
        "beat@10 finish@20",
        "--skew",
        "-3600",
        env=fake.env(),
    )
    assert started.returncode == 0, started.stderr
    _wait("the run's first heartbeats", lambda: (_status_or_none(fake) or {}).get("beat", 0) >= 2)
    log = tmp_path / "watch.log"
    proc = _background_watch(fake, stand_in, log, script="beat@10 finish@20", skew=-3600)
    try:
        _wait("watch adopting the run", lambda: "watching the run going" in log.read_text())
        assert fake.kill("upb", "-m", "autext_jax.train") == 1  # worker 0's training process (OOM, kill -9)
        killed = time.monotonic()
        _wait("the relaunch", lambda: "the run died: relaunching" in log.read_text())
        took = time.monotonic() - killed
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        proc.kill()
    text = log.read_text()
    print("\n".join(_decisions(text)))
    print(f"death to relaunch decision: {took:.1f} s (--stale-after 4, --poll 0.2)")
    # Not long before the heartbeat went silent for --stale-after (a write in flight at the kill may
    # still land, a little after it), and it came.
    assert 2.0 < took < 60, text
    assert (
        "slice upb is ACTIVE and the status says running (step 10): adopting it only if its heartbeat" in text
    )
    assert "relaunching (1 of 3)" in text and gcs(fake, "launches") == "2"
    assert status(fake)["state"] == "finished" and verbs(fake).count("create") == 1  # the same slice


def test_a_stale_running_status_is_never_adopted(fake, stand_in):
    """A day-old ``running`` status (watch restarted after a reboot, a re-create whose setup failed): the
    heartbeat never moves, so watch launches the run instead of watching a corpse."""
    _create(fake)
    put_status(
        fake, state="running", exit_code=None, step=1000, updated=time.time() - 86400, beat=7, host="old"
    )
    proc = watch(fake, stand_in)
    print("\n".join(_decisions(proc.stderr)))
    assert proc.returncode == 0, proc.stderr
    assert (
        "status says running (step 1000): adopting it only if its heartbeat moves within 4 s" in proc.stderr
    )
    assert "(step 1000): a stale status, no run is going; setting up and launching" in proc.stderr
    assert "watching the run going" not in proc.stderr
    assert gcs(fake, "launches") == "1" and status(fake)["state"] == "finished"


def test_a_setup_that_always_fails_gives_up_and_deletes_the_slice(fake, stand_in):
    fake.plan(ssh_fails="uv pip install")  # a pip failure on every worker, every time
    proc = watch(fake, stand_in, "--tries", "2")
    assert proc.returncode == 1, proc.stderr
    assert "setup failed (1 of 3 in a row)" in proc.stderr and "setup failed (2 of 3 in a row)" in proc.stderr
    assert "giving up: setup failed 3 times in a row (--max-failures)" in proc.stderr
    installs = [c for c in fake.calls() if c[3:4] == ["ssh"] and "uv pip install" in c[-1]]
    assert len(installs) == 3 * 2  # three setups of two tries each, then no more
    assert verbs(fake)[-1] == "delete" and not (fake.root / "qr" / "upb.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--workdir": "runs/local"}, "use gs://BUCKET/PATH"),
        ({"--source": "/"}, "is not in a git checkout"),
        ({"--config": "configs/missing.py"}, "--config configs/missing.py is not in the code to ship"),
        ({"--workdir": "gs://bkt/run", "data": "gs://bkt/no-data"}, "gs://bkt/no-data does not exist"),
        ({"--init": "gs://bkt/no-init"}, "gs://bkt/no-init does not exist"),
        ({"logged out": ""}, "gcloud has no active account: run `gcloud auth login`"),
        ({"--repo": "/nonexistent/repo.git"}, "--repo /nonexistent/repo.git --ref main:"),
    ],
)
def test_usage_and_environment_errors_come_before_anything_is_created(fake, stand_in, change, message):
    argv = watch_argv(stand_in)
    for flag, value in change.items():
        if flag == "logged out":
            fake.plan(account="")
        elif flag == "data":
            argv += ["--set", f"data.paths={value}"]
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv[1:1] = [flag, value]
    proc = tool(*argv, env=fake.env())
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert "create" not in verbs(fake) and not (fake.root / "qr").exists()  # nothing billed


def test_no_call_can_prompt_or_hang(fake, stand_in):
    """Every ssh/scp is non-interactive; a launch whose ssh hangs is killed at --ssh-timeout and retried."""
    fake.plan(ssh_hangs=["autext-train.pid", 1])
    proc = watch(fake, stand_in, "--ssh-timeout", "5")
    assert proc.returncode == 0, proc.stderr
    assert "train failed (try 1 of 4)" in proc.stderr and "no answer within 5 s: killed" in proc.stderr
    remote = [c for c in fake.calls() if c[:3] == ["compute", "tpus", "tpu-vm"] and c[3] in ("ssh", "scp")]
    assert remote and all("--quiet" in c and "--strict-host-key-checking=no" in c for c in remote)


def test_logs_of_every_launch_outlive_the_slice(fake, stand_in):
    proc = watch(fake, stand_in, script="crash@10 finish@20")
    assert proc.returncode == 0, proc.stderr
    assert not (fake.root / "qr" / "upb.json").exists()  # the slice is gone; its logs are not
    launches = sorted(p.name for p in (fake.root / "gcs" / "bkt" / "run" / "logs").iterdir())
    assert len(launches) == 2
    logs = ["logs", *WHERE, "--workdir", "gs://bkt/run"]
    newest = tool(*logs, env=fake.env())
    assert newest.returncode == 0, newest.stderr
    assert "stand-in launch 2: finish" in newest.stdout and "training exited with code 0" in newest.stdout
    assert f"launch {launches[-1]} (the newest of 2" in newest.stderr
    crashed = tool(*logs, "--launch", launches[0], env=fake.env())
    assert "stand-in launch 1: crash" in crashed.stdout and "training exited with code 1" in crashed.stdout
    worker_1 = tool(*logs, "--launch", launches[0], "--worker", "1", env=fake.env())
    assert f"cloud_tpu: launch {launches[0]} on worker 1" in worker_1.stdout


def test_the_slice_is_deleted_only_after_the_run_says_finished(fake, stand_in):
    """The export's config.json comes first; calibration and the rest take a while: no delete before
    ``finished`` (a delete then would kill the run: its status would stay ``running``)."""
    proc = watch(fake, stand_in, "--keep", script="slowexport@10")
    assert proc.returncode == 0, proc.stderr
    assert status(fake)["state"] == "finished"
    assert "run finished at step 10, export in gs://bkt/run/export; keeping slice upb (--keep)" in proc.stderr


def test_worker_0_deletes_the_slice_when_the_run_finishes_with_watch_gone(fake, stand_in, tmp_path):
    log = tmp_path / "watch.log"
    proc = _background_watch(fake, stand_in, log, script="gatedfinish@10")
    try:
        _wait("the run to start", lambda: (_status_or_none(fake) or {}).get("state") == "running")
        proc.send_signal(signal.SIGKILL)  # laptop asleep, credentials expired, watch killed
        proc.wait(timeout=30)
    finally:
        proc.kill()
    (fake.root / "gcs" / "bkt" / "run" / "go").write_text("finish now")
    _wait("worker 0 deleting its slice", lambda: not (fake.root / "qr" / "upb.json").exists(), timeout=120)
    assert status(fake)["state"] == "finished"
    assert [c[3] for c in fake.calls(workers=True) if c[:2] == ["compute", "tpus"]] == ["delete"]
    (launch,) = (fake.root / "gcs" / "bkt" / "run" / "logs").iterdir()
    text = (launch / "worker-0.log").read_text()
    assert "the run ended for good (exit 0): worker 0 deletes the slice" in text


def test_the_max_hours_deadline_deletes_the_slice_with_watch_gone(fake, stand_in, tmp_path):
    log = tmp_path / "watch.log"
    hours = 45 / 3600  # 45 s from watch's start (the run starts well before)
    proc = _background_watch(fake, stand_in, log, "--max-hours", f"{hours:.8f}", script="beat@10")
    started = time.time()
    try:
        _wait("the run to start", lambda: (_status_or_none(fake) or {}).get("state") == "running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    _wait("the deadline's deletion", lambda: not (fake.root / "qr" / "upb.json").exists(), timeout=180)
    assert time.time() - started >= 44  # not before the deadline (the fake clocks are this machine's)
    (launch,) = (fake.root / "gcs" / "bkt" / "run" / "logs").iterdir()
    assert (
        "the --max-hours deadline passed: worker 0 deletes the slice" in (launch / "worker-0.log").read_text()
    )


def test_watch_itself_gives_up_at_the_deadline(fake, stand_in):
    proc = watch(fake, stand_in, "--max-hours", f"{8 / 3600:.8f}", script="beat@10")
    assert proc.returncode == 1, proc.stderr
    assert "giving up: the --max-hours 0.00222222 deadline passed; deleting slice upb" in proc.stderr


def test_the_restart_budget_resets_after_progress(fake, stand_in):
    """Three transient crashes in a night, each after a new checkpoint, must not end the run."""
    proc = watch(fake, stand_in, "--max-restarts", "1", script="crash@10 crash@20 crash@30 finish@40")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("relaunching (1 of 1)") == 3
    assert "progress: a checkpoint at step 20 (> 10); restart budget reset" in proc.stderr
    assert gcs(fake, "launches") == "4"


def test_a_permanent_failed_reason_is_printed_and_stops_at_once(fake, stand_in):
    quota = "Quota 'TPUV5sLitepodPerProjectPerZoneForTPUAPI' exceeded. Limit: 0.0 in zone us-west4-a."
    fake.plan(create_fails={"code": 8, "message": quota})
    proc = watch(fake, stand_in)
    assert proc.returncode == 1, proc.stderr
    assert f"slice upb is FAILED: {quota}" in proc.stderr
    assert "giving up: the slice FAILED for a reason re-creating cannot fix" in proc.stderr
    assert verbs(fake).count("create") == 1


def test_watch_dry_run_prints_every_command_and_a_valid_launch_script(stand_in, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gcloud").write_text("#!/bin/sh\necho 'a dry run ran gcloud' >&2\nexit 99\n")
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = tool(*watch_argv(stand_in, "--dry-run"), env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [" ".join(line.split()[:3]) for line in lines[:3]] == [
        "gcloud auth list",  # logged in?
        "gcloud storage cp",  # the workdir is writable: a probe written ...
        "gcloud storage rm",  # ... and removed
    ]
    for expected in (
        "git -C",
        "gcloud storage cat gs://bkt/run/run_status.json",
        "gcloud compute tpus queued-resources describe",
        "gcloud compute tpus queued-resources delete",
        "gcloud compute tpus queued-resources create",
        "gcloud compute tpus tpu-vm scp",
    ):
        assert any(line.startswith(expected) for line in lines), expected
    (launch,) = [line for line in lines if "autext-train.pid" in line]
    quoted = launch.split("--command ", 1)[1]
    inner = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True).stdout
    assert subprocess.run(["bash", "-n", "-c", inner]).returncode == 0, inner  # valid shell
    assert "queued-resources delete upb --zone=us-west4-a --force --quiet --async" in inner


def test_every_re_create_installs_the_code_packed_when_watch_started(fake, stand_in, tmp_path):
    """An edit committed overnight is not shipped into the resumed run."""
    head = subprocess.run(["git", "-C", str(stand_in), "rev-parse", "HEAD"], capture_output=True, text=True)
    log = tmp_path / "watch.log"
    proc = _background_watch(fake, stand_in, log, script="beat@10 finish@20")
    try:
        _wait("the run to start", lambda: (_status_or_none(fake) or {}).get("state") == "running")
        (stand_in / "autext_jax" / "overnight.py").write_text("EDITED = True\n")
        git = ["git", "-C", str(stand_in), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "an edit made overnight"], check=True)
        fake.preempt("upb", grace=0)
        assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        proc.kill()
    text = log.read_text()
    assert "slice upb is SUSPENDED: re-creating it (1 of 50)" in text
    assert gcs(fake, "launches") == "2" and status(fake)["step"] == 20  # the run after the re-create
    for worker in ("0", "1"):
        assert json.loads(gcs(fake, f"seen-{worker}.json"))["commit"] == head.stdout.strip()
