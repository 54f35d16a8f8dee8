"""A local stand-in for the stock app project's push relay (``POST /upstream/v1/push``),
written from ``../shared/specs/smsgate-wire.md`` §4.4: a JSON array of
``{"token", "event", "data"}`` items, ``data`` null or a map of strings, ``event`` one of
the five the relay knows; an empty or invalid array is a 400, a good one a 202 with an
empty body; more than 5 requests in a sliding 60 s window from one address is a 429. It
records what it accepted, and can be told to fail (``status``) for a while. Under a real
uvicorn on a free 127.0.0.1 port. What FCM does next is the test's: ``on_push`` is called
for each accepted item, as the phone would receive it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.harness import free_socket, wait_for

EVENTS = {
    "MessageEnqueued",
    "MessageCancelled",
    "WebhooksUpdated",
    "MessagesExportRequested",
    "SettingsUpdated",
}
WINDOW, LIMIT = 60.0, 5


@dataclass
class PushRelay:
    status: int | None = None  # answer this instead of 202 (e.g. 500), while set
    pushes: list[dict[str, Any]] = field(default_factory=list)  # accepted items
    requests: list[float] = field(default_factory=list)  # monotonic arrival times
    rejected: list[int] = field(default_factory=list)  # statuses of refused requests
    headers: list[dict[str, str]] = field(default_factory=list)
    on_push: Callable[[dict[str, Any]], None] | None = None
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/upstream/v1/push"

    async def start(self) -> PushRelay:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/upstream/v1/push", self._push, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await wait_for(lambda: self._server is not None and self._server.started, what="relay")
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    async def _push(self, request: Request) -> Response:
        now = time.monotonic()
        recent = [t for t in self.requests if now - t < WINDOW]
        self.requests.append(now)
        self.headers.append(dict(request.headers))
        if len(recent) >= LIMIT:
            self.rejected.append(429)
            return Response(status_code=429, headers={"Retry-After": "60"})
        if self.status is not None:
            self.rejected.append(self.status)
            return Response(status_code=self.status)
        try:
            items = json.loads(await request.body())
        except ValueError:
            items = None
        valid = isinstance(items, list) and items and all(_valid(i) for i in items)
        if not valid:
            self.rejected.append(400)
            return Response(status_code=400)
        for item in items:
            self.pushes.append(item)
            if self.on_push is not None:
                self.on_push(item)
        return Response(status_code=202)


def _valid(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("token"), str):
        return False
    if item.get("event") not in EVENTS:
        return False
    data = item.get("data")
    return data is None or (
        isinstance(data, dict) and all(isinstance(v, str) for v in data.values())
    )
