"""A lingering close: the rest of a refused request's body is read before the answer.

A hub that answers (413 for a body over the limit, 401 before a body is even read) and
closes while the client is still uploading leaves unread bytes in the socket; the kernel
then resets the connection, and a client that writes its whole body before reading
(Python's urllib and requests, PHP's curl: they send ``Connection: close``) gets "Broken
pipe" or "Connection reset" instead of the answer. So, as nginx does, the rest of the body
is read and thrown away before the answer goes out, within a bound: at most
``DRAIN_BYTES`` and ``DRAIN_SECONDS``. Past either, or for a body declared larger than
what is left of the bound, the answer goes out at once with ``Connection: close`` (such a
client may then see a reset). A client that sent ``Expect: 100-continue`` has sent no body
yet: it is answered at once too (reading would invite the upload).

It wraps the whole ASGI application (smsgw/server.py), so every early answer is covered
(401, 404, 405, 413, 429, ...), not only the body readers'.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The most a refused request may make the hub read and discard: 16 MiB past what the
# endpoint read itself (at most SMSGW_MAX_BODY_BYTES), within 5 seconds.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0


class LingeringClose:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        has_body = (declared.isdigit() and int(declared) > 0) or b"transfer-encoding" in headers
        ended = not has_body  # the body has been read to its end (or there is none)
        started = False  # the application asked for the body at least once
        received = 0

        async def tracked() -> Message:
            nonlocal ended, started, received
            started = True
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
            return message

        async def answering(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start" and not ended:
                ended = True
                left = int(declared) - received if declared.isdigit() else 0
                waiting = headers.get(b"expect", b"").lower() == b"100-continue" and not started
                if waiting or left > DRAIN_BYTES or not await _drain(receive):
                    close = [(b"connection", b"close")]
                    message = {**message, "headers": [*message.get("headers", ()), *close]}
            await send(message)

        await self.app(scope, tracked, answering)


async def _drain(receive: Receive) -> bool:
    """Read and drop the rest of the body: True when it ended within the bound."""
    budget = DRAIN_BYTES
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False  # the client left
                budget -= len(message.get("body", b""))
                if budget < 0:
                    return False
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False
