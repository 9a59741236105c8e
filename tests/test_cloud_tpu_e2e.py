"""The launcher end to end on a simulated slice (``tests/fake_gcloud.py``), the workdir on the GCS emulator:
create → setup (this checkout shipped, a uv venv per worker) → train (2 workers joined through
``--distributed auto``) → a Spot preemption mid-run → ``watch`` re-creates the slice and relaunches →
export → slice deleted. The export must be byte-identical to an uninterrupted two-process run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_gcloud import FakeCloud, _Bucket
from tests.helpers.training import FAST_COMPILE, _free_port, write_learnable_data

pytest.importorskip("gcp_storage_emulator")
REPO = Path(__file__).resolve().parent.parent
# The stop check agrees across processes every ~5 s: the run must outlast it after the SIGTERM.
STEPS, EVERY, PREEMPT_AT = 240, 20, 30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_watch_survives_a_preemption_and_exports_the_uninterrupted_bytes(
    gcs, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    data = write_learnable_data(tmp_path / "data")
    env = dict(os.environ, **gcs, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf_datasets")
    train_args = [
        "--set", f"tokenizer={tiny_tokenizer_dir}", "--set", f"data.paths={data}",
        "--set", "data.max_length=16",
        "--set", "log_every=1", "--set", "progress=false",
        "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY),
        # JAX's own gs:// compile cache stalled against the emulator: a local one per worker here
        "--compile-cache", "compile_cache",
    ]  # fmt: skip
    config = str(REPO / "configs" / "tiny.py")
    # The uninterrupted reference: two processes on this machine, as the two workers will be.
    port = _free_port()
    ref = [
        subprocess.Popen(
            [sys.executable, "-m", "autext_jax.train", "--config", config, "--workdir", "gs://bkt/reference",
             *train_args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
             "--process-id", str(i)],
            env=env, cwd=tmp_path, stdout=(tmp_path / f"reference-{i}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]  # fmt: skip
    for i, p in enumerate(ref):  # logs go to files: an undrained pipe would block a chatty run
        assert p.wait(timeout=600) == 0, (tmp_path / f"reference-{i}.log").read_text()[-3000:]

    # This process reads the bucket too (``_Bucket``); monkeypatch restores the variable afterwards, so
    # later tests' fake gcloud does not talk to this module's emulator once it is gone.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs["STORAGE_EMULATOR_HOST"])
    bucket = _Bucket()
    fake = FakeCloud(tmp_path / "cloud")
    log = tmp_path / "watch.log"
    watch = subprocess.Popen(
        [sys.executable, "-m", "tools.cloud_tpu", "watch", "--name", "e2e", "--zone", "us-west4-a",
         "--poll", "1", "--backoff", "1", "--accelerator-type", "v5litepod-16", "--spot",
         "--source", str(REPO), "--extra", "gcs", "--config", "configs/tiny.py",
         "--workdir", "gs://bkt/run", "--start-timeout", "600", "--", *train_args],
        env=dict(fake.env(env), PYTHONPATH=str(REPO)), cwd=tmp_path,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and watch.poll() is None:
        text = (bucket.read("gs://bkt/run/metrics.jsonl") or b"").decode()
        steps = [r["step"] for r in map(json.loads, text.splitlines()[:-1]) if r["split"] == "train"]
        if steps and max(steps) >= PREEMPT_AT:
            fake.preempt("e2e", grace=20)
            break
        time.sleep(0.5)
    try:
        assert watch.wait(timeout=max(1, deadline - time.monotonic())) == 0, log.read_text()[-4000:]
    finally:
        watch.kill()
        print(log.read_text())
    text = log.read_text()
    assert "slice e2e is SUSPENDING (preempted; the run saves): waiting for SUSPENDED" in text
    assert "slice e2e does not exist: creating it" in text
    assert "slice e2e is SUSPENDED: re-creating it (1 of 50)" in text
    assert "export in gs://bkt/run/export; deleting slice e2e" in text
    assert not (fake.root / "qr" / "e2e.json").exists()
    assert sorted(
        c[3] for c in fake.calls() if c[:3] == ["compute", "tpus", "queued-resources"] and c[3] != "describe"
    ) == ["create", "create", "delete", "delete"]
    launches = sorted({name.split("/")[2] for name in bucket.list("gs://bkt/run/logs/")})
    assert len(launches) == 2  # the preempted launch's logs and the resumed one's, both kept
    for launch in launches:
        for worker in (0, 1):
            text = bucket.read(f"gs://bkt/run/logs/{launch}/worker-{worker}.log").decode()
            assert f"cloud_tpu: launch {launch} on worker {worker}" in text
    preempted = bucket.read(f"gs://bkt/run/logs/{launches[0]}/worker-0.log").decode()
    assert "training exited with code 143" in preempted  # saved on SIGTERM, then its log copied
    ours, reference = (
        _sha256(bucket.read(f"gs://bkt/{w}/export/model.safetensors")) for w in ("run", "reference")
    )
    print(f"export sha256: relaunched {ours}, uninterrupted {reference}")
    assert ours == reference
