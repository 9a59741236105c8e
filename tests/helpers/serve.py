"""Helpers for the service tests: a free port, and the service started as a real subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_json(url: str, payload, timeout: float = 60.0) -> tuple[int, object]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def running_service(
    model_dir: Path | str | None, *args: str, startup_s: float = 120.0, env: dict[str, str] | None = None
):
    """Start ``python -m autext_jax.serve`` on a free port; yield ``(base_url, process)``; stop it after."""
    port = free_port()
    cmd = [sys.executable, "-m", "autext_jax.serve", "--port", str(port), *args]
    if model_dir is not None:
        cmd += ["--model", str(model_dir)]
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited {proc.returncode}:\n{read_log(proc)}")
            try:
                if get_json(base + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not answer /healthz in time")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def read_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def calibrated_copy(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` with a ``calibration.json`` (operating points) fitted on made-up labels."""
    import random
    import shutil

    import autext_jax
    from autext_jax import calibration

    shutil.copytree(model_dir, out)
    rng = random.Random(0)
    words = "the of and to in is that it for on with el la de que y en los".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(60)]
    logits = autext_jax.load(model_dir).logits(texts)["bot"]
    median = sorted(logits)[len(texts) // 2]
    # Labels that follow the score, every seventh flipped: a head worth calibrating, not a perfect one.
    labels = [int(z >= median) ^ (i % 7 == 0) for i, z in enumerate(logits)]
    calibration.fit(logits, labels, n_tokens=[40] * len(texts)).save(out)
    return out


@contextmanager
def serving_app(app, startup_s: float = 30.0):
    """Serve an ASGI ``app`` (e.g. around a stub detector) with uvicorn on a free port, in a thread;
    yield its base URL. Real HTTP, for clients such as a browser."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
