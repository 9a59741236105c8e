"""Training with the workdir in a bucket: a local GCS emulator (started here) stands in for gs://.

A run on gs:// killed with SIGKILL resumes and exports the same bytes as a local run; unusable
workdirs (unknown scheme, missing bucket, memory://, unwritable) stop with one line before training.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_cli import _cmd, _free_port, _run, setup  # noqa: F401 - setup is a fixture

from autext_jax import errors, paths
from autext_jax.train import __main__ as train_cli
from autext_jax.train import loop, prepare
from autext_jax.train.metric_writers import METRICS_FILE

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

EMULATOR = Path(__file__).with_name("gcs_emulator.py")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.py"
BUCKET = "bkt"
STEPS, EVERY = 30, 10


def _gcs_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no gRPC bucket-type probe (60 s timeout)
    }


REFUSED = "refused-run/checkpoints/10"  # the emulator answers 403 to uploads there


def start_emulator(args: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    """Start an emulator script (``args`` after the port) on a free port; its output goes to ``log``.

    Never to a pipe: the emulator logs every request and prints a traceback for each client that hangs
    up, so an undrained pipe fills after a few hundred requests and blocks the emulator mid-request,
    which a training run then sees as storage that never answers.
    """
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, args[0], str(port), *args[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=EMULATOR.parent,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"GCS emulator did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    log = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
    proc, port = start_emulator([str(EMULATOR), BUCKET, REFUSED], log)
    yield _gcs_env(port)
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def gs_in_process(gcs, monkeypatch):
    """This process's gs:// filesystem pointed at the emulator."""
    import gcsfs

    for key, value in gcs.items():
        monkeypatch.setenv(key, value)
    paths._filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield paths.filesystem("gs://x")
    paths._filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()


def _gs_records(fs, workdir: str) -> list[dict]:
    try:
        text = fs.cat(paths.join(workdir, METRICS_FILE)).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_gs_workdir_survives_kill_9_and_exports_the_local_bytes(setup, gs_in_process, tmp_path):  # noqa: F811
    fs = gs_in_process
    env = dict(setup["env"], **{k: os.environ[k] for k in _gcs_env(0)})
    extra = ("--max-steps", str(STEPS), "--checkpoint-every", str(EVERY))
    local = setup["root"] / "storage_local_reference"
    _run(setup, local, *extra)
    workdir = f"gs://{BUCKET}/run-kill9"
    log = (setup["root"] / "gs_kill9.log").open("w")
    proc = subprocess.Popen(_cmd(setup, workdir, *extra), env=env, cwd=tmp_path, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["step"] >= 2 * EVERY + 3 for r in _gs_records(fs, workdir) if r["split"] == "train"):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (setup["root"] / "gs_kill9.log").read_text()[-3000:]
    resumed = subprocess.run(
        _cmd(setup, workdir, *extra), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step " in resumed.stderr and "already complete" not in resumed.stderr
    # The bucket's export is the local run's, byte for byte; nothing was written to a local "gs:" folder.
    for name in ("model.safetensors", "config.json"):
        assert fs.cat(f"{workdir}/export/{name}") == (local / "export" / name).read_bytes(), name
    assert [r["step"] for r in _gs_records(fs, workdir) if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert fs.find(f"{workdir}/tensorboard") and not fs.exists(f"{workdir}/lease.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_checkpoint_save_is_reported_at_once(setup, gs_in_process, tmp_path):  # noqa: F811
    env = dict(setup["env"], **{k: os.environ[k] for k in _gcs_env(0)})
    workdir = f"gs://{BUCKET}/refused-run"
    proc = subprocess.run(
        _cmd(setup, workdir, "--max-steps", "40", "--checkpoint-every", "10"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == errors.EXIT_USAGE, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m autext_jax.train: error: saving the checkpoint of step 10 to ")
    # Reported while the next interval ran, not at the next save (step 20).
    steps = [r["step"] for r in _gs_records(gs_in_process, workdir) if r["split"] == "train"]
    assert 10 <= max(steps) < 20
    status = json.loads(gs_in_process.cat(f"{workdir}/run_status.json"))
    assert (status["state"], status["exit_code"], status["export"]) == ("failed", errors.EXIT_USAGE, None)


def test_init_and_tokenizer_from_a_bucket(gs_in_process, tiny_model_dir, tmp_path, monkeypatch):
    from autext_jax.convert import load_checkpoint
    from autext_jax.train.config import load_config_file
    from autext_jax.train.steps import describe_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"gs://{BUCKET}/models/tiny"
    gs_in_process.put(str(tiny_model_dir), url, recursive=True)
    cfg = load_config_file(CONFIG)
    prepared = prepare.prepare_model(cfg.replace(init=url, tokenizer=url))
    _, expected = describe_model(load_checkpoint(tiny_model_dir).model)
    assert prepared.initial.keys() == expected.keys()
    for name, value in expected.items():
        assert (prepared.initial[name] == value).all(), name
    tokenizer = prepare.load_training_tokenizer(prepared.tokenizer_dir, prepared.model_cfg, 16)
    assert tokenizer("the")["input_ids"][0] == 0


@pytest.mark.parametrize(
    "workdir, message",
    [
        ("foo://somewhere/run", "unknown storage scheme foo://"),
        ("gs://no-such-bucket/run", "cannot write to --workdir gs://no-such-bucket/run"),
        ("memory://run", "Orbax saves to local folders and gs:// only"),
        ("/proc/autext-run", "cannot write to --workdir /proc/autext-run"),
    ],
)
def test_unusable_workdir_exits_2_before_training(
    setup,  # noqa: F811
    gs_in_process,
    tmp_path,
    monkeypatch,
    capsys,
    workdir,
    message,
):
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(loop, "prepare_model", lambda cfg: started.append(cfg))
    code = train_cli.main([*setup["base"], "--workdir", workdir, "--max-steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == errors.EXIT_USAGE, err
    assert message in err and "\n" not in err and "Traceback" not in err
    assert started == [] and list(tmp_path.iterdir()) == []  # no local "memory:" or "gs:" folder
