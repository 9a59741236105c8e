"""The training CLI in subprocesses: learnable data, the command, its metrics, ports, starting and waiting."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autext_jax.train.metric_writers import METRICS_FILE

REPO = Path(__file__).resolve().parents[2]
_WORDS = {
    "en": ("the of and to in is that it".split(), "for on with as was by this are".split()),
    "es": ("el la de que y en los se".split(), "del las un por con una para es".split()),
}
FAST_COMPILE = "--xla_backend_optimization_level=0"


def write_learnable_data(root: Path, rows: int = 100, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for lang, (human, generated) in _WORDS.items():
        (root / lang).mkdir(parents=True, exist_ok=True)
        lines = ["id\ttext\tlabel"]
        for i in range(rows):
            is_generated = rng.random() < 0.5
            words = [rng.choice(generated if is_generated else human) for _ in range(rng.randint(3, 12))]
            lines.append(f"{i}\t{' '.join(words)}\t{'generated' if is_generated else 'human'}")
        (root / lang / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def training_setup(root: Path, tiny_tokenizer_dir: Path) -> dict:
    """The data, environment and base arguments of the training CLI tests (the ``setup`` fixture)."""
    data = write_learnable_data(root / "data")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        HF_DATASETS_CACHE=str(root / "hf_datasets"),
    )
    # Less LLVM optimisation: compiles twice as fast; every compared run uses the same flags.
    env["XLA_FLAGS"] = FAST_COMPILE
    base = [
        "--config",
        str(REPO / "configs" / "tiny.py"),
        "--set",
        f"tokenizer={tiny_tokenizer_dir}",
        "--set",
        f"data.paths={data}",
        "--set",
        "data.max_length=16",
        "--set",
        "log_every=1",
        "--set",
        "progress=false",
    ]
    return {"root": root, "data": data, "env": env, "base": base}


def _cmd(setup, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autext_jax.train", *setup["base"], "--workdir", str(workdir), *extra]


def _run(setup, workdir: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(setup, workdir, *extra), env=env or setup["env"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(workdir: Path, split: str) -> list[dict]:
    lines = (workdir / METRICS_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(runs, workdir: Path, *extra: str, name: str) -> tuple[subprocess.Popen, Path]:
    log = runs["root"] / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_cmd(runs, workdir, *extra), env=runs["env"], stdout=out, stderr=out)
    return proc, log


def _wait_for_step(workdir: Path, step: int, procs) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            if any(r["step"] >= step for r in _records(workdir, "train")):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    pytest.fail(f"no step {step} in {workdir} (runs ended: {[p.poll() for p in procs]})")
