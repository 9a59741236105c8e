"""The Starlette app: routes, request parsing and limits; scoring goes through the batching queue.

Routes: ``POST /v1/score`` (``{"texts": [...]}`` or ``{"text": "..."}`` → ``{"records": [...]}``, the CLI's
records; ``{"inputs": ...}`` → the Hugging Face text-classification shape), ``GET /v1/info`` (model,
threshold, operating points, limits), ``GET /healthz``, and the page at ``/``.

Why every bad request gets a 4xx JSON error and never a 5xx: the body is read with a size cap and a
deadline, decoded as strict UTF-8, parsed as JSON, and every field checked (type, count, length,
unpaired surrogates, known operating point) before anything reaches the detector.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from autext_jax import segments as segments_module
from autext_jax.errors import AutextError
from autext_jax.serve.batching import BatchingConfig, BatchingQueue, QueueClosedError

log = logging.getLogger(__name__)

SEGMENT_MODES = segments_module.MODES
HF_LABELS = ("generated", "human")  # label of bot_prob, label of 1 - bot_prob


@dataclass(frozen=True)
class ServeLimits:
    """Request limits: bytes per body, texts per request, characters per text, seconds to send a body."""

    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_chars: int = 50_000
    body_timeout_s: float = 10.0


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ScoreRequest:
    """A checked request: texts, options, and which response shape the client asked for."""

    texts: list[str]
    segments: str | None
    operating_point: str | None
    shape: str  # "records" or "hf"
    hf_single: bool = False
    top_k: int | None = None


def create_app(
    detector: Any,
    *,
    limits: ServeLimits | None = None,
    batching: BatchingConfig | None = None,
    model_name: str | None = None,
) -> Starlette:
    """The app around a loaded detector (``score_records``, ``operating_points`` and ``threshold``)."""
    limits = limits or ServeLimits()

    def score(texts: list[str], segments: str | None, operating_point: str | None) -> list[dict]:
        return detector.score_records(texts, segments=segments, operating_point=operating_point)

    batcher = BatchingQueue(score, batching)
    info = {
        "model": model_name or str(getattr(detector, "model_dir", None) or "embedded"),
        "threshold": float(detector.threshold),
        "operating_points": {k: float(v) for k, v in dict(detector.operating_points).items()},
        "segment_modes": list(SEGMENT_MODES),
        "limits": asdict(limits),
    }

    async def score_route(request: Request) -> Response:
        body = await _read_body(request, limits)
        req = parse_score_request(body, limits, info["operating_points"])
        try:
            records = await batcher.submit(
                req.texts, segments=req.segments, operating_point=req.operating_point
            )
        except QueueClosedError as error:
            raise RequestError(503, str(error)) from None
        except AutextError as error:  # a scoring option the detector refuses (checked above; a backstop)
            raise RequestError(422, str(error)) from None
        if req.shape == "hf":
            return JSONResponse(_hf_response(records, req))
        return JSONResponse({"records": records})

    async def info_route(request: Request) -> Response:
        return JSONResponse({**info, "batches": asdict(batcher.stats)})

    async def health_route(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page_route(request: Request) -> Response:
        return HTMLResponse(_page_html(), headers={"Cache-Control": "no-store"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        # Uvicorn has finished every in-flight request by now; the queue is empty or finishing.
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    app = Starlette(
        routes=[
            Route("/", page_route, methods=["GET"]),
            Route("/healthz", health_route, methods=["GET"]),
            Route("/v1/info", info_route, methods=["GET"]),
            Route("/v1/score", score_route, methods=["POST"]),
        ],
        exception_handlers={
            RequestError: _request_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.limits = limits
    return app


# ---- reading and checking requests ----------------------------------------------------------------


async def _read_body(request: Request, limits: ServeLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "Content-Length must be a non-negative integer")
        if int(declared) > limits.max_body_bytes:
            raise RequestError(413, _too_large(limits))
    try:
        return await asyncio.wait_for(_capped_body(request, limits), limits.body_timeout_s)
    except TimeoutError:
        raise RequestError(
            408, f"the request body did not arrive within {limits.body_timeout_s:g} s"
        ) from None


async def _capped_body(request: Request, limits: ServeLimits) -> bytes:
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise RequestError(413, _too_large(limits))
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limits: ServeLimits) -> str:
    return f"request body over {limits.max_body_bytes} bytes; send fewer or shorter texts per request"


def parse_score_request(body: bytes, limits: ServeLimits, operating_points: dict[str, float]) -> ScoreRequest:
    """Check a ``/v1/score`` body; raise ``RequestError`` (4xx) naming the first problem."""
    if not body.strip():
        raise RequestError(400, 'empty request body; send JSON such as {"texts": ["..."]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {error.start})") from None
    try:
        payload = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise RequestError(400, f"malformed JSON: {error.msg} at {where}") from None
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, 'the body must be a JSON object such as {"texts": ["..."]}')
    given = [k for k in ("texts", "text", "inputs") if k in payload]
    if len(given) != 1:
        raise RequestError(422, 'give exactly one of "texts" (a list), "text" or "inputs"')
    key = given[0]
    allowed = {key, "segments", "operating_point"} | ({"parameters"} if key == "inputs" else set())
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise RequestError(422, f"unknown fields {unknown}; known: {sorted(allowed)}")
    value = payload[key]
    single = isinstance(value, str)
    if key == "texts" and single:
        raise RequestError(422, '"texts" must be a list of strings (use "text" for one string)')
    if key == "text" and not single:
        raise RequestError(422, '"text" must be a string (use "texts" for a list)')
    texts = [value] if single else value
    if not isinstance(texts, list) or not texts:
        raise RequestError(422, f'"{key}" must be a string or a non-empty list of strings')
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
    for i, item in enumerate(texts):
        where = key if single else f"{key}[{i}]"
        _check_text(item, where, limits)
    segments = payload.get("segments")
    if segments is not None and segments not in SEGMENT_MODES:
        raise RequestError(422, f'"segments" must be one of {list(SEGMENT_MODES)} or null, got {segments!r}')
    operating_point = payload.get("operating_point")
    if operating_point is not None:
        if not isinstance(operating_point, str) or operating_point not in operating_points:
            have = ", ".join(operating_points) or "none"
            raise RequestError(422, f"unknown operating point {operating_point!r}; this model has: {have}")
    top_k = _top_k(payload.get("parameters")) if key == "inputs" else None
    shape = "hf" if key == "inputs" else "records"
    return ScoreRequest(texts, segments, operating_point, shape, hf_single=single, top_k=top_k)


def _check_text(item: Any, where: str, limits: ServeLimits) -> None:
    if not isinstance(item, str):
        raise RequestError(422, f"{where} must be a string, got {_json_type(item)}")
    if len(item) > limits.max_chars:
        raise RequestError(413, f"{where} has {len(item)} characters; the limit is {limits.max_chars}")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as error:
        message = f"{where} contains an unpaired surrogate at character {error.start}"
        raise RequestError(422, message) from None


def _top_k(parameters: Any) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise RequestError(422, '"parameters" must be an object')
    top_k = parameters.get("top_k")
    if top_k is None:
        return None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise RequestError(422, f'"parameters.top_k" must be a positive integer, got {top_k!r}')
    return top_k


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _hf_response(records: list[dict], req: ScoreRequest) -> list:
    """Hugging Face text-classification: per text, ``[{label, score}]`` sorted by score (all labels)."""
    out = []
    for record in records:
        p = float(record["bot_prob"])
        labels = sorted(
            [{"label": HF_LABELS[0], "score": p}, {"label": HF_LABELS[1], "score": 1.0 - p}],
            key=lambda item: -item["score"],
        )
        out.append(labels[: req.top_k] if req.top_k else labels)
    return out[0] if req.hf_single else out


# ---- errors and the page --------------------------------------------------------------------------


async def _request_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    headers = {"Connection": "close"} if error.status in (408, 413) else None
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


async def _client_gone(request: Request, error: Exception) -> Response:
    message = "the client closed the connection before sending the body"
    return JSONResponse({"error": message}, status_code=400)


async def _server_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error while answering %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


_PAGE: list[str] = []


def _page_html() -> str:
    if not _PAGE:
        _PAGE.append(resources.files("autext_jax.serve").joinpath("page.html").read_text("utf-8"))
    return _PAGE[0]

