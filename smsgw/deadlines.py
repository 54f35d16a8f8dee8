"""Deadlines for slow HTTP clients: a request's head and its body must arrive in time.

uvicorn closes a keep-alive connection idle between two requests, but has no deadline
for the rest: a connection that never sends a byte, a request head sent one byte at a
time (slowloris), a half-sent WebSocket upgrade, or a body that trickles in would each
hold a socket, a file descriptor and its buffers for as long as the client likes.
Thousands of them starve the phones and the API of descriptors and memory.

So the HTTP protocol here is uvicorn's httptools protocol with two timers:

- **head**: from the connection's start, and after each response, the next request's head
  (request line and headers, a WebSocket upgrade's included) must be complete within
  ``head_timeout``;
- **body**: once the head is in, its body must be complete within ``body_timeout``.

Past either, the connection is closed (no answer: the request never finished). While
the application works on a request, or streams an answer (the app phones' events), no
timer runs. The phones' sockets, once upgraded, are the hub's own protocol's
(smsgw/api/device_ws.py), watched by its heartbeats.

Only with httptools (a dependency wherever it has wheels): uvicorn's h11 fallback keeps
its own behaviour, without these deadlines.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline for each request's head and body."""

    head_timeout = 10.0
    body_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket: the hub's device protocol takes the connection over
        headers = dict(self.headers)
        length = headers.get(b"content-length", b"0")
        if (length.isdigit() and int(length) > 0) or b"transfer-encoding" in headers:
            self._arm(self.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self.head_timeout)  # the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(head_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``Config(http=...)`` with these deadlines."""
    return type(
        "HubHttpProtocol",
        (TimedHttpProtocol,),
        {"head_timeout": head_timeout, "body_timeout": body_timeout},
    )
