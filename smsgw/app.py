"""The ASGI application: routes, error handlers and the hub's lifespan."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from smsgw import httpmetrics

# Endpoint modules register themselves on ``api`` when imported.
from smsgw.api import (  # noqa: F401
    agent,
    api,
    batches,
    devices,
    health,
    keys,
    messages,
    metrics,
    mobile,
    optouts,
    otp,
    phone,
    routes,
    stats,
    templates,
    thirdparty,
    tls,
    webhooks,
)
from smsgw.api.openapi import build_openapi
from smsgw.config import Settings
from smsgw.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    server_error_handler,
)
from smsgw.hub import Hub
from smsgw.logs import RequestIds
from smsgw.ui.routes import routes as ui_routes
from smsgw.ui.sessions import Sessions


class CollapseSlashes:
    """``/api/mobile/v1//device`` is ``/api/mobile/v1/device``: the stock app builds its
    paths by concatenation, so a server URL typed with a trailing slash doubles one, and
    it does not follow redirects (docs/smsgate-app.md)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and "//" in path:
            scope = dict(scope)
            scope["path"] = _SLASHES.sub("/", path)
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


_SLASHES = re.compile("/{2,}")


def create_app(settings: Settings | None = None, hub: Hub | None = None) -> Starlette:
    settings = settings or Settings()
    the_hub = hub or Hub.build(settings)
    spec = build_openapi(api)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await the_hub.start()
        try:
            yield
        finally:
            await the_hub.stop()

    app = Starlette(
        routes=[
            *api.routes(),
            Route("/openapi.json", openapi, include_in_schema=False),
            *ui_routes(),  # the dashboard at /ui/, and /docs (Swagger UI served by the hub)
            # /ws/device is not an ASGI route: uvicorn hands WebSocket upgrades straight to
            # smsgw.api.device_ws (see smsgw/server.py).
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: server_error_handler,
        },
        lifespan=lifespan,
        # Outermost first; the request metrics innermost, where the router's match is seen.
        middleware=[
            Middleware(RequestIds),
            Middleware(CollapseSlashes),
            httpmetrics.middleware(the_hub),
        ],
    )
    app.state.hub = the_hub
    app.state.ui_sessions = Sessions(the_hub)
    return app
