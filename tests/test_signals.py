"""SIGINT and SIGTERM at any moment of a scoring run, start-up included: exit 130/143 within seconds,
complete lines only, no traceback (``autext_jax/signals.py``)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.helpers.corpus import cli, env

# Seconds after start: during imports, model loading, compiling and scoring.
MOMENTS = [0.3, 0.5, 0.8, 1.0, 1.3, 1.7, 2.2, 2.8, 3.5, 4.5, 6.0, 8.0]


def test_a_signal_at_any_moment_stops_the_run_cleanly(tmp_path, tiny_model_dir):
    source = tmp_path / "many.txt"
    source.write_text("".join(f"text number {i} the cat\n" for i in range(300_000)))
    runs = []
    for k, moment in enumerate(MOMENTS):
        signum = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
        runs.append((moment, signum, tmp_path / f"out{k}.jsonl"))
    for group in (runs[0::3], runs[1::3], runs[2::3]):  # three runs at a time on a small machine
        procs = []
        for moment, signum, out in group:
            argv = cli("-i", source, "-o", out, "-q", "--model", tiny_model_dir, "--window", "16",
                       "--batch-size", "1")
            procs.append((moment, signum, out, subprocess.Popen(argv, env=env(), stderr=subprocess.PIPE,
                                                               text=True), time.monotonic()))
        for moment, signum, out, proc, started in procs:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            proc.send_signal(signum)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - sent
            if proc.returncode == -signum and not err and not out.exists():
                # On a very loaded machine the interpreter may not have started yet: no Python
                # code can run before then; nothing was written and nothing printed.
                continue
            assert proc.returncode == 128 + signum, (moment, signum, err[-2000:])
            assert took < 30, (moment, took)
            assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
            assert "interrupted" in err
            text = out.read_text() if out.exists() else ""
            assert text == "" or text.endswith("\n"), moment
            got = [json.loads(line) for line in text.splitlines()]
            assert [r["id"] for r in got] == list(range(len(got)))
            assert len(got) < 300_000
