"""One error shape for every 4xx/5xx: ``{"error": {"code": ..., "message": ...}}``.

Handlers raise ``ApiError`` (or let Starlette/pydantic raise); the exception handlers here
map everything at the boundary so no endpoint formats errors itself. The one exception is
SMSGate's 3rd-party API (``/api/3rdparty/v1``), whose clients read SMSGate's body,
``{"message": ..., "code": ...}``, and whose validation errors are 400, not 422.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

log = logging.getLogger("smsgw")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def over_limit(code: str, message: str, wait: float, limit: str) -> ApiError:
    """A 429 for a sliding-window limit: when to try again, and what the limit is."""
    headers = {"Retry-After": str(int(wait)), "X-RateLimit-Limit": limit}
    return ApiError(429, code, message, headers=headers)


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


THIRDPARTY_PREFIX = "/api/3rdparty/v1/"


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    all_headers = dict(headers or {})
    if path.startswith(THIRDPARTY_PREFIX):
        if status == 401:
            all_headers["WWW-Authenticate"] = 'Basic realm="smsgw", Bearer'
        status = 400 if status == 422 else status
        body: dict[str, Any] = {"message": message, "code": code}
        return JSONResponse(body, status_code=status, headers=all_headers)
    if status == 401:
        all_headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(code, message, details), status_code=status, headers=all_headers)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors(include_url=False)
    ]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.message, exc.details, exc.headers, request.url.path
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(
        exc.status_code,
        code,
        str(exc.detail),
        headers=headers,
        path=request.url.path,
    )


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's 405 names only the first
    route it tried, and each method of a path is a route of its own here: /devices/{id}
    would allow GET but not PATCH or DELETE."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        served = isinstance(route, Route) and route.methods
        if served and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def server_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error", path=request.url.path)
