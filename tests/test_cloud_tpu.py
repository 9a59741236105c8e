"""``tools/cloud_tpu.py``: the exact gcloud commands of ``--dry-run``, and ``watch`` relaunching after a
preemption against a fake ``gcloud`` on PATH (it records its arguments and plays back states)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "cloud_tpu.py"
WHERE = ["--name", "upb", "--zone", "us-west4-a"]
TRAIN = (
    "gcloud compute tpus tpu-vm ssh upb --zone=us-west4-a --worker=all --command 'cd ~/autext_jax && nohup "
    "python3 -m autext_jax.train --config configs/upb_mtl.py --workdir gs://bkt/runs/upb --distributed auto "
    "--set data.paths=gs://bkt/data --set '\"'\"'optimizer.learning_rate=3e-5'\"'\"' > ~/autext-train.log "
    "2>&1 < /dev/null &'"
)
SETUP = (
    "gcloud compute tpus tpu-vm ssh upb --zone=us-west4-a --worker=all --command 'set -e; [ -d "
    "~/autext_jax/.git ] || git clone https://example.com/autext_jax.git ~/autext_jax; cd ~/autext_jax; "
    "git fetch --quiet origin; git checkout --quiet v1; git pull --quiet --ff-only || true; python3 -m pip "
    "install --quiet --upgrade pip; python3 -m pip install --quiet -e '\"'\"'.[tpu]'\"'\"''"
)
STATE = "gcloud compute tpus queued-resources describe upb --zone=us-west4-a '--format=value(state.state)'"
CREATE = (
    "gcloud compute tpus queued-resources create upb --node-id=upb --zone=us-west4-a "
    "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot"
)
DELETE = "gcloud compute tpus queued-resources delete upb --zone=us-west4-a --force --quiet"


def _fake_gcloud(directory: Path, script: str) -> dict:
    """An environment whose ``gcloud`` is ``script``: no test can ever reach a real project."""
    directory.mkdir(exist_ok=True)
    fake = directory / "gcloud"
    fake.write_text(script)
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{directory}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))


@pytest.fixture
def no_gcloud(tmp_path) -> dict:
    return _fake_gcloud(tmp_path / "bin", "#!/bin/sh\necho 'a dry run ran gcloud' >&2\nexit 99\n")


def _tool(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["create", *WHERE, "--accelerator-type", "v5litepod-16", "--spot"], [CREATE, STATE]),
        (
            ["create", *WHERE, "--project", "p1", "--accelerator-type", "v4-32", "--runtime-version", "rv"],
            [
                "gcloud compute tpus queued-resources create upb --node-id=upb --zone=us-west4-a "
                "--project=p1 --accelerator-type=v4-32 --runtime-version=rv",
                STATE.replace("us-west4-a", "us-west4-a --project=p1"),
            ],
        ),
        (["setup", *WHERE, "--repo", "https://example.com/autext_jax.git", "--ref", "v1"], [SETUP]),
        (
            [
                "train",
                *WHERE,
                "--workdir",
                "gs://bkt/runs/upb",
                "--",
                "--set",
                "data.paths=gs://bkt/data",
                "--set",
                "optimizer.learning_rate=3e-5",
            ],  # fmt: skip
            [TRAIN.replace("'\"'\"'optimizer.learning_rate=3e-5'\"'\"'", "optimizer.learning_rate=3e-5")],
        ),
        (
            ["logs", *WHERE, "--worker", "2", "--lines", "20", "--follow"],
            [
                "gcloud compute tpus tpu-vm ssh upb --zone=us-west4-a --worker=2 --command 'tail -F -n 20 "
                "~/autext-train.log'"
            ],  # fmt: skip
        ),
        (["delete", *WHERE], [DELETE]),
    ],
)
def test_dry_run_prints_the_exact_gcloud_commands(args, expected, no_gcloud):
    split = args.index("--") if "--" in args else len(args)
    proc = _tool(*args[:split], "--dry-run", *args[split:], env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected


def test_watch_dry_run_prints_one_round(no_gcloud):
    proc = _tool(
        "watch", *WHERE, "--dry-run", "--accelerator-type", "v5litepod-16", "--spot",
        "--repo", "https://example.com/autext_jax.git", "--ref", "v1", "--workdir", "gs://bkt/runs/upb",
        "--", "--set", "data.paths=gs://bkt/data", "--set", "optimizer.learning_rate=3e-5", env=no_gcloud,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    exported = "gcloud storage ls gs://bkt/runs/upb/export/config.json"
    train = TRAIN.replace("'\"'\"'optimizer.learning_rate=3e-5'\"'\"'", "optimizer.learning_rate=3e-5")
    assert proc.stdout.splitlines() == [exported, STATE, DELETE, CREATE, STATE, SETUP, train]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", *WHERE, "--workdir", "runs/local"], "use gs://BUCKET/PATH"),
        (["create", *WHERE, "--accelerator-type", "v3-8"], "no default runtime for --accelerator-type v3-8"),
        (["train", *WHERE, "--workdir", "gs://b/r", "--", "--dry-run"], "--dry-run must come before --"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, message, no_gcloud):
    proc = _tool(*args, env=no_gcloud)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


FAKE_GCLOUD = """#!{python}
import json, sys
from pathlib import Path
state = Path({state!r})
plan = json.loads(state.read_text())
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:2] == ["storage", "ls"]:
    done = plan["exported_after"] <= sum(1 for a in plan["log"] if a == "train")
    print(args[2]) if done else sys.exit(1)
elif "describe" in args:
    print(plan["states"].pop(0) if plan["states"] else "ACTIVE")
elif "ssh" in args and "autext_jax.train" in args[-1]:
    plan["log"].append("train")
state.write_text(json.dumps(plan))
"""


def test_watch_recreates_a_preempted_slice_and_relaunches_until_exported(tmp_path):
    state, calls = tmp_path / "state.json", tmp_path / "calls.jsonl"
    # The slice is found preempted (SUSPENDED); after a relaunch it is queued, then ACTIVE; the
    # relaunched run exports.
    state.write_text(json.dumps({"states": ["SUSPENDED", "WAITING_FOR_RESOURCES", "ACTIVE"], "log": [],
                                 "exported_after": 1}))  # fmt: skip
    env = _fake_gcloud(
        tmp_path / "bin", FAKE_GCLOUD.format(python=sys.executable, state=str(state), calls=str(calls))
    )
    proc = _tool(
        "watch", *WHERE, "--poll", "0", "--accelerator-type", "v5litepod-16", "--spot",
        "--repo", "https://example.com/autext_jax.git", "--workdir", "gs://bkt/runs/upb",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.join(["gcloud", *json.loads(line)]) for line in calls.read_text().splitlines()]
    verbs = [c.split()[2] if c.split()[1] == "storage" else c.split()[4] for c in commands]
    # not exported; SUSPENDED → delete, create, queued, ACTIVE, setup, train; exported
    assert verbs == ["ls", "describe", "delete", "create", "describe", "describe", "ssh", "ssh", "ls"]
    assert "autext_jax.train" in commands[7] and "pip install" in commands[6]
    assert "relaunch 1" in proc.stderr and "exported: gs://bkt/runs/upb/export" in proc.stderr
