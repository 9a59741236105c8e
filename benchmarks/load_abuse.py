"""Abuse runs for ``benchmarks.load_serve``: a flood far over the sustainable rate, and callers with no key.

Flood: requests are sent open-loop (on a fixed schedule, whatever the answers) at ``factor`` times the rate
the load run sustained, each on its own connection, for ``seconds``. Reported: how many were refused 429 (and
with which ``Retry-After``), the latency of the accepted ones (p50/p99), anything else (5xx, errors), and
the server's RSS before, at its peak during, and after.

Unauthenticated: a service started with ``--api-key``; requests without a key and with a wrong one must all be
401 (never 5xx), quickly, while requests with the key still score.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _request(host: str, path: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + data


async def _exchange(host: str, port: int, data: bytes, timeout: float) -> tuple[int | str, float, str | None]:
    """(status or error, seconds, Retry-After) of one request on its own connection."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            await writer.drain()
            answer = await reader.read()
            writer.close()
    except (OSError, TimeoutError) as error:
        return type(error).__name__, time.perf_counter() - started, None
    seconds = time.perf_counter() - started
    if not answer:
        return "no answer", seconds, None
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    retry = next((h.split(":", 1)[1].strip() for h in head if h.lower().startswith("retry-after:")), None)
    return int(head[0].split(" ", 2)[1]), seconds, retry


def _quantiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"p50_ms": None, "p99_ms": None}
    q = statistics.quantiles(values, n=100)
    return {"p50_ms": round(1000 * q[49], 1), "p99_ms": round(1000 * q[98], 1)}


def flood_run(base: str, pid: int, texts: list[str], rate_per_s: float, seconds: float) -> dict:
    """Open-loop requests (one text each) at ``rate_per_s`` for ``seconds``; see the module docstring."""
    host, port = base.removeprefix("http://").split(":")
    bodies = [_request(host, "/v1/score", {"text": t}) for t in texts[:500]]
    rss_before, peak = rss_kib(pid), [rss_kib(pid)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], rss_kib(pid))

    async def main() -> list[tuple[int | str, float, str | None]]:
        tasks, start, n = [], time.perf_counter(), 0
        while (now := time.perf_counter() - start) < seconds:
            due = int(now * rate_per_s) + 1
            for _ in range(due - n):
                body = bodies[n % len(bodies)]
                tasks.append(asyncio.ensure_future(_exchange(host, int(port), body, 120.0)))
                n += 1
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    answers = asyncio.run(main())
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()
    time.sleep(1.0)
    statuses = Counter(str(status) for status, _, _ in answers)
    accepted = [s for status, s, _ in answers if status == 200]
    retry_after = Counter(r for status, _, r in answers if status == 429)
    return {
        "target_requests_per_s": round(rate_per_s, 1),
        "sent": len(answers),
        "seconds_until_all_answered": round(elapsed, 1),
        "statuses": dict(statuses),
        "share_429": round(statuses.get("429", 0) / max(len(answers), 1), 3),
        "accepted": {"n": len(accepted), **_quantiles(accepted)},
        "refused_429": _quantiles([s for status, s, _ in answers if status == 429]),
        "retry_after_values": dict(retry_after.most_common(5)),
        "rss_kib_before": rss_before,
        "rss_kib_peak": peak[0],
        "rss_kib_after": rss_kib(pid),
    }


def unauthenticated_run(base: str, pid: int, texts: list[str], key: str, n: int) -> dict:
    """``n`` requests each without a key and with a wrong one, then 20 with ``key``: statuses, latency."""
    host, port = base.removeprefix("http://").split(":")
    cases = {
        "no key": {},
        "wrong key": {"Authorization": "Bearer not-the-key"},
        "malformed header": {"Authorization": "Basic dXNlcjpwYXNz"},
        "right key": {"Authorization": f"Bearer {key}"},
    }

    async def run(headers: dict, count: int) -> list[tuple[int | str, float, str | None]]:
        limit = asyncio.Semaphore(32)

        async def one(i: int):
            async with limit:
                data = _request(host, "/v1/score", {"text": texts[i % len(texts)]}, headers)
                return await _exchange(host, int(port), data, 60.0)

        return await asyncio.gather(*(one(i) for i in range(count)))

    rss_before = rss_kib(pid)
    out: dict = {}
    for name, headers in cases.items():
        started = time.perf_counter()
        answers = asyncio.run(run(headers, 20 if name == "right key" else n))
        elapsed = time.perf_counter() - started
        out[name] = {
            "requests": len(answers),
            "statuses": dict(Counter(str(s) for s, _, _ in answers)),
            "requests_per_s": round(len(answers) / elapsed, 1),
            **_quantiles([s for _, s, _ in answers]),
        }
    out["rss_kib_before"], out["rss_kib_after"] = rss_before, rss_kib(pid)
    return out
