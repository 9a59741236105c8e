"""``python -m tools.cloud_tpu``: the exact gcloud commands of ``--dry-run``, one-line usage errors, and
the launcher against a simulated slice (``tests/fake_gcloud.py``) where a small stand-in project is
shipped, installed with uv and "trained": watch's decisions on describe failures, crashes on an ACTIVE
slice, ALREADY_EXISTS, preemption, and the per-worker shards of ``score``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_gcloud import FakeCloud
from tests.helpers.cloud_tpu import REPO, WHERE, gcs, make_stand_in, tool, verbs, watch, watch_argv

CREATE = (
    "gcloud compute tpus queued-resources create upb --node-id=upb --zone=us-west4-a "
    "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot"
)
STATE = "gcloud compute tpus queued-resources describe upb --zone=us-west4-a '--format=json(state)'"
DELETE = "gcloud compute tpus queued-resources delete upb --zone=us-west4-a --force --quiet"


@pytest.fixture
def no_gcloud(tmp_path) -> dict:
    """An environment whose gcloud fails loudly: a dry run must never call it."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "gcloud"
    fake.write_text("#!/bin/sh\necho 'a dry run ran gcloud' >&2\nexit 99\n")
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["create", *WHERE, "--accelerator-type", "v5litepod-16", "--spot"], [CREATE, STATE]),
        (
            ["create", *WHERE, "--project", "p1", "--accelerator-type", "v4-32", "--runtime-version", "rv"],
            [
                "gcloud compute tpus queued-resources create upb --node-id=upb --zone=us-west4-a "
                "--project=p1 --accelerator-type=v4-32 --runtime-version=rv",
                STATE.replace("a '", "a --project=p1 '"),
            ],
        ),
        (["delete", *WHERE], [DELETE]),
        (
            ["logs", *WHERE, "--worker", "2", "--lines", "20", "--follow", "--file", "score"],
            [
                "gcloud compute tpus tpu-vm ssh upb --zone=us-west4-a --worker=2 --quiet "
                "--strict-host-key-checking=no --command 'tail -F -n 20 ~/autext-score.log'"
            ],
        ),
        (
            ["logs", *WHERE, "--workdir", "gs://bkt/run", "--worker", "1"],
            [
                "gcloud storage ls gs://bkt/run/logs/",
                "gcloud storage cat gs://bkt/run/logs/LAUNCH/worker-1.log",
            ],
        ),
    ],
)
def test_dry_run_prints_the_exact_gcloud_commands(args, expected, no_gcloud):
    proc = tool(*args, "--dry-run", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected


def test_setup_dry_run_ships_the_committed_checkout_and_installs_with_uv(no_gcloud):
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    proc = tool("setup", *WHERE, "--dry-run", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    archive, scp, ssh = proc.stdout.splitlines()
    assert archive.startswith(f"git -C {REPO} archive --format=tar.gz -o ") and archive.endswith(head.strip())
    assert scp.startswith("gcloud compute tpus tpu-vm scp ") and scp.endswith(
        "/autext-src.tar.gz upb:autext-src.tar.gz --zone=us-west4-a --worker=all --quiet "
        "--strict-host-key-checking=no"  # never a prompt (passphrase, a re-created slice's new host key)
    )
    assert ssh.startswith(
        "gcloud compute tpus tpu-vm ssh upb --zone=us-west4-a --worker=all --quiet "
        "--strict-host-key-checking=no --command "
    )
    for part in (
        f"echo {head.strip()} > ~/autext_jax/.source-commit",
        "uv venv --quiet --python 3.11 ~/autext-venv",
        'uv pip install --quiet --python ~/autext-venv/bin/python -e "$HOME/autext_jax[tpu]"',
    ):
        assert part in ssh.replace("'\"'\"'", "'")
    assert "shipping commit" in proc.stderr


def test_train_dry_run_runs_the_venv_python_with_the_compile_cache_and_the_commit(no_gcloud):
    proc = tool(
        "train",
        *WHERE,
        "--dry-run",
        "--workdir",
        "gs://bkt/runs/upb",
        "--",
        "--set",
        "data.paths=gs://bkt/data",
        env=no_gcloud,
    )
    assert proc.returncode == 0, proc.stderr
    (ssh,) = proc.stdout.splitlines()
    assert "--worker=all --quiet --strict-host-key-checking=no" in ssh
    assert "nohup setsid bash -c" in ssh and ssh.endswith("& echo $! > ~/autext-train.pid'")
    assert (
        "~/autext-venv/bin/python -m autext_jax.train --config configs/upb_mtl.py --workdir "
        "gs://bkt/runs/upb --distributed auto --compile-cache gs://bkt/runs/upb/compile_cache --set "
        'data.paths=gs://bkt/data >> "$log" 2>&1'
    ) in ssh
    (launch,) = re.findall(r"log=\$HOME/autext-train-([0-9TZ.-]+)\.log", ssh)  # one log per launch, kept
    assert f'gcloud storage cp "$log" gs://bkt/runs/upb/logs/{launch}/worker-"$w".log' in ssh
    assert "while sleep 60; do copy; done" in ssh  # copied every minute and when training exits
    assert 'export AUTEXT_JAX_SOURCE_COMMIT="$(cat ~/autext_jax/.source-commit' in ssh
    assert "kill -TERM" in ssh and "/dev/accel" in ssh  # an earlier run and TPU holders are cleared first
    assert "queued-resources delete" not in ssh  # only watch (without --keep) makes worker 0 delete


def test_score_dry_run_gives_each_worker_its_shard(no_gcloud):
    proc = tool(
        "score",
        *WHERE,
        "--dry-run",
        "--workers",
        "4",
        "--",
        "-i",
        "gs://bkt/in/*.parquet",
        "-o",
        "gs://bkt/scores/",
        env=no_gcloud,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines):
        assert f"--worker={i} " in line and f"export AUTEXT_JAX_SHARD={i}/4;" in line
        assert (
            "~/autext-venv/bin/python -m autext_jax.infer -i 'gs://bkt/in/*.parquet' -o gs://bkt/scores/ "
            "--shard auto > ~/autext-score.log" in line.replace("'\"'\"'", "'")
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", *WHERE, "--workdir", "runs/local"], "use gs://BUCKET/PATH"),
        (["create", *WHERE, "--accelerator-type", "v3-8"], "no default runtime for --accelerator-type v3-8"),
        (["train", *WHERE, "--workdir", "gs://b/r", "--", "--dry-run"], "--dry-run must come before --"),
        (["score", *WHERE, "--dry-run", "--", "-i", "x"], "pass --workers N"),
        (["setup", *WHERE, "--source", "/"], "is not in a git checkout"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, message, no_gcloud):
    proc = tool(*args, env=no_gcloud)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


# --- the simulated slice -------------------------------------------------------------------------------


@pytest.fixture
def stand_in(tmp_path) -> Path:
    return make_stand_in(tmp_path / "checkout")


def test_watch_describe_failures_are_retried_and_never_delete_a_healthy_slice(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    fake.plan(create_exists=0)
    assert (
        tool("create", *WHERE, "--accelerator-type", "v5litepod-16", "--poll", "0", env=fake.env()).returncode
        == 0
    )
    fake.plan(describe_failures=2)
    proc = watch(fake, stand_in)
    assert proc.returncode == 0, proc.stderr
    called = verbs(fake)
    assert called.count("delete") == 1 and called[-1] == "delete"  # only after the run finished
    assert called.count("create") == 1
    assert "describe failed (try 2 of 5)" in proc.stderr
    assert "is ACTIVE, no run status: setting up and launching" in proc.stderr
    assert "run finished at step 10, export in gs://bkt/run/export; deleting slice upb" in proc.stderr
    head = subprocess.run(["git", "-C", str(stand_in), "rev-parse", "HEAD"], capture_output=True, text=True)
    for worker in ("0", "1"):  # each worker ran the shipped code in its own uv venv with Python 3.11
        seen = json.loads(gcs(fake, f"seen-{worker}.json"))
        assert seen["commit"] == head.stdout.strip() and seen["python"] == [3, 11]
        assert seen["exe"].endswith("autext-venv/bin/python") and f"worker-{worker}" in seen["exe"]
        assert "--compile-cache" in seen["argv"] and "gs://bkt/run/compile_cache" in seen["argv"]


def test_watch_relaunches_a_crash_on_an_active_slice_then_gives_up(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    proc = watch(fake, stand_in, "--max-restarts", "2", "--keep", script="crash@10")
    assert proc.returncode == 1, proc.stderr
    assert gcs(fake, "launches") == "3"  # the first launch and two relaunches
    assert "on an ACTIVE slice: relaunching (1 of 2)" in proc.stderr
    assert "on an ACTIVE slice: relaunching (2 of 2)" in proc.stderr
    assert (
        "giving up: run failed at step 10 (exit 1) on an ACTIVE slice, after 2 relaunches without progress"
    ) in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("python -m tools.cloud_tpu: error: watch gave up")
    assert verbs(fake).count("create") == 1 and "delete" not in verbs(fake)  # --keep


def test_a_crash_on_the_last_allowed_launch_makes_worker_0_delete_the_slice(tmp_path, stand_in):
    """Without ``--keep``, the launch that may not be relaunched deletes its own slice when it fails,
    ``watch`` gone or not (here gone: killed once the run is going, before the crash)."""
    fake = FakeCloud(tmp_path / "cloud")
    restarts = ("--max-restarts", "0")
    argv = [sys.executable, "-m", "tools.cloud_tpu", *watch_argv(stand_in, *restarts, script="gatedcrash@10")]
    log = tmp_path / "watch.log"
    proc = subprocess.Popen(
        argv, env=dict(fake.env(), PYTHONPATH=str(REPO)), stdout=log.open("w"), stderr=log.open("a")
    )
    try:
        deadline = time.monotonic() + 120
        while '"running"' not in _read(fake.root / "gcs" / "bkt" / "run" / "run_status.json"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    (fake.root / "gcs" / "bkt" / "run" / "go").write_text("crash now")
    while (fake.root / "qr" / "upb.json").exists():
        assert time.monotonic() < deadline + 60, "worker 0 did not delete its slice"
        time.sleep(0.1)
    assert [c[3] for c in fake.calls(workers=True) if c[:2] == ["compute", "tpus"]] == ["delete"]
    (launch,) = (fake.root / "gcs" / "bkt" / "run" / "logs").iterdir()
    assert (
        "the run ended for good (exit 1): worker 0 deletes the slice" in (launch / "worker-0.log").read_text()
    )
    assert (launch / "slice-deleted.txt").read_text().strip() == "the run ended for good (exit 1)"


def test_a_crash_before_any_status_on_the_last_launch_ends_watch_without_a_re_create(tmp_path, stand_in):
    """Worker 0 deleted the slice (the run ended for good before writing a status, e.g. an import error):
    watch reads why and gives up, instead of taking the gone slice for a lost one and re-creating it."""
    fake = FakeCloud(tmp_path / "cloud")
    proc = watch(fake, stand_in, "--max-restarts", "0", script="importerror@0")
    assert proc.returncode == 1, proc.stderr
    assert "giving up: worker 0 deleted slice upb: the run ended for good (exit 1)" in proc.stderr
    assert verbs(fake).count("create") == 1 and "re-creating" not in proc.stderr


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_progress_on_the_last_allowed_launch_keeps_the_slice(tmp_path, stand_in):
    """The last launch failed after a newer checkpoint: the budget resets, so worker 0 must not delete."""
    fake = FakeCloud(tmp_path / "cloud")
    proc = watch(fake, stand_in, "--max-restarts", "1", script="crash@10 crash@20")
    assert proc.returncode == 1, proc.stderr
    assert "restart budget reset" in proc.stderr and gcs(fake, "launches") == "3"
    second = sorted((fake.root / "gcs" / "bkt" / "run" / "logs").iterdir())[1] / "worker-0.log"
    assert "training exited with code 1" in second.read_text()  # the last allowed launch at the time ...
    assert "deletes the slice" not in second.read_text()  # ... made progress: the slice stayed
    assert verbs(fake).count("create") == 1 and "giving up: run failed at step 20" in proc.stderr


def test_watch_crash_then_success_with_keep_and_already_exists(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    fake.plan(create_exists=2, provision_polls=2)
    proc = watch(fake, stand_in, "--keep", script="crash@10 finish@10")
    assert proc.returncode == 0, proc.stderr
    assert verbs(fake).count("create") == 3  # ALREADY_EXISTS twice, retried
    assert "create failed (try 2 of 4)" in proc.stderr and "ALREADY_EXISTS" in proc.stderr
    assert "slice upb is PROVISIONING: waiting" in proc.stderr
    assert "relaunching (1 of 3)" in proc.stderr and "keeping slice upb (--keep)" in proc.stderr
    assert "delete" not in verbs(fake)  # neither watch nor worker 0 deleted it
    assert all(c[0] == "storage" for c in fake.calls(workers=True))
    assert json.loads((fake.root / "qr" / "upb.json").read_text())["state"] == "ACTIVE"


def test_watch_recreates_a_preempted_slice(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    assert (
        tool("create", *WHERE, "--accelerator-type", "v5litepod-16", "--poll", "0", env=fake.env()).returncode
        == 0
    )
    fake.preempt("upb", grace=0)
    proc = watch(fake, stand_in)
    assert proc.returncode == 0, proc.stderr
    assert "slice upb is SUSPENDED: re-creating it (1 of 50)" in proc.stderr
    assert verbs(fake).count("delete") == 2 and verbs(fake).count("create") == 2


def test_setup_ships_uncommitted_changes_only_when_asked(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    assert tool("create", *WHERE, "--poll", "0", env=fake.env()).returncode == 0
    (stand_in / "NEW.txt").write_text("local change")
    proc = tool("setup", *WHERE, "--source", str(stand_in), env=fake.env())
    assert proc.returncode == 0, proc.stderr
    assert "1 uncommitted change(s) NOT included" in proc.stderr
    assert not (fake.worker("upb", 1) / "autext_jax" / "NEW.txt").exists()
    proc = tool("setup", *WHERE, "--source", str(stand_in), "--include-uncommitted", env=fake.env())
    assert proc.returncode == 0, proc.stderr
    for i in (0, 1):
        assert (fake.worker("upb", i) / "autext_jax" / "NEW.txt").read_text() == "local change"
        assert (
            (fake.worker("upb", i) / "autext_jax" / ".source-commit").read_text().strip().endswith("+dirty")
        )
    assert (
        subprocess.run(
            ["git", "-C", str(stand_in), "status", "--porcelain"], capture_output=True, text=True
        ).stdout.strip()
        == "?? NEW.txt"
    )  # the user's index is untouched


def test_score_runs_on_every_worker_with_its_own_shard(tmp_path, stand_in):
    fake = FakeCloud(tmp_path / "cloud")
    fake.plan(workers=3)
    assert tool("create", *WHERE, "--poll", "0", env=fake.env()).returncode == 0
    assert tool("setup", *WHERE, "--source", str(stand_in), env=fake.env()).returncode == 0
    probe = (
        "import os, pathlib; pathlib.Path.home().joinpath('shard').write_text("
        "os.environ['AUTEXT_JAX_SHARD'] + ' ' + os.environ['TPU_WORKER_ID'] + ' ' + "
        "os.environ['TPU_WORKER_HOSTNAMES'])"
    )
    (stand_in / "autext_jax" / "infer.py").write_text(probe)  # the stand-in scorer: records what it saw
    assert (
        tool("setup", *WHERE, "--source", str(stand_in), "--include-uncommitted", env=fake.env()).returncode
        == 0
    )
    proc = tool("score", *WHERE, "--", "-i", "gs://bkt/in", "-o", "gs://bkt/out/", env=fake.env())
    assert proc.returncode == 0, proc.stderr
    assert "scoring started on 3 worker(s)" in proc.stderr
    for i in range(3):
        shard = fake.worker("upb", i) / "shard"
        for _ in range(100):
            if shard.exists() and shard.read_text():
                break
            time.sleep(0.1)
        assert shard.read_text() == f"{i}/3 {i} localhost,localhost,localhost"
