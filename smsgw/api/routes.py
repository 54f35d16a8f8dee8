"""Routes beyond phones (docs/routes.md): the admin's CRUD under ``/routes``, and the
providers' delivery callbacks at ``/routes/{route_id}/callback``.

Credentials are write-only: validated per kind, sealed at rest by the store, and never
part of an answer. A callback carries no API key: the provider's signature over the
route's callback URL is the credential (``smsgw/providers/``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from smsgw.api import api
from smsgw.api.framework import Call, Reply, read_body
from smsgw.api.models import BODY_ERRORS, ErrorOut, Strict, unchanged_if_absent
from smsgw.auth import Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError
from smsgw.providers.twilio import SIGNATURE_HEADER
from smsgw.route_policy import SMS_TYPES
from smsgw.route_worker import route_callback_url
from smsgw.store import Conflict
from smsgw.store.records import Route

log = logging.getLogger("smsgw.api")

Kind = Literal["twilio", "sns"]
SmsType = Literal["otp", "transactional", "promotional", "alert", "marketing"]
assert set(SMS_TYPES) == {"otp", "transactional", "promotional", "alert", "marketing"}

# What each kind needs to authenticate (checked on create and on every credential change).
CREDENTIALS: dict[str, tuple[str, ...]] = {
    "twilio": ("account_sid", "auth_token"),
    "sns": ("region", "access_key_id", "secret_access_key"),
}


def check_credentials(kind: str, creds: dict[str, Any]) -> None:
    needed = CREDENTIALS[kind]
    missing = [k for k in needed if not isinstance(creds.get(k), str) or not creds[k]]
    extra = sorted(set(creds) - set(needed))
    if missing or extra:
        detail = [{"field": f"credentials.{k}", "message": "required text"} for k in missing]
        detail += [{"field": f"credentials.{k}", "message": "unknown"} for k in extra]
        raise ApiError(
            422,
            "invalid_credentials",
            f"a {kind} route's credentials are {', '.join(needed)}",
            detail,
        )


class RoutePolicy(Strict):
    """When the route may take a message (docs/routes.md)."""

    after_seconds: StrictFloat | StrictInt = Field(
        default=60,
        ge=0,
        le=7 * 24 * 3600,
        description="take a message no phone accepted within this many seconds of its "
        "creation (a message forced to the route goes at once)",
    )
    sms_types: list[SmsType] | None = Field(
        default=None, max_length=5, description="only these types (null: every type)"
    )
    max_cost_per_message: StrictFloat | StrictInt | None = Field(
        default=None, ge=0, le=1e6, description="never a message whose price is above"
    )
    max_cost_per_day: StrictFloat | StrictInt | None = Field(
        default=None, ge=0, le=1e9, description="never above this total per UTC day"
    )


class RouteIn(Strict):
    kind: Kind
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    enabled: StrictBool = True
    credentials: dict[str, StrictStr] = Field(
        description="write-only: twilio {account_sid, auth_token}; "
        "sns {region, access_key_id, secret_access_key}",
        max_length=8,
    )
    sender: str | None = Field(
        default=None, max_length=32, description="from number or alphanumeric sender id"
    )
    priority: StrictInt = Field(default=0, ge=-1000, le=1000, description="higher is tried first")
    policy: RoutePolicy = Field(default_factory=RoutePolicy)
    api_base_url: str | None = Field(
        default=None,
        max_length=500,
        pattern=r"^https?://[^\s]+$",
        description="the provider's API at another address (regional endpoint, proxy, tests)",
    )
    price_per_segment: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1e6)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")

    @model_validator(mode="after")
    def _creds(self) -> RouteIn:
        check_credentials(self.kind, self.credentials)
        return self


class RoutePatch(Strict):
    """Absent fields are left as they are."""

    name: str = unchanged_if_absent(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    enabled: StrictBool = unchanged_if_absent()
    credentials: dict[str, StrictStr] = unchanged_if_absent(max_length=8)
    sender: str | None = Field(default=None, max_length=32)
    priority: StrictInt = unchanged_if_absent(ge=-1000, le=1000)
    policy: RoutePolicy = unchanged_if_absent()
    api_base_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://[^\s]+$")
    price_per_segment: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1e6)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")


class RouteOut(BaseModel):
    id: str
    kind: str
    name: str
    enabled: bool
    sender: str | None
    priority: int
    policy: dict[str, Any]
    api_base_url: str | None
    price_per_segment: float | None
    currency: str | None
    callback_url: str = Field(description="configure this at the provider (status callback)")
    created_at: datetime
    updated_at: datetime


class RouteList(BaseModel):
    items: list[RouteOut]


def callback_url(call: Call, route_id: str) -> str:
    # What the route worker gives the provider (and signatures are checked against).
    return route_callback_url(call.hub.settings, route_id)


def route_out(call: Call, r: Route) -> RouteOut:
    # Never the credentials: not even a hint of them.
    return RouteOut(
        id=r.id,
        kind=r.kind,
        name=r.name,
        enabled=r.enabled,
        sender=r.sender,
        priority=r.priority,
        policy=r.policy,
        api_base_url=r.api_base_url,
        price_per_segment=r.price_per_segment,
        currency=r.currency,
        callback_url=callback_url(call, r.id),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


@api.route(
    "POST",
    "/routes",
    tag="routes",
    scope=Scope.ADMIN,
    body=RouteIn,
    summary="Add a route beyond phones (a provider account)",
    responses={201: RouteOut, 409: ErrorOut, **BODY_ERRORS},
)
async def create_route(call: Call) -> Reply:
    body: RouteIn = call.body
    now = utcnow()
    r = Route(
        id=new_id(),
        kind=body.kind,
        name=body.name,
        enabled=body.enabled,
        credentials=dict(body.credentials),
        created_at=now,
        updated_at=now,
        sender=body.sender,
        priority=body.priority,
        policy=body.policy.model_dump(),
        api_base_url=body.api_base_url,
        price_per_segment=body.price_per_segment,
        currency=body.currency,
    )
    try:
        await call.hub.store.create_route(r)
    except Conflict as exc:
        raise ApiError(409, "route_name_taken", str(exc)) from None
    call.hub.routes_changed()
    return Reply(route_out(call, r), 201)


@api.route(
    "GET",
    "/routes",
    tag="routes",
    scope=Scope.ADMIN,
    summary="List routes (credentials are never shown)",
    responses={200: RouteList, 401: ErrorOut, 403: ErrorOut},
)
async def list_routes(call: Call) -> RouteList:
    return RouteList(items=[route_out(call, r) for r in await call.hub.store.list_routes()])


async def _route_or_404(call: Call) -> Route:
    r = await call.hub.store.get_route(call.path("route_id"))
    if r is None:
        raise ApiError(404, "route_not_found", f"no route {call.path('route_id')}")
    return r


@api.route(
    "GET",
    "/routes/{route_id}",
    tag="routes",
    scope=Scope.ADMIN,
    summary="One route, with the callback URL to configure at the provider",
    responses={200: RouteOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def get_route(call: Call) -> RouteOut:
    return route_out(call, await _route_or_404(call))


@api.route(
    "PATCH",
    "/routes/{route_id}",
    tag="routes",
    scope=Scope.ADMIN,
    body=RoutePatch,
    summary="Change a route (credentials replaced whole)",
    responses={200: RouteOut, 404: ErrorOut, 409: ErrorOut, **BODY_ERRORS},
)
async def patch_route(call: Call) -> RouteOut:
    body: RoutePatch = call.body
    fields = body.model_dump(exclude_unset=True)  # null where refused: 422 already
    current = await _route_or_404(call)
    if "credentials" in fields:
        check_credentials(current.kind, fields["credentials"])
    try:
        r = await call.hub.store.update_route(current.id, utcnow(), **fields)
    except Conflict as exc:
        raise ApiError(409, "route_name_taken", str(exc)) from None
    if r is None:
        raise ApiError(404, "route_not_found", f"no route {current.id}")
    call.hub.routes_changed()
    return route_out(call, r)


@api.route(
    "DELETE",
    "/routes/{route_id}",
    tag="routes",
    scope=Scope.ADMIN,
    summary="Remove a route (messages bound to it and not yet sent fail route_removed)",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def delete_route(call: Call) -> Reply:
    if not await call.hub.store.delete_route(call.path("route_id"), utcnow()):
        raise ApiError(404, "route_not_found", f"no route {call.path('route_id')}")
    call.hub.routes_changed()
    return Reply(None, 204)


@api.route(
    "POST",
    "/routes/{route_id}/callback",
    tag="routes",
    scope=None,  # no API key: the provider's signature is the credential
    summary="A provider's delivery callback (signed as the provider documents)",
    responses={204: None, 403: ErrorOut, 413: ErrorOut},
    raw_body=True,
)
async def route_callback(call: Call) -> Reply:
    """Unsigned, forged, or for an unknown route: 403 and nothing changes. A duplicate
    or one that arrives out of order changes what one in order would (the store's
    reports only move a message forward)."""
    route_id = call.path("route_id")
    data = await read_body(call.request, call.hub.settings.max_body_bytes)
    try:
        params = parse_qs(data.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        params = {}
    route = await call.hub.store.get_route(route_id)
    provider = call.hub.routes.provider(route.kind) if route is not None else None
    # The URL the hub gave the provider, not the one this request came in by (a proxy
    # may rewrite the host or scheme): the signature covers it.
    url = route_callback_url(call.hub.settings, route_id)
    signature = call.request.headers.get(SIGNATURE_HEADER)
    if (
        route is None
        or provider is None
        or not provider.verify_callback(route, url, params, signature)
    ):
        raise ApiError(403, "forbidden", "callback signature missing or invalid")
    report = provider.parse_callback(params)
    if report is not None and report.status is not None:
        changed = await call.hub.store.route_report(
            route.id,
            report.route_message_id,
            report.status,
            utcnow(),
            error_code=report.error_code,
            error=f"{route.kind} error {report.error_code}" if report.error_code else None,
            cost=report.cost,
        )
        log.debug("route %s callback %s: changed=%s", route.name, report, changed)
    return Reply(None, 204)
