"""``python -m autext_jax.serve``: load the detector once, warm it up, serve HTTP until SIGTERM or Ctrl-C.

SIGTERM is a normal stop (a process manager's "please stop"): uvicorn stops accepting connections,
finishes the requests in flight, the batching queue finishes its jobs, and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from autext_jax.cli import add_debug_flag, setup_logging, threshold_arg
from autext_jax.cli import main as cli_main
from autext_jax.errors import UsageError

PROG = "autext_jax.serve"
PORT_ENV = "AUTEXT_JAX_PORT"  # the port's default (the Dockerfile's HEALTHCHECK reads it too)
log = logging.getLogger("autext_jax.serve")


def build_parser() -> argparse.ArgumentParser:
    from autext_jax.serve.app import ServeLimits
    from autext_jax.serve.auth import ENV_KEY
    from autext_jax.serve.batching import BatchingConfig

    limits, batching = ServeLimits(), BatchingConfig()
    default_port = int(os.environ.get(PORT_ENV, "8000"))
    p = argparse.ArgumentParser(
        prog=f"python -m {PROG}", description="Score texts over HTTP (and a page at /)."
    )
    p.add_argument("--model", default=None, help="model directory or Hub id (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    p.add_argument("--port", type=int, default=default_port,
                   help=f"port to listen on (default ${PORT_ENV}, else 8000)")
    p.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help=f"require Authorization: Bearer KEY (repeatable; default ${ENV_KEY}, "
                   "comma-separated)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="listen on a non-loopback --host without any API key")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from ORIGIN (e.g. https://app.example.org) call the service (repeatable)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threshold", type=threshold_arg, default=None, help="override the model's threshold")
    p.add_argument("--no-normalize", action="store_true",
                   help="score the raw text (as infer --no-normalize); obfuscated and n_changed are null")
    p.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)
    p.add_argument("--max-texts", type=int, default=limits.max_texts, help="texts per request")
    p.add_argument("--max-chars", type=int, default=limits.max_chars, help="characters per text")
    p.add_argument("--body-timeout", type=float, default=limits.body_timeout_s,
                   help="seconds a client may take to send its headers, and again its body (slower: 408)")
    p.add_argument("--batch-wait-ms", type=float, default=batching.max_wait_s * 1000,
                   help="how long a request waits for others to share its engine run")
    p.add_argument("--batch-texts", type=int, default=batching.max_texts, help="texts per engine run at most")
    p.add_argument("--max-queued-texts", type=int, default=batching.max_queued_texts,
                   help="texts waiting or being scored at most; more: 429 with Retry-After")
    p.add_argument("--request-timeout", type=float, default=batching.request_timeout_s,
                   help="seconds a request may wait for its scores; longer: 503")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight")
    p.add_argument("--access-log", action="store_true", help="log every request (with its X-Request-ID)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="json: every log line is a JSON object (the access lines too)")
    add_debug_flag(p)
    return p


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    import autext_jax
    from autext_jax.serve.app import ServeLimits, ServeOptions, create_app
    from autext_jax.serve.auth import ENV_KEY, is_loopback, keys_from
    from autext_jax.serve.batching import BatchingConfig
    from autext_jax.serve.protocol import header_deadline_protocol

    for name in ("max_body_bytes", "max_texts", "max_chars", "batch_texts", "max_queued_texts"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.request_timeout <= 0:
        raise UsageError(f"--request-timeout must be positive, got {args.request_timeout}")
    keys = keys_from(args.api_key, os.environ.get(ENV_KEY))
    if not keys and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise UsageError(
            f"--host {args.host} lets other machines in, and no API key is set: give --api-key KEY "
            f"(or ${ENV_KEY}), or --allow-unauthenticated if something in front already checks callers"
        )
    if args.max_queued_texts < args.max_texts:
        raise UsageError(f"--max-queued-texts ({args.max_queued_texts}) must be at least --max-texts "
                         f"({args.max_texts}), or the largest requests could never be queued")
    if args.log_format == "json":
        _json_log_lines()
    limits = ServeLimits(args.max_body_bytes, args.max_texts, args.max_chars, args.body_timeout)
    batching = BatchingConfig(
        max_wait_s=max(args.batch_wait_ms, 0.0) / 1000,
        max_texts=args.batch_texts,
        max_queued_texts=args.max_queued_texts,
        request_timeout_s=args.request_timeout,
    )
    options = ServeOptions(
        api_keys=tuple(keys),
        cors_origins=tuple(args.cors_origin),
        access_log=args.log_format if args.access_log else None,
    )

    detector = autext_jax.load(
        args.model, dtype=args.dtype, threshold=args.threshold, normalize=not args.no_normalize
    )
    log.info("model %s loaded; warming up", detector.model_dir or "embedded")
    detector.score_records(["A short text to compile the scoring programs before the first request."])
    app = create_app(
        detector, limits=limits, batching=batching, model_name=args.model or "embedded", options=options
    )
    log.info("API keys: %s; CORS origins: %s", len(keys) or "none (anyone may call)",
             ", ".join(args.cors_origin) or "none")  # how many keys, never the keys

    terminated: list[int] = []
    # uvicorn re-raises the signal that stopped it once it has shut down; this handler takes it, so a
    # SIGTERM stop (every request finished) ends with exit code 0.
    signal.signal(signal.SIGTERM, lambda sig, frame: terminated.append(sig))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,  # ours (observe.py) carries the request id
        **({"log_config": None} if args.log_format == "json" else {}),
        timeout_graceful_shutdown=args.shutdown_timeout,
        lifespan="on",
        http=header_deadline_protocol(args.body_timeout),
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise UsageError(f"could not listen on {args.host}:{args.port} (in use, or not an address here)")
    log.info("stopped%s", " (SIGTERM)" if terminated else "")
    return 0


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        message = record.getMessage()
        if record.name == "autext_jax.serve.access":
            fields.update(json.loads(message))
        else:
            fields["message"] = message
        return json.dumps(fields)


def _json_log_lines() -> None:
    """Our lines and uvicorn's as JSON objects, through our handler (uvicorn's own config is then off)."""
    handlers = logging.getLogger("autext_jax").handlers
    for handler in handlers:
        handler.setFormatter(_JsonLines())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = list(handlers)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(PROG)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(f"{PROG}: error: the service needs its extra: pip install -e '.[serve]'", file=sys.stderr)
        return 2
    return cli_main(PROG, build_parser(), serve, argv)


if __name__ == "__main__":
    sys.exit(main())
