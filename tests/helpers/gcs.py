"""The test GCS emulator: starting it, the environment that points clients at it, reading from it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autext_jax import paths
from autext_jax.train.metric_writers import METRICS_FILE
from tests.helpers.training import _free_port

EMULATOR = Path(__file__).resolve().parents[1] / "gcs_emulator.py"
BUCKET = "bkt"


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


def _gs_records(fs, workdir: str) -> list[dict]:
    try:
        text = fs.cat(paths.join(workdir, METRICS_FILE)).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
