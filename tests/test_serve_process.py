"""The service as a real process: start-up, scoring over HTTP, hostile clients, graceful SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import autext_jax  # noqa: E402
from tests.helpers.serve import get_json, post_json, read_log, running_service  # noqa: E402

TEXT = "The committee will publish its annual report on the first of March."


def _raw(host_port: tuple[str, int], data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; return everything the server answers until it closes."""
    with socket.create_connection(host_port, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _host_port(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


@pytest.fixture(scope="module")
def in_process(tiny_model_dir):
    """The same model in this process: what the service must answer."""
    return autext_jax.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    with running_service(tiny_model_dir, "--max-body-bytes", "65536", "--body-timeout", "1") as (base, proc):
        yield base, proc


def test_scores_over_http(service, in_process):
    base, _ = service
    status, body = post_json(base + "/v1/score", {"texts": [TEXT, "Otro texto."]})
    assert status == 200 and body["records"] == in_process.score_records([TEXT, "Otro texto."])


def test_hostile_clients_get_4xx_and_the_process_lives(service):
    base, proc = service
    addr = _host_port(base)

    def post(body: bytes, headers: str = "") -> bytes:
        head = (
            f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{headers}\r\n"
        )
        return _raw(addr, head.encode() + body)

    assert _status(post(b"{not json")) == 400
    assert _status(post(b"\xc3\x28\xa0\xa1")) == 400  # invalid UTF-8
    assert _status(post(b"")) == 400
    assert _status(post(json.dumps({"texts": [1, 2]}).encode())) == 422
    # A Content-Length far over the limit is refused before the body is read.
    big = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{"
    assert _status(_raw(addr, big)) == 413
    # A slow client: headers, then a body that never finishes in time.
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\": ")
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert _status(answer) == 408
    # A slower one: headers that never end.
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le")
        answer = sock.recv(65536)
    assert _status(answer) == 408 and b"headers" in answer
    assert proc.poll() is None
    assert get_json(base + "/healthz")[0] == 200
    assert "Traceback" not in read_log(proc)


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_model_dir, in_process):
    with running_service(tiny_model_dir) as (base, proc):
        body = json.dumps({"text": TEXT}).encode()
        with socket.create_connection(_host_port(base), timeout=30) as sock:
            head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[:5])  # the request is in flight: half its body sent
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # still waiting for our request
            sock.sendall(body[5:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert _status(answer) == 200
        record = json.loads(answer.split(b"\r\n\r\n", 1)[1])["records"][0]
        assert record == in_process.score_records([TEXT])[0]
        assert proc.wait(30) == 0, read_log(proc)
        # Nothing listens any more.
        with pytest.raises(OSError):
            socket.create_connection(_host_port(base), timeout=2).close()
