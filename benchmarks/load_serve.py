"""Load and hostile-input runs against ``python -m autext_jax.serve`` on 127.0.0.1 (bounded in time).

    python -m benchmarks.load_serve [--model DIR] [--clients 32] [--duration 30] [--data TSV ...] [--out F]

1. In-process: the same ``Detector`` scores the same texts (``score_records`` over blocks of 64) → texts/s,
   measured before and after the load run (step 2) and averaged, as the machine may be shared.
2. Load: the service in a subprocess; ``--clients`` threads, each with one keep-alive connection, post
   ``--texts-per-request`` texts at a time for ``--duration`` seconds → p50/p99 latency, texts/s, and
   the ratio to the in-process rate (goal ≥ 0.8).
3. Hostile: malformed JSON, wrong types, empty and enormous bodies, invalid UTF-8, unpaired surrogates,
   deep nesting, slow clients (rounds of them, all at once): counts per status class; the process must
   stay alive with its RSS flat (after the load run vs after the hostile run), ``/healthz`` answering.
4. Flood (``--flood-seconds``, ``load_abuse.py``): ``--flood-factor`` (10) times the rate step 2 sustained,
   open-loop: the share answered 429, p99 of the accepted, RSS before/peak/after.
5. SIGTERM: the service must exit 0.
6. Unauthenticated (``--auth-requests``): a second service with ``--api-key``; callers without the key,
   with a wrong one, with a malformed header: all must get 401, none a 5xx.

Texts: ``--data`` files (TSV/CSV/JSONL/TXT with a ``text`` field; e.g. the AuTexTification training TSVs),
else generated sentences.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.load_abuse import flood_run, rss_kib, unauthenticated_run
from tests.helpers.serve import get_json, read_log, running_service


def load_texts(paths: list[str], n: int, seed: int = 0) -> list[str]:
    if not paths:
        rng = random.Random(seed)
        words = "the report will be published after the committee meets to review its findings".split()
        return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(n)]
    from autext_jax.data import tables

    texts: list[str] = []
    for path in paths:
        rows = tables.read(path, tables.format_of(path), required=["text"])
        texts += [str(row.values["text"]) for row in rows if row.values is not None]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def in_process_rate(detector, texts: list[str], seconds: float, block: int = 64) -> dict:
    """The detector's own texts/s over ``score_records`` calls of ``block`` texts, for about ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        at = done % len(texts)
        chunk = texts[at : at + block]
        detector.score_records(chunk)
        done += len(chunk)
    elapsed = time.perf_counter() - start
    return {
        "texts": done,
        "seconds": round(elapsed, 2),
        "texts_per_s": round(done / elapsed, 1),
        "load_average": round(os.getloadavg()[0], 1),
    }


def load_run(base: str, texts: list[str], clients: int, duration: float, per_request: int) -> dict:
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        i = k * 7919
        while time.monotonic() < deadline:
            batch = [texts[(i + j) % len(texts)] for j in range(per_request)]
            i += per_request
            body = json.dumps({"texts": batch})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/score", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = "connection error"
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "texts_per_request": per_request,
        "seconds": round(elapsed, 2),
        "requests_ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "texts_per_s": round(ok * per_request / elapsed, 1),
        "p50_ms": round(1000 * q[49], 1),
        "p99_ms": round(1000 * q[98], 1),
    }


def _exchange(addr: tuple[str, int], data: bytes, timeout: float = 30.0) -> int | str:
    try:
        with socket.create_connection(addr, timeout=timeout) as sock:
            sock.sendall(data)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n" in answer:
                    break
        return int(answer.split(b" ", 2)[1]) if answer else "no answer"
    except (OSError, ValueError, IndexError) as error:
        return f"client error: {type(error).__name__}"


def _post(body: bytes, extra: str = "") -> bytes:
    head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    return (head + extra + "\r\n").encode() + body


HOSTILE = {
    "malformed JSON": _post(b'{"texts": ["a",'),
    "NaN": _post(b'{"texts": [NaN]}'),
    "not an object": _post(b'["a"]'),
    "wrong type": _post(b'{"texts": [1, {"a": 2}]}'),
    "text not a string": _post(b'{"text": 42}'),
    "empty body": _post(b""),
    "empty texts": _post(b'{"texts": []}'),
    "invalid UTF-8": _post(b'{"text": "\xff\xfe\xc3\x28"}'),
    "unpaired surrogate": _post(b'{"text": "\\udc80abc"}'),
    "deep nesting": _post(b"[" * 200_000),
    "too many texts": _post(json.dumps({"texts": ["a"] * 10_000}).encode()),
    "text too long": _post(json.dumps({"text": "word " * 200_000}).encode()),
    "enormous declared body": b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{",
    "bad Content-Length": b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "unknown operating point": _post(b'{"text": "a", "operating_point": "fpr=0.42"}'),
    "unknown field": _post(b'{"text": "a", "thresh": 0.1}'),
    "wrong method": b"PUT /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "unknown path": b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


def enormous_chunked(addr: tuple[str, int], megabytes: int = 200) -> int | str:
    """A chunked body with no Content-Length, far over the limit: answered 413 long before its end."""
    try:
        with socket.create_connection(addr, timeout=30) as sock:
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(megabytes):
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                pass  # the server stopped reading: what we want
            answer = sock.recv(65536)
        return int(answer.split(b" ", 2)[1]) if answer else "no answer"
    except (OSError, ValueError, IndexError) as error:
        return f"client error: {type(error).__name__}"


def slow_clients(addr: tuple[str, int], n: int) -> list[int | str]:
    """``n`` clients at once sending half their headers or body, then stalling (408 after the timeout)."""
    results: list[int | str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        if k % 2:  # half a body
            data = b'POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"text": "a'
        else:  # half the headers
            data = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le"
        status = _exchange(addr, data)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def hostile_run(base: str, pid: int, rounds: int, slow: int) -> dict:
    host, port = base.removeprefix("http://").split(":")
    addr = (host, int(port))
    per_case: dict[str, Counter] = {name: Counter() for name in HOSTILE}
    rss_before = rss_kib(pid)
    rss_every_10_rounds = []
    for k in range(rounds):
        for name, data in HOSTILE.items():
            per_case[name][_exchange(addr, data)] += 1
        if k % 10 == 9:
            rss_every_10_rounds.append(rss_kib(pid))
    per_case["enormous chunked body (200 MB)"] = Counter([enormous_chunked(addr)])
    per_case[f"slow clients ({slow} at once)"] = Counter(slow_clients(addr, slow))
    rss_after = rss_kib(pid)
    classes: Counter = Counter()
    for counts in per_case.values():
        for status, count in counts.items():
            classes[f"{status // 100}xx" if isinstance(status, int) else str(status)] += count
    return {
        "rounds": rounds,
        "per_case": {name: {str(k): v for k, v in c.items()} for name, c in per_case.items()},
        "classes": dict(classes),
        "healthz_after": get_json(base + "/healthz")[0],
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_every_10_rounds": rss_every_10_rounds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    p.add_argument("--data", nargs="*", default=[], help="files with a text field (default: generated texts)")
    p.add_argument("--n-texts", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--in-process-seconds", type=float, default=20.0)
    p.add_argument("--hostile-rounds", type=int, default=50)
    p.add_argument("--slow-clients", type=int, default=50)
    p.add_argument("--batch-wait-ms", type=float, default=None, help="passed to the service")
    p.add_argument("--flood-seconds", type=float, default=20.0, help="0: no flood run")
    p.add_argument("--flood-factor", type=float, default=10.0, help="times the sustained request rate")
    p.add_argument("--auth-requests", type=int, default=2000, help="per kind of bad key; 0: no key run")
    p.add_argument("--out", default=None, help="write the results as JSON here too")
    args = p.parse_args(argv)

    texts = load_texts(args.data, args.n_texts)
    result: dict = {"n_texts": len(texts), "mean_chars": round(statistics.mean(map(len, texts)), 1)}
    import autext_jax

    detector = autext_jax.load(args.model)
    detector.score_records(texts[:256])  # compile
    # Measured before and after the load run (the machine may be shared): the ratio uses their mean.
    result["in_process_before"] = in_process_rate(detector, texts, args.in_process_seconds)
    print(json.dumps({"in_process_before": result["in_process_before"]}), flush=True)
    serve_args = ["--body-timeout", "2"]
    if args.batch_wait_ms is not None:
        serve_args += ["--batch-wait-ms", str(args.batch_wait_ms)]
    with running_service(args.model, *serve_args, startup_s=300) as (base, proc):
        # warm the service's shapes with a short burst before measuring
        load_run(base, texts, args.clients, 3.0, args.texts_per_request)
        result["load"] = load_run(base, texts, args.clients, args.duration, args.texts_per_request)
        result["load"]["load_average"] = round(os.getloadavg()[0], 1)
        result["load"]["batches"] = get_json(base + "/v1/info")[1]["batches"]
        print(json.dumps({"load": result["load"]}), flush=True)
        result["in_process_after"] = in_process_rate(detector, texts, args.in_process_seconds)
        print(json.dumps({"in_process_after": result["in_process_after"]}), flush=True)
        rates = [result[k]["texts_per_s"] for k in ("in_process_before", "in_process_after")]
        in_process = sum(rates) / 2
        result["ratio_to_in_process"] = round(result["load"]["texts_per_s"] / in_process, 3)
        result["hostile"] = hostile_run(base, proc.pid, args.hostile_rounds, args.slow_clients)
        print(json.dumps({"hostile": result["hostile"]}), flush=True)
        if args.flood_seconds > 0:
            sustained = result["load"]["requests_ok"] / result["load"]["seconds"]
            rate = args.flood_factor * sustained
            result["flood"] = flood_run(base, proc.pid, texts, rate, args.flood_seconds)
            result["flood"]["sustained_requests_per_s"] = round(sustained, 1)
            result["flood"]["load_average"] = round(os.getloadavg()[0], 1)
            result["flood"]["healthz_after"] = get_json(base + "/healthz")[0]
            print(json.dumps({"flood": result["flood"]}), flush=True)
        proc.send_signal(signal.SIGTERM)
        result["exit_code_after_sigterm"] = proc.wait(60)
        result["server_tracebacks"] = read_log(proc).count("Traceback")
    if args.auth_requests > 0:
        key = "load-serve-key"
        with running_service(args.model, "--api-key", key, startup_s=300) as (base, proc):
            result["unauthenticated"] = unauthenticated_run(base, proc.pid, texts, key, args.auth_requests)
            result["unauthenticated"]["key_in_log"] = key in read_log(proc)
            result["unauthenticated"]["server_tracebacks"] = read_log(proc).count("Traceback")
        print(json.dumps({"unauthenticated": result["unauthenticated"]}), flush=True)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
