"""Training with the workdir in a bucket: a local GCS emulator (started here) stands in for gs://.

A run on gs:// killed with SIGKILL resumes and exports the same bytes as a local run; unusable
workdirs (unknown scheme, missing bucket, memory://, unwritable) stop with one line before training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autext_jax import errors
from autext_jax.train import __main__ as train_cli
from autext_jax.train import loop, prepare
from tests.helpers.gcs import BUCKET, _gcs_env, _gs_records
from tests.helpers.training import _cmd, _run

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.py"
STEPS, EVERY = 30, 10


def test_gs_workdir_survives_kill_9_and_exports_the_local_bytes(setup, gs_in_process, tmp_path):
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


def test_a_failed_checkpoint_save_is_reported_at_once(setup, gs_in_process, tmp_path):
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
    setup,
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
