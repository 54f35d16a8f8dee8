"""HTTP requests and their latency by route template, for ``GET /metrics``.

An ASGI middleware: ``smsgw_http_requests_total{method,route,status}`` and
``smsgw_http_request_duration_seconds{method,route}`` in the hub's own registry
(smsgw/telemetry.py). ``route`` is the template of the Starlette route that answered
(``/sms/{message_id}``), never the raw path, so the label set is the API's routes and not
one series per message id; a path no route matched is ``<unmatched>``.

The duration runs to the start of the response (its status and headers), not its end: an
event stream (the stock app's ``/events``) then counts like any other answer instead of
as an hour-long request. The phones' WebSocket (``/ws/device``) never passes through
here: uvicorn hands upgrades straight to smsgw/api/device_ws.py, and anything that is not
plain HTTP is passed on unmeasured.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smsgw.telemetry import HubMetrics

if TYPE_CHECKING:
    from smsgw.hub import Hub

UNMATCHED = "<unmatched>"


def middleware(hub: Hub) -> Middleware:
    """The entry for ``create_app``'s middleware list. Put it after ``CollapseSlashes``
    (innermost): it reads the route the router writes into the request's scope, and an
    outer middleware that copies the scope would hide it."""
    return Middleware(HttpMetrics, metrics=hub.metrics)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The template of the route that handled ``scope`` (Starlette's router records it
    in ``scope["route"]``); ``root_path``: the scope's root path before routing."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):  # a mounted app answered (static files, or its 404)
        return f"{path}/{{path}}"
    # A route inside a mount: its path is relative to the mount's.
    mounted: str = scope.get("root_path", "")[len(root_path) :]
    return mounted + path


class HttpMetrics:
    """ASGI middleware counting each HTTP request once, by route template and status."""

    def __init__(self, app: ASGIApp, metrics: HubMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = scope.get("root_path", "")
        answered = False

        async def send_counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.metrics.http_request(
                    scope["method"],
                    route_template(scope, root),
                    message["status"],
                    time.perf_counter() - started,
                )
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            # Not answered yet: the outermost error handler answers 500 after this.
            if not answered:
                self.metrics.http_request(
                    scope["method"], route_template(scope, root), 500,
                    time.perf_counter() - started,
                )  # fmt: skip
            raise
