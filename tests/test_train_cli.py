"""End-to-end training through the CLI: learning, kill -9 + resume, two processes, refusal and bad input.

Runs are subprocesses (a fresh JAX per run, like a user's) sharing a persistent compilation cache,
so the repeated runs of one program compile once. The fixture data is learnable: generated rows
use one set of words and human rows another, in English and Spanish folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from autext_jax import errors
from autext_jax.train import __main__ as train_cli
from autext_jax.train.metric_writers import METRICS_FILE
from tests.helpers.training import FAST_COMPILE, REPO, _cmd, _free_port, _records, _run

STEPS, EVERY = 120, 10


def _params(export_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(export_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(setup):
    workdir = setup["root"] / "reference"
    _run(setup, workdir, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY))
    return workdir


def test_training_learns_logs_and_exports(reference, tiny_tokenizer_dir):
    from autext_jax.convert import load_checkpoint

    steps = _records(reference, "train")
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert np.mean([r["loss"] for r in steps[-10:]]) < 0.5 * np.mean([r["loss"] for r in steps[:10]])
    assert all(r["examples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    final = _records(reference, "val")[-1]
    assert final["step"] == STEPS
    assert final["macro_f1"]["en"] > 0.9 and final["macro_f1"]["es"] > 0.9
    assert final["language_accuracy"]["accuracy"] > 0.9
    assert final["bot_loss"] < 0.3
    saved = json.loads((reference / "train_config.json").read_text())
    assert saved["max_steps"] == STEPS and saved["checkpoint"]["every_steps"] == EVERY
    status = json.loads((reference / "run_status.json").read_text())
    assert status["state"] == "finished" and status["exit_code"] == 0 and status["step"] == STEPS
    assert status["export"] == str(reference / "export") and status["host"] == socket.gethostname()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the code that ran is recorded
        assert status["commit"].split("+")[0] == head.stdout.strip()
    assert saved["tokenizer"] == str(tiny_tokenizer_dir)
    # keep=2 in configs/tiny.py: only the newest two checkpoints remain.
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir()) == [STEPS - EVERY, STEPS]
    exported = load_checkpoint(reference / "export")
    assert exported.config.threshold == pytest.approx(final["best_threshold"])
    assert (reference / "export" / "tokenizer_config.json").is_file()


def _start_and_kill(setup, workdir: Path, extra: tuple[str, ...], at_step: int) -> None:
    """Run the command and SIGKILL it as soon as it has logged ``at_step`` (it must still be running)."""
    log_path = workdir.with_suffix(f".{at_step}.log")
    with log_path.open("w") as log:
        proc = subprocess.Popen(_cmd(setup, workdir, *extra), env=setup["env"], stdout=log, stderr=log)
        metrics = workdir / METRICS_FILE
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and any(r["step"] >= at_step for r in _records(workdir, "train")):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    assert not (workdir / "export").exists()


def _latest_checkpoint(workdir: Path) -> int:
    """The newest committed step, read-only (the killed run's leftovers stay for the resume to handle)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=options)
    try:
        return manager.latest_step() or 0
    finally:
        manager.close()


def test_kill_9_then_resume_is_bit_identical(setup, reference):
    workdir = setup["root"] / "killed"
    extra = ("--max-steps", str(STEPS), "--checkpoint-every", str(EVERY))
    # First killed between checkpoints; then, resumed, killed again later (often mid-save).
    _start_and_kill(setup, workdir, extra, at_step=4 * EVERY + 3)
    first = _latest_checkpoint(workdir)
    # Saves are asynchronous: the newest committed checkpoint may be older than the last one begun.
    assert EVERY <= first <= 4 * EVERY
    _start_and_kill(setup, workdir, extra, at_step=8 * EVERY)
    second = _latest_checkpoint(workdir)
    assert first <= second < STEPS
    resumed = _run(setup, workdir, *extra)
    assert f"resumed from step {second} " in resumed.stderr
    # Records the killed run wrote after its last checkpoint were replaced, not duplicated.
    assert [r["step"] for r in _records(workdir, "train")] == list(range(1, STEPS + 1))
    ref, got = reference / "export", workdir / "export"
    assert (got / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert json.loads((got / "config.json").read_text()) == json.loads((ref / "config.json").read_text())


def test_two_processes_match_one_process(setup):
    extra = ("--max-steps", "3", "--set", "eval.batch_size=16", "--set", "optimizer.warmup_steps=0")
    single, multi = setup["root"] / "one_process", setup["root"] / "two_processes"
    port = _free_port()
    # One process with two devices, and two processes with one device each, all started together.
    one_env = dict(setup["env"], XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count=2")
    runs = [(_cmd(setup, single, *extra), one_env)]
    for i in range(2):
        flags = ("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))
        runs.append((_cmd(setup, multi, *extra, *flags), setup["env"]))
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd, env in runs
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert "process 0 of 2 joined" in outputs[1][1] and "process 1 of 2 joined" in outputs[2][1]
    losses_one = [r["loss"] for r in _records(single, "train")]
    losses_two = [r["loss"] for r in _records(multi, "train")]
    np.testing.assert_allclose(losses_two, losses_one, atol=1e-5, rtol=0)
    a, b = _params(single / "export"), _params(multi / "export")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0, err_msg=key)


def test_other_config_is_refused_unless_allowed(setup, reference, capsys):
    workdir = setup["root"] / "copy_of_reference"
    shutil.copytree(reference, workdir)
    base = [*setup["base"], "--workdir", str(workdir), "--max-steps", str(STEPS)]
    before = (workdir / "train_config.json").read_text()
    code = train_cli.main([*base, "--set", "optimizer.learning_rate=0.01"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE
    assert "optimizer.learning_rate" in err and "allow_config_change=true" in err
    assert (workdir / "train_config.json").read_text() == before
    # Settings that do not change the trajectory may differ; a finished run then stops at once.
    assert train_cli.main([*base, "--checkpoint-every", "7"]) == 0
    assert '"complete": true' in capsys.readouterr().out
    code = train_cli.main(
        [*base, "--set", "optimizer.learning_rate=0.01", "--set", "allow_config_change=true"]
    )
    assert code == 0
    assert json.loads((workdir / "train_config.json").read_text())["optimizer"]["learning_rate"] == 0.01


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys):
    """A real divergence (a learning rate of 1e38) through the CLI: one line, exit 3, checkpoints kept."""
    from autext_jax.train.checkpointing import CheckpointConfig, Checkpointer

    args = [
        *setup["base"],
        "--workdir",
        str(tmp_path),
        "--max-steps",
        "6",
        "--checkpoint-every",
        "1",
        "--set",
        "optimizer.learning_rate=1e38",
        "--set",
        "optimizer.warmup_steps=0",
        "--set",
        "optimizer.max_grad_norm=none",
    ]
    assert train_cli.main(args) == errors.EXIT_DIVERGED
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # progress and log lines come before the one error line
    assert re.fullmatch(
        r"python -m autext_jax\.train: error: step [1-5]: (loss|grad_norm)( and grad_norm)? "
        r"became (nan|inf); stopped, the last good checkpoint is kept "
        r"\(lower optimizer\.learning_rate or check the data\)",
        last,
    ), last
    status = json.loads((tmp_path / "run_status.json").read_text())
    assert (status["state"], status["exit_code"], status["export"]) == ("failed", errors.EXIT_DIVERGED, None)
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig())
    steps = ckpt.all_steps()
    ckpt.close()
    assert steps and max(steps) < 6
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "optimizer.learning_rate=fast"], "expected a number"),
        (["--set", "optimizer.learnin_rate=1"], "unknown field 'learnin_rate'"),
        (["--set", "model=1"], "is a section"),
        (["--set", "batch_size"], "expected key=value"),
        (["--set", "mesh.data=3"], "needs 3 devices"),
        (["--set", "dtype=float16"], "dtype"),
        (["--set", "data.languages=en,fr"], "no rows in language(s) ['fr']"),
        (["--set", "tokenizer=/nonexistent/tok"], "tokenizer directory"),
        (["--init", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_input_exits_2_with_one_line(setup, tmp_path, capsys, extra, message):
    code = train_cli.main([*setup["base"], "--workdir", str(tmp_path / "w"), "--max-steps", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == errors.EXIT_USAGE
    assert message in err
    assert err.startswith("python -m autext_jax.train: error: ") and "Traceback" not in err


def test_unknown_labels_and_empty_data_are_reported(setup, tmp_path, capsys):
    bad = tmp_path / "bad" / "en"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("id\ttext\tlabel\n1\thello\thuman\n2\tworld\tmachine\n")
    workdir = str(tmp_path / "w")
    code = train_cli.main([*setup["base"], "--workdir", workdir, "--set", f"data.paths={bad.parent}"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_BAD_INPUT and "'machine'" in err
    empty = tmp_path / "empty" / "en"
    empty.mkdir(parents=True)
    (empty / "train.tsv").write_text("id\ttext\tlabel\n")
    code = train_cli.main(
        [*setup["base"], "--workdir", str(tmp_path / "w2"), "--set", f"data.paths={empty.parent}"]
    )
    assert code == errors.EXIT_BAD_INPUT and "train: error: " in capsys.readouterr().err
