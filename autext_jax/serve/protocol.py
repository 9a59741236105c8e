"""Uvicorn's h11 protocol with a deadline for the request line and headers.

Why: uvicorn times out idle keep-alive connections and we time out slow bodies (``app.py``), but a
client that opens a connection and sends its headers a byte at a time would hold it for ever. Here
such a client gets ``408`` (JSON, like every other refusal) and the connection is closed.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class whose connections must send a complete request head within ``timeout_s``."""
    body = json.dumps({"error": f"the request headers did not arrive within {timeout_s:g} s"}).encode()
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        + body
    )

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(timeout_s, self._head_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_deadline.cancel()
            super().connection_lost(exc)

        def _head_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no request has begun
                self.transport.write(answer)
                self.transport.close()

    return HeaderDeadlineProtocol
