"""Liveness (the process answers) and readiness (the database answers)."""

from __future__ import annotations

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut, HealthOut
from smsgw.errors import ApiError


@api.route(
    "GET",
    "/health",
    tag="health",
    scope=None,
    security=None,
    summary="Liveness",
    responses={200: HealthOut},
)
async def health(call: Call) -> HealthOut:
    return HealthOut(status="ok")


@api.route(
    "GET",
    "/ready",
    tag="health",
    scope=None,
    security=None,
    summary="Readiness: the database answers",
    responses={200: HealthOut, 503: ErrorOut},
)
async def ready(call: Call) -> HealthOut:
    if call.hub.draining:  # load balancers stop sending new work here
        raise ApiError(503, "not_ready", "this hub node is draining")
    try:
        await call.hub.store.ping()
    except Exception as exc:
        raise ApiError(503, "not_ready", f"database does not answer: {exc}") from None
    return HealthOut(status="ready")
