"""``GET /stats``: what went through the hub over a period (seed 002's admin stats)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut, Instant, Strict
from smsgw.auth import Scope
from smsgw.clock import utcnow
from smsgw.errors import ApiError


class StatsQuery(Strict):
    since: Instant | None = Field(default=None, alias="from")
    until: Instant | None = Field(default=None, alias="to")


class OtpStats(BaseModel):
    sent: int
    verified: int
    verification_rate: float | None


class StatsOut(BaseModel):
    since: datetime = Field(serialization_alias="from")
    until: datetime = Field(serialization_alias="to")
    total: int
    by_status: dict[str, int]
    by_day: dict[str, dict[str, int]]
    by_hour: dict[str, dict[str, int]] = Field(
        description='"YYYY-MM-DDTHH" (UTC) -> status -> count'
    )
    by_device: dict[str, dict[str, int]]
    delivery_rate: float | None = Field(
        description="DELIVERED / (SENT + DELIVERED): of what left a phone, how much the "
        "carrier confirmed (phones that cannot report delivery keep it low)"
    )
    success_rate: float | None = Field(
        description="(SENT + DELIVERED) / (SENT + DELIVERED + FAILED)"
    )
    failure_reasons: dict[str, int]
    failovers: int = Field(description="offers after a message's first: another phone tried")
    by_route: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="route name -> status -> count, and cost -> total (docs/routes.md)",
    )
    inbound: int
    otp: OtpStats


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@api.route(
    "GET",
    "/stats",
    tag="stats",
    scope=Scope.READ,
    query=StatsQuery,
    summary="Messages by status, day and device; rates; failure reasons; inbound; OTP",
    responses={200: StatsOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
)
async def stats(call: Call) -> StatsOut:
    q: StatsQuery = call.body
    until = q.until or utcnow()
    # The week before ``to``, or what there is of it (to=0001-01-01T00:00:00Z was a 500).
    since = q.since or until - min(timedelta(days=7), until - datetime.min.replace(tzinfo=UTC))
    if since >= until:
        raise ApiError(422, "invalid_range", "from must be before to")
    s = await call.hub.store.stats(since, until)
    sent = s.by_status.get("SENT", 0)
    delivered = s.by_status.get("DELIVERED", 0)
    failed = s.by_status.get("FAILED", 0)
    return StatsOut(
        since=since,
        until=until,
        total=sum(s.by_status.values()),
        by_status=s.by_status,
        by_day=dict(sorted(s.by_day.items())),
        by_hour=dict(sorted(s.by_hour.items())),
        by_device=s.by_device,
        delivery_rate=_ratio(delivered, sent + delivered),
        success_rate=_ratio(sent + delivered, sent + delivered + failed),
        failure_reasons=s.failure_reasons,
        failovers=s.failovers,
        by_route=s.by_route,
        inbound=s.inbound,
        otp=OtpStats(
            sent=s.otp_sent,
            verified=s.otp_verified,
            verification_rate=_ratio(s.otp_verified, s.otp_sent),
        ),
    )
