"""API keys: ``Authorization: Bearer KEY`` on every route but ``/healthz``, ``/readyz``, the page and the
OpenAPI description.

Why a constant-time comparison of SHA-256 digests against every key: the time to refuse must not tell how much
of a guess was right, which key it was near, nor how long the keys are. A missing or wrong key is a 401 JSON
answer with ``WWW-Authenticate``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from autext_jax.serve.reading import RequestError

ENV_KEY = "AUTEXT_JAX_API_KEY"  # one key, or several separated by commas

bearer = HTTPBearer(auto_error=False, description="one of the keys given with --api-key")


class KeyCheck:
    """A FastAPI dependency: passes when the request carries one of ``keys`` (or when there are none)."""

    def __init__(self, keys: Sequence[str]):
        self._keys = [_digest(key) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> None:
        if not self._keys:
            return
        given = _digest(credentials.credentials if credentials is not None else "")
        matched = False
        for key in self._keys:  # every key compared, whatever matched
            matched |= hmac.compare_digest(given, key)
        if not matched:
            why = "wrong API key" if credentials is not None else "missing API key"
            raise RequestError(
                401, f"{why}: send the header Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
            )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def keys_from(flags: Sequence[str] | None, env_value: str | None) -> list[str]:
    """``--api-key`` values, else the environment's comma-separated keys; empty ones dropped."""
    raw = list(flags or []) or (env_value or "").split(",")
    return [key.strip() for key in raw if key.strip()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
