"""Request ids and the hub's log lines.

Every HTTP response carries ``X-Request-Id`` (the caller's own, when it sends a sane one,
else a new one), and every log line written while that request is handled carries the
same id, so a caller's report ("request 01a2… failed") finds the lines it caused. Lines
are text by default, JSON objects with ``SMSGW_LOG_FORMAT=json`` (one per line, for log
shippers).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a caller's id is echoed, never trusted
# New ids: this process's random prefix and a counter (unique across nodes and restarts,
# and a fifth of the cost of 8 random bytes a request).
_PREFIX = secrets.token_hex(4)
_COUNTER = itertools.count(secrets.randbelow(1 << 31))

request_id: ContextVar[str | None] = ContextVar("smsgw_request_id", default=None)


class RequestIds:
    """ASGI middleware: the request's id, in a context variable and on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        rid = text if _SANE.match(text) else f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"
        # Not reset afterwards: uvicorn runs each request in a task of its own (a context
        # of its own), and the error handler outside this middleware logs a crash after
        # it, still with the id.
        request_id.set(rid)
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def setup(level: str, fmt: str = "text") -> None:
    """The root logger's one handler, text or JSON, with request ids on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
