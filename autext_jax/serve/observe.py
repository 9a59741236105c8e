"""What operators watch: Prometheus metrics (``/metrics``), request ids, and the access log.

Why one ASGI middleware for all three: each needs the same facts about a request (its route, status and
duration), and it must see every answer, refusals included. An incoming ``X-Request-ID`` (a proxy's, or the
client's) is kept when it is short and plain, else one is made; it is returned on every answer and written
in the access log line, which never contains headers (so keys never reach the log).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from autext_jax.serve.batching import BatchObserver

access_log = logging.getLogger("autext_jax.serve.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # anything else is replaced, not echoed or logged
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics(BatchObserver):
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, model_info: dict[str, str]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "autext_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "autext_request_seconds", "time to answer a request", ["route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.waits = Histogram(
            "autext_queue_wait_seconds", "time a scoring job waited in the batching queue",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.texts = Counter("autext_texts_scored", "texts scored", registry=r)
        self.tokens = Counter("autext_tokens_scored", "tokens the scores rest on", registry=r)
        self.batch = Histogram(
            "autext_batch_texts", "texts per engine run", buckets=BATCH_BUCKETS, registry=r
        )
        self.queued = Gauge("autext_queued_texts", "texts waiting or being scored", registry=r)
        Info("autext_model", "the model being served", registry=r).info(model_info)

    # BatchObserver: called from the batching worker thread (prometheus_client is thread-safe).
    def queue_wait(self, seconds: float) -> None:
        self.waits.observe(seconds)

    def engine_run(self, n_texts: int, records: list[dict[str, Any]]) -> None:
        self.texts.inc(n_texts)
        self.tokens.inc(sum(int(r.get("n_tokens", 0)) for r in records))
        self.batch.observe(n_texts)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Observe:
    """ASGI middleware: request id in and out, metrics by route and status, one access log line."""

    def __init__(self, app, metrics: Metrics, *, access: bool, json_lines: bool):
        self.app = app
        self.metrics = metrics
        self.access = access
        self.json_lines = json_lines

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given is not None and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = [500]
        started = time.perf_counter()

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if self.access:
                self._log(scope, status[0], seconds, request_id)

    def _log(self, scope, status: int, seconds: float, request_id: str) -> None:
        client = scope.get("client")
        fields = {
            "request_id": request_id,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],  # without the query string
            "status": status,
            "ms": round(1000 * seconds, 1),
        }
        if self.json_lines:
            access_log.info(json.dumps(fields))
        else:
            access_log.info(
                '%(client)s "%(method)s %(path)s" %(status)d %(ms).1f ms request_id=%(request_id)s', fields
            )


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
