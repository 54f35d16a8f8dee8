"""The small layer between Starlette and the endpoints: declared endpoints, auth, bodies.

Each endpoint is declared once with its request model, response models and required
scope; from that declaration we get the Starlette route, the body parsing (size limit,
invalid JSON, validation -> one error shape) and the OpenAPI document. Handlers receive
parsed pydantic models and return pydantic models.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smsgw.auth import Principal, Scope
from smsgw.errors import ApiError, over_limit, validation_details
from smsgw.hub import Hub
from smsgw.idempotency import HEADER as IDEMPOTENCY_HEADER
from smsgw.idempotency import request_hash

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Call:
    """What a handler gets: the request, the hub, who is calling, and the parsed body."""

    request: Request
    hub: Hub
    principal: Principal | None
    body: Any = None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


@dataclass(slots=True)
class Reply:
    model: BaseModel | None
    status: int = 200


Handler = Callable[[Call], Awaitable[BaseModel | Reply | Response]]


@dataclass(slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    scope: Scope | None  # None: no client key (public, or authenticated by the handler)
    body: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | None]
    query: type[BaseModel] | None = None
    security: str | None = "ApiKey"
    idempotent: bool = False  # honours the Idempotency-Key header
    raw_body: bool = False  # the handler reads the body itself (``body`` is for the docs)


@dataclass
class Api:
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        scope: Scope | None,
        body: type[BaseModel] | None = None,
        responses: dict[int, type[BaseModel] | None],
        query: type[BaseModel] | None = None,
        security: str | None = "ApiKey",
        idempotent: bool = False,
        raw_body: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    summary,
                    tag,
                    scope,
                    body,
                    responses,
                    query,
                    security,
                    idempotent,
                    raw_body,
                )
            )
            return handler

        return register

    def routes(self) -> list[Route]:
        return [
            Route(ep.path, _asgi(ep), methods=[ep.method], name=ep.handler.__name__)
            for ep in self.endpoints
        ]


def _asgi(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        hub: Hub = request.app.state.hub
        principal = await hub.auth.client(request, ep.scope) if ep.scope else None
        if principal is not None:
            count_request(hub, principal)
        call = Call(request, hub, principal)
        key = request.headers.get(IDEMPOTENCY_HEADER) if ep.idempotent else None
        raw: Any = None
        if ep.body is not None and not ep.raw_body:
            data = await read_body(request, hub.settings.max_body_bytes)
            if key is not None:
                raw = decode_json(data)  # the request's fingerprint is of the parsed body
            call.body = parse_json_model(ep.body, data)
        if ep.query is not None:
            call.body = parse_model(ep.query, query_values(request))

        async def respond() -> Response:
            result = await ep.handler(call)
            if isinstance(result, Response):
                return result
            reply = result if isinstance(result, Reply) else Reply(result)
            if reply.model is None:
                return Response(status_code=reply.status)
            # pydantic writes the JSON itself: no intermediate dict, no second encoder.
            return Response(
                reply.model.model_dump_json(by_alias=True),
                reply.status,
                media_type="application/json",
            )

        if key is not None and principal is not None:
            owner = principal.key_id or principal.name
            fingerprint = request_hash(ep.method, request.url.path, raw)
            return await hub.idempotency.run(owner, key, fingerprint, respond)
        return await respond()

    return endpoint


def count_request(hub: Hub, principal: Principal) -> None:
    """Count a call against its key's requests per minute; 429 over the limit."""
    limit = principal.rate_limit_rpm or hub.settings.key_rate_limit_rpm
    wait = hub.limits.requests.acquire(principal.key_id or principal.name, limit)
    if wait is not None:
        message = f"more than {limit} requests per minute for this key"
        raise over_limit("rate_limited", message, wait, f"{limit}/min")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``. The
    rest of a refused body is read and dropped before the 413 goes out, within a bound
    (smsgw/lingering.py), so a client still uploading reads the answer."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def query_values(request: Request) -> dict[str, str]:
    """The query string's parameters, an empty one (``?limit=``) taken as absent: what a
    form or a client that fills a template with an unset value sends."""
    return {k: v for k, v in request.query_params.items() if v != ""}


def decode_json(raw: bytes) -> Any:
    # The content type is not checked: `curl -d` labels JSON as a form, and the body
    # either parses as JSON or gets a clear 400.
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty; a JSON object is expected")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None


def parse_json_model(model: type[M], raw: bytes) -> M:
    """``raw`` parsed and validated as ``model``: 400 if not JSON, 422 if not valid."""
    if NUL_ESCAPE not in raw:  # (a raw NUL byte is not valid JSON: decode_json says so)
        try:
            # One pass in pydantic's own parser for the common case...
            return model.model_validate_json(raw)
        except ValidationError:
            pass
    # ...and for anything it refuses, the two steps that say precisely what is wrong.
    return parse_model(model, decode_json(raw))


# U+0000 in any text: PostgreSQL cannot store it in a text column, and no SMS, name or
# URL needs it; refused on every engine alike, in the body and the query.
NUL_ESCAPE = b"\\u0000"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_model(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "a JSON object is expected")
    if _has_nul(data):
        raise ApiError(422, "invalid_request", "text may not contain U+0000 (NUL)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError, status: int = 422) -> ApiError:
    """The one error for a body that does not validate: its first problem, and all of
    them in ``details``."""
    details = validation_details(exc)
    first = details[0]
    return ApiError(status, "invalid_request", f"{first['field']}: {first['message']}", details)
