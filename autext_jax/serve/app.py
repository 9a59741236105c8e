"""The FastAPI app: routes; scoring goes through the batching queue.

Routes: ``POST /v1/score`` (``{"texts": [...]}`` or ``{"text": "..."}`` → ``{"records": [...]}``, the CLI's
records), ``POST /`` (the Hugging Face text-classification shape, so a server URL works as an
``InferenceClient`` model), ``GET /v1/info``, ``GET /metrics`` (Prometheus), ``GET /healthz`` (alive),
``GET /readyz`` (ready for more work), the page at ``GET /``, and the OpenAPI description at
``/openapi.json`` (browsable at ``/docs``), generated from the models in ``schemas.py`` that also validate
every body. With API keys (``auth.py``) every route but the page, the description, ``/healthz`` and
``/readyz`` needs one.

Why every bad request gets a 4xx JSON error and never a 5xx: the body is read with a size cap and a
deadline, parsed as strict JSON, and validated (``reading.py``) before anything reaches the detector.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from autext_jax.errors import AutextError
from autext_jax.serve import schemas
from autext_jax.serve.auth import KeyCheck
from autext_jax.serve.batching import (
    BatchingConfig,
    BatchingQueue,
    QueueClosedError,
    QueueFullError,
    QueueTimeoutError,
)
from autext_jax.serve.observe import Metrics, Observe
from autext_jax.serve.reading import RequestError, parse_json, read_body, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    """Request limits: bytes per body, texts per request, characters per text, seconds to send a body."""

    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_chars: int = 50_000
    body_timeout_s: float = 10.0


@dataclass(frozen=True)
class ServeOptions:
    """Who may call (``api_keys``; none: anyone), which browser origins may (``cors_origins``; none: only
    the page's own), and the access log (off, ``text`` or ``json`` lines)."""

    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    access_log: str | None = None  # None, "text" or "json"


_REFUSALS = {
    status: {"model": schemas.ErrorBody, "description": why}
    for status, why in [
        (400, "not JSON: empty, malformed, not UTF-8, NaN, nested too deeply"),
        (408, "the body did not arrive within the body timeout"),
        (413, "over a limit: body bytes, texts per request, characters per text"),
        (401, "missing or wrong API key (only when the service has keys)"),
        (422, "valid JSON the request model refuses (the first problem, in words)"),
        (429, "the batching queue is full: retry after Retry-After seconds"),
        (503, "shutting down, or no answer within the request timeout"),
    ]
}


def create_app(
    detector: Any,
    *,
    limits: ServeLimits | None = None,
    batching: BatchingConfig | None = None,
    model_name: str | None = None,
    options: ServeOptions | None = None,
) -> FastAPI:
    """The app around a loaded detector (``score_records``, ``operating_points`` and ``threshold``)."""
    limits, options = limits or ServeLimits(), options or ServeOptions()
    name = model_name or str(getattr(detector, "model_dir", None) or "embedded")
    metrics = Metrics({"model": name, "threshold": f"{float(detector.threshold):g}"})

    def score(texts: list[str], segments: str | None, operating_point: str | None) -> list[dict]:
        return detector.score_records(texts, segments=segments, operating_point=operating_point)

    batcher = BatchingQueue(score, batching, observer=metrics)
    metrics.queued.set_function(lambda: batcher.queued_texts)
    keyed = [Depends(KeyCheck(options.api_keys))]
    operating_points = {k: float(v) for k, v in dict(detector.operating_points).items()}
    models = schemas.request_models(limits.max_texts, limits.max_chars, sorted(operating_points))
    info = {
        "model": name,
        "threshold": float(detector.threshold),
        "operating_points": operating_points,
        "segment_modes": list(schemas.SEGMENT_MODES),
        "limits": asdict(limits),
    }

    async def checked(request: Request, model: type[BaseModel]) -> Any:
        body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        return validate(model, parse_json(body), sorted(operating_points))

    async def records_of(texts: list[str], segments: str | None, operating_point: str | None) -> list[dict]:
        try:
            return await batcher.submit(texts, segments=segments, operating_point=operating_point)
        except QueueFullError as error:
            raise RequestError(429, str(error), {"Retry-After": str(error.retry_after_s)}) from None
        except (QueueClosedError, QueueTimeoutError) as error:
            raise RequestError(503, str(error)) from None
        except AutextError as error:  # a scoring option the detector refuses (checked above; a backstop)
            raise RequestError(422, str(error)) from None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # Uvicorn has finished every in-flight request by now; the queue is empty or finishing.
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    app = FastAPI(
        title="autext_jax",
        summary="Is this text written by a language model? Scores English and Spanish texts.",
        version=_version(),
        lifespan=lifespan,
        redoc_url=None,
    )

    @app.post(
        "/v1/score",
        response_model=schemas.ScoreResponse,
        response_model_exclude_unset=True,  # a record's absent fields stay absent (not null)
        responses=_REFUSALS,
        openapi_extra=_body_doc(models.score),
        dependencies=keyed,
        summary="Score texts: one record per text",
    )
    async def score_route(request: Request) -> Any:
        req = await checked(request, models.score)
        return {"records": await records_of(req.all_texts(), req.segments, req.operating_point)}

    @app.post(
        "/",
        response_model=schemas.HFResponse,
        responses=_REFUSALS,
        openapi_extra=_body_doc(models.hf),
        dependencies=keyed,
        summary="Hugging Face text classification (InferenceClient.text_classification)",
        description="Per text, its labels with the service's decision first. Unknown keys (anywhere in "
        "the body, as the Hugging Face task specification allows) are ignored and named in X-Ignored-Keys.",
    )
    async def hf_route(request: Request, response: Response) -> Any:
        req = await checked(request, models.hf)
        records = await records_of(req.all_texts(), None, req.operating_point)
        top_k = req.parameters.top_k if req.parameters is not None else None
        if ignored := req.ignored_keys():
            response.headers["X-Ignored-Keys"] = ", ".join(ignored)
        return [hf_labels(r, top_k) for r in records]

    @app.get("/v1/info", response_model=schemas.Info, dependencies=keyed, responses=_REFUSALS,
             summary="Model, threshold, operating points, limits")
    async def info_route() -> Any:
        return {**info, "batches": asdict(batcher.stats)}

    @app.get("/metrics", dependencies=keyed, response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}, 401: _REFUSALS[401]})
    async def metrics_route() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", summary="The process is alive (open without a key)")
    async def health_route() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready for more work: model loaded and compiled, queue not full (open)",
             responses={503: {"model": schemas.ErrorBody, "description": "shutting down or queue full"}})
    async def ready_route() -> Response:
        if batcher.closed:
            return JSONResponse({"error": "shutting down"}, status_code=503)
        if batcher.full:
            message = f"the batching queue is full ({batcher.queued_texts} texts)"
            return JSONResponse({"error": message}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page_route() -> Response:
        return HTMLResponse(_page_html(), headers={"Cache-Control": "no-store"})

    app.openapi = _openapi_with_models(app, [models.score, models.hf])  # type: ignore[method-assign]
    for error_type, handler in _HANDLERS.items():
        app.add_exception_handler(error_type, handler)
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-Ignored-Keys"],
        )
    log_lines = options.access_log
    app.add_middleware(  # outermost of ours: it sees every answer, CORS refusals included
        Observe, metrics=metrics, access=log_lines is not None, json_lines=log_lines == "json"
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.limits = limits
    return app


def hf_labels(record: dict, top_k: int | None) -> list[dict]:
    """A record as Hugging Face labels: the decision (``is_bot``) first, whatever the probabilities."""
    p = float(record["bot_prob"])
    generated, human = {"label": "generated", "score": p}, {"label": "human", "score": 1.0 - p}
    labels = [generated, human] if record["is_bot"] else [human, generated]
    return labels[:top_k] if top_k else labels


# ---- the OpenAPI document ----------------------------------------------------------------------------


def _ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


def _body_doc(model: type[BaseModel]) -> dict:
    """``openapi_extra`` naming ``model`` as the JSON request body (the handler validates with it)."""
    schema = {"$ref": _ref(model)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _openapi_with_models(app: FastAPI, models: list[type[BaseModel]]) -> Callable[[], dict]:
    """FastAPI's document with the request models (and their ``$defs``) under ``components.schemas``."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


# ---- errors and the page -----------------------------------------------------------------------------


async def _request_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


async def _client_gone(request: Request, error: Exception) -> Response:
    message = "the client closed the connection before sending the body"
    return JSONResponse({"error": message}, status_code=400)


async def _server_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error while answering %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


_HANDLERS = {
    RequestError: _request_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _server_error,
}

_PAGE: list[str] = []


def _page_html() -> str:
    if not _PAGE:
        _PAGE.append(resources.files("autext_jax.serve").joinpath("page.html").read_text("utf-8"))
    return _PAGE[0]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autext-jax")
    except PackageNotFoundError:
        return "0"
