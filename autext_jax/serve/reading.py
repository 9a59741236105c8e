"""Reading a request: the body under a size cap and a deadline, strict JSON, and validation errors in words.

Why by hand rather than by the framework: the cap must hold before the body is read (a declared length
over it is refused at once, a chunked body is cut off), a client that sends slowly must not hold a worker,
and the JSON must be strict (UTF-8 only, no ``NaN``/``Infinity``, bounded nesting) before the pydantic
models (``schemas.py``) check fields. Every refusal is a ``RequestError``: a 4xx with one line.

A body over the cap whose client is still sending is read and thrown away up to ``DRAIN_BYTES`` before the
413 goes out: a client that writes its whole body before reading (``urllib``, ``http.client``) otherwise
sees a broken pipe instead of the answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

DRAIN_BYTES = 64 << 20  # read and discard at most this much of a body over the limit, so the client sees 413


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most ``max_bytes`` (else 413), within ``timeout_s`` seconds (else 408)."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, "Content-Length must be a non-negative integer")
    too_large = RequestError(
        413,
        f"request body over {max_bytes} bytes; send fewer or shorter texts per request",
        {"Connection": "close"},
    )
    if declared is not None and int(declared) > max_bytes:
        # A client waiting for "100 Continue" has sent nothing yet; one that declared more than we
        # would drain gets the answer at once (it may see a reset, which it has asked for).
        waiting = request.headers.get("expect", "").lower() == "100-continue"
        if waiting or int(declared) > DRAIN_BYTES:
            raise too_large
    seen = [0]
    try:
        async with asyncio.timeout(timeout_s):
            return await _capped_body(request, max_bytes, too_large, seen)
    except TimeoutError:
        if seen[0] > max_bytes:  # it was being drained: the answer is still "too large"
            raise too_large from None
        message = f"the request body did not arrive within {timeout_s:g} s"
        raise RequestError(408, message, {"Connection": "close"}) from None


async def _capped_body(request: Request, max_bytes: int, too_large: RequestError, seen: list[int]) -> bytes:
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        seen[0] = size
        if size > max_bytes:
            parts.clear()
            if size > DRAIN_BYTES:
                raise too_large
            continue  # drain: keep reading (and dropping) so the client can read the 413
        parts.append(chunk)
    if size > max_bytes:
        raise too_large
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    """Strict JSON from the body: UTF-8 only, no NaN/Infinity, nesting within the interpreter's limit."""
    if not body.strip():
        raise RequestError(400, 'empty request body; send JSON such as {"texts": ["..."]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise RequestError(400, f"malformed JSON: {error.msg} at {where}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    except ValueError as error:
        raise RequestError(400, f"malformed JSON: {error}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def validate(model: type[BaseModel], payload: Any, operating_points: list[str]) -> Any:
    """``model`` checked against ``payload``; the first problem as a ``RequestError`` (413 for limits)."""
    if not isinstance(payload, dict):
        raise RequestError(422, 'the body must be a JSON object such as {"texts": ["..."]}')
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise _in_words(error.errors(include_url=False), payload, operating_points, model) from None


def _in_words(
    errors: list[dict], payload: dict, operating_points: list[str], model: type[BaseModel]
) -> RequestError:
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        hint = ' (the Hugging Face shape, "inputs", is served at POST /)' if "inputs" in unknown else ""
        return RequestError(422, f"unknown fields {unknown}; known: {sorted(model.model_fields)}{hint}")
    error = _most_specific(errors, payload)
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    where, value, kind, ctx = _where(loc), error.get("input"), error["type"], error.get("ctx") or {}
    top = loc[0] if loc else None
    if top == "operating_point":
        have = ", ".join(operating_points) or "none"
        return RequestError(422, f"unknown operating point {value!r}; this model has: {have}")
    if top == "segments":
        return RequestError(422, f'"segments" must be one of {list(ctx.get("expected_py", _modes()))} or '
                                 f"null, got {value!r}")
    if kind == "too_long":
        count, limit = ctx["actual_length"], ctx["max_length"]
        return RequestError(413, f"{count} texts in one request; the limit is {limit}")
    if kind == "string_too_long":
        return RequestError(413, f"{where} has {len(value)} characters; the limit is {ctx['max_length']}")
    if kind == "too_short":
        return RequestError(422, f'"{where}" must be a non-empty list of strings')
    if kind == "string_type":
        return RequestError(422, f"{where} must be a string, got {_json_type(value)}")
    if kind == "list_type" and where == "texts":
        return RequestError(422, '"texts" must be a list of strings (use "text" for one string)')
    if kind in ("int_type", "greater_than_equal") and where == "parameters.top_k":
        return RequestError(422, f'"parameters.top_k" must be a positive integer, got {value!r}')
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return RequestError(422, f'"{where}" must be an object, got {_json_type(value)}')
    if kind == "string_unicode" and isinstance(value, str):  # pydantic refuses it before our validator
        start = next((i for i, c in enumerate(value) if 0xD800 <= ord(c) <= 0xDFFF), 0)
        return RequestError(422, f"{where} contains an unpaired surrogate at character {start}")
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return RequestError(422, message if not where else f"{where} {message}")
    if kind == "missing":
        return RequestError(422, f'"{where}" is required')
    return RequestError(422, f"{where or 'body'}: {error['msg']}")


def _most_specific(errors: list[dict], payload: dict) -> dict:
    """Of a union's alternatives, the error of the one the value's JSON type meant (a list: the list)."""
    for error in errors:
        tags = [part for part in error["loc"] if _is_union_tag(part)]
        if not tags:
            return error
        value = payload.get(error["loc"][0]) if isinstance(payload, dict) else None
        if isinstance(value, list) == str(tags[0]).startswith("list"):
            return error
    return errors[0]


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "constrained-str"))


def _where(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _modes() -> list[str]:
    from autext_jax.serve.schemas import SEGMENT_MODES

    return list(SEGMENT_MODES)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
