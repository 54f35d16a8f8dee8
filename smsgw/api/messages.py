"""Outbound and inbound SMS: dispatch with failover, send through one phone, read back."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from android_client.segments import Segmentation, analyse
from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.models import (
    BODY_ERRORS,
    DispatchIn,
    DispatchOut,
    DispatchPending,
    ErrorOut,
    InboundOut,
    InboundPage,
    InboundQuery,
    MessageOut,
    MessagePage,
    MessageQuery,
    PreviewIn,
    PreviewOut,
    SendIn,
)
from smsgw.api.pagination import decode_cursor, next_cursor
from smsgw.auth import Principal, Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError, over_limit
from smsgw.hub import Hub
from smsgw.numbers import InvalidNumber, parse_recipient
from smsgw.store import InboundFilter, Message, MessageFilter, Status
from smsgw.templating import MissingVariables, render

log = logging.getLogger("smsgw.api")

# A send_at this far in the past is taken as "now" (clock skew), beyond it refused.
SEND_AT_SKEW = 60.0
MAX_SCHEDULE_DAYS = 366


def recipient_e164(hub: Hub, raw: str) -> str:
    """Validate a recipient with phonenumbers; 422 with a clear code when it cannot
    receive SMS."""
    try:
        return parse_recipient(raw, hub.settings.default_region).e164
    except InvalidNumber as exc:
        raise ApiError(422, exc.code, exc.message) from None


async def sendable(hub: Hub, raw_to: str, principal: Principal | None) -> str:
    """The recipient in E.164, after the checks every new message passes: a number that
    can receive SMS, not opted out, and within the message rate limits."""
    to = recipient_e164(hub, raw_to)
    if to in hub.opted_out:
        raise ApiError(422, "opted_out", f"{to} has opted out of messages (replied STOP)")
    limit = hub.settings.recipient_hourly_limit
    wait = hub.limits.recipient_messages.acquire(to, limit)
    if wait is not None:
        message = f"more than {limit} messages per hour to {to}"
        raise over_limit("recipient_rate_limited", message, wait, f"{limit}/hour")
    if principal is not None:
        daily = principal.daily_message_limit or hub.settings.key_daily_messages
        wait = hub.limits.key_messages.acquire(principal.key_id or principal.name, daily)
        if wait is not None:
            message = f"more than {daily} messages per day for this key"
            raise over_limit("daily_limit_reached", message, wait, f"{daily}/day")
    return to


def segmented(hub: Hub, text: str, smart: bool) -> Segmentation:
    if len(text) > hub.settings.max_message_chars:
        raise ApiError(
            422, "message_too_long", f"message is over {hub.settings.max_message_chars} characters"
        )
    seg = analyse(text, smart_encoding=smart)
    if seg.segments > hub.settings.max_segments:
        raise ApiError(
            422,
            "too_many_segments",
            f"message needs {seg.segments} segments ({seg.encoding}); "
            f"the limit is {hub.settings.max_segments}",
        )
    return seg


async def _text(hub: Hub, body: DispatchIn) -> tuple[str, str | None]:
    if body.template_id is None:
        assert body.message is not None
        return body.message, None
    template = await hub.store.get_template(body.template_id)
    if template is None:
        raise ApiError(422, "template_not_found", f"no template {body.template_id}")
    if not template.active:
        raise ApiError(422, "template_inactive", f"template {template.name!r} is not active")
    try:
        return render(template.body, body.variables or {}), template.id
    except MissingVariables as exc:
        raise ApiError(
            422,
            "missing_variable",
            str(exc),
            [{"field": f"variables.{n}", "message": "missing"} for n in exc.names],
        ) from None


def schedule(
    hub: Hub,
    now: datetime,
    send_at: datetime | None,
    expires_at: datetime | None,
    ttl: float | None,
) -> tuple[datetime | None, datetime]:
    """When a new message may go out (None: now) and when it expires; ApiError when the
    times make no sense (in the past, too far ahead, expiring before it starts)."""
    horizon = now + timedelta(days=MAX_SCHEDULE_DAYS)
    for name, when in (("send_at", send_at), ("expires_at", expires_at)):
        if when is not None and when > horizon:
            raise ApiError(
                422, "too_far_ahead", f"{name} is more than {MAX_SCHEDULE_DAYS} days ahead"
            )
    if ttl is not None and ttl > MAX_SCHEDULE_DAYS * 86400:  # SMSGate's ttl has no maximum
        raise ApiError(422, "too_far_ahead", f"ttl is more than {MAX_SCHEDULE_DAYS} days")
    if send_at is not None:
        if send_at < now - timedelta(seconds=SEND_AT_SKEW):
            raise ApiError(422, "send_at_in_past", "send_at is in the past")
        if send_at <= now:
            send_at = None  # "now", give or take a clock's skew
    starts = send_at or now
    expires_at = expires_at or starts + timedelta(seconds=ttl or hub.settings.message_ttl)
    if expires_at <= starts:
        raise ApiError(422, "expires_before_send", "expires_at must be after send_at and now")
    return send_at, expires_at


async def prepare(
    hub: Hub,
    principal: Principal | None,
    body: DispatchIn,
    *,
    pinned: str | None = None,
    sim_slot: int | None = None,
    batch_id: str | None = None,
) -> Message:
    """A new message from a request, with every check a message must pass (ApiError
    otherwise). Nothing is stored here."""
    route_id = await _forced_route(hub, body, pinned)
    text, template_id = await _text(hub, body)
    seg = segmented(hub, text, body.smart_encoding)
    now = utcnow()
    send_at, expires_at = schedule(hub, now, body.send_at, body.expires_at, body.ttl)
    to = await sendable(hub, body.to, principal)  # last: it counts against the limits
    return Message(
        id=new_id(),
        recipient=to,
        body=seg.text,
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
        pinned_device_id=pinned,
        sim_slot=sim_slot,
        parts=seg.segments,
        encoding=seg.encoding,
        template_id=template_id,
        priority=body.priority,
        send_at=send_at,
        next_attempt_at=send_at,  # the outbox does not see it before then
        custom_id=body.custom_id,
        metadata=body.metadata,
        batch_id=batch_id,
        callback_url=body.callback_url,
        sms_type=body.sms_type,
        route_id=route_id,
        route_forced=route_id is not None,
    )


async def _forced_route(hub: Hub, body: DispatchIn, pinned: str | None) -> str | None:
    """The route the caller forced (``"route": "<name>"``), checked: docs/routes.md."""
    if body.route is None:
        return None
    if pinned is not None:
        raise ApiError(422, "route_and_device", "give a route or a device, not both")
    route = await hub.store.get_route_by_name(body.route)
    if route is None:
        raise ApiError(422, "unknown_route", f"no route named {body.route!r}")
    if not route.enabled:
        raise ApiError(409, "route_disabled", f"route {body.route!r} is disabled")
    return route.id


async def _create(call: Call, body: DispatchIn, pinned: str | None, sim_slot: int | None) -> Reply:
    hub = call.hub
    msg = await prepare(hub, call.principal, body, pinned=pinned, sim_slot=sim_slot)
    # Stored before we answer and before any phone owns it (with the first phone's
    # accept, or as the offer that ended: dispatcher._Unstored): once answered, it cannot
    # be lost.
    waits = body.wait and msg.send_at is None
    deadline = min(body.timeout or hub.settings.dispatch_deadline, 60.0) if waits else None
    if msg.route_id is not None:
        # Bound to a route: stored for the route worker, never offered to a phone.
        await hub.store.create_message(msg)
        hub.routes_changed()
        result = msg
    else:
        result = await hub.dispatcher.submit(msg, deadline)
    if msg.template_id is not None:
        try:
            await hub.store.count_template_use(msg.template_id)
        except Exception:  # a statistic: never turn a stored message into an error
            log.exception("counting the use of template %s failed", msg.template_id)
    if result.status in (Status.SENT, Status.DELIVERED, Status.FAILED):
        out = DispatchOut(
            message_id=result.id,
            status=result.status,
            device_id=result.device_id,
            attempts=result.attempt,
            error=result.error,
            encoding=msg.encoding,
            segments=msg.parts,
        )
        return Reply(out, 200)
    pending = DispatchPending(
        message_id=result.id, status=result.status, encoding=msg.encoding, segments=msg.parts
    )
    return Reply(pending, 202)


@api.route(
    "POST",
    "/sms/dispatch",
    tag="sms",
    scope=Scope.SEND,
    body=DispatchIn,
    summary="Send through the best phone, failing over; waits for SENT/FAILED",
    responses={200: DispatchOut, 202: DispatchPending, 409: ErrorOut, 429: ErrorOut, **BODY_ERRORS},
    idempotent=True,
)
async def dispatch(call: Call) -> Reply:
    body: DispatchIn = call.body
    return await _create(call, body, None, None)


@api.route(
    "POST",
    "/sms/send",
    tag="sms",
    scope=Scope.SEND,
    body=SendIn,
    summary="Send through one named phone (no failover)",
    responses={
        200: DispatchOut,
        202: DispatchPending,
        404: ErrorOut,
        409: ErrorOut,
        429: ErrorOut,
        **BODY_ERRORS,
    },
    idempotent=True,
)
async def send(call: Call) -> Reply:
    body: SendIn = call.body
    device = await call.hub.store.get_device(body.device_id)
    if device is None:
        raise ApiError(404, "device_not_found", f"no device {body.device_id}")
    if not device.enabled:
        raise ApiError(409, "device_disabled", f"device {body.device_id} is disabled")
    return await _create(call, body, device.id, body.sim_slot)


@api.route(
    "GET",
    "/sms/inbound",
    tag="sms",
    scope=Scope.READ,
    query=InboundQuery,
    summary="Received SMS, newest first",
    responses={200: InboundPage, **BODY_ERRORS},
)
async def list_inbound(call: Call) -> InboundPage:
    q: InboundQuery = call.body
    rows = await call.hub.store.list_inbound(
        InboundFilter(
            sender=q.sender,
            device_id=q.device_id,
            since=q.since,
            after=decode_cursor(q.cursor),
            limit=q.limit,
        )
    )
    return InboundPage(
        items=[InboundOut.of(r) for r in rows],
        next_cursor=next_cursor([(r.created_at, r.id) for r in rows], q.limit),
    )


@api.route(
    "GET",
    "/sms/{message_id}",
    tag="sms",
    scope=Scope.READ,
    summary="One message, with its delivery attempts",
    responses={200: MessageOut, 404: ErrorOut, 401: ErrorOut, 403: ErrorOut},
)
async def get_message(call: Call) -> MessageOut:
    msg = await call.hub.store.get_message(call.path("message_id"), with_attempts=True)
    if msg is None:
        raise ApiError(404, "message_not_found", f"no message {call.path('message_id')}")
    out = MessageOut.of(msg, attempts=True)
    if msg.route_id is not None:
        route = await call.hub.store.get_route(msg.route_id)
        out.route = route.name if route is not None else None
    return out


@api.route(
    "GET",
    "/sms/",
    tag="sms",
    scope=Scope.READ,
    query=MessageQuery,
    summary="Messages, newest first, with cursor pagination",
    responses={200: MessagePage, **BODY_ERRORS},
)
async def list_messages(call: Call) -> MessagePage:
    q: MessageQuery = call.body
    rows = await call.hub.store.list_messages(
        MessageFilter(
            status=q.status,
            custom_id=q.custom_id,
            recipient=recipient_e164(call.hub, q.recipient) if q.recipient else None,
            device_id=q.device_id,
            since=q.since,
            after=decode_cursor(q.cursor),
            limit=q.limit,
        )
    )
    return MessagePage(
        items=[MessageOut.of(m) for m in rows],
        next_cursor=next_cursor([(m.created_at, m.id) for m in rows], q.limit),
    )


@api.route(
    "DELETE",
    "/sms/{message_id}",
    tag="sms",
    scope=Scope.SEND,
    summary="Cancel a message no phone has accepted yet",
    responses={200: MessageOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
)
async def cancel_message(call: Call) -> MessageOut:
    message_id = call.path("message_id")
    msg = await call.hub.cancel_message(message_id)
    if msg is None:
        raise ApiError(404, "message_not_found", f"no message {message_id}")
    if msg.status is not Status.CANCELLED:
        raise ApiError(
            409,
            "not_cancellable",
            f"message is {msg.status.value}: only a message no phone has accepted can be cancelled",
        )
    return MessageOut.of(msg)


@api.route(
    "POST",
    "/sms/preview",
    tag="sms",
    scope=Scope.SEND,
    body=PreviewIn,
    summary="Encoding and segments of a text, without sending",
    responses={200: PreviewOut, **BODY_ERRORS},
)
async def preview(call: Call) -> PreviewOut:
    body: PreviewIn = call.body
    seg = segmented(call.hub, body.message, body.smart_encoding)
    return PreviewOut(
        encoding=seg.encoding,
        segments=seg.segments,
        characters=seg.characters,
        units=seg.units,
        per_segment=seg.per_segment,
        remaining=seg.remaining,
        text=seg.text,
        replaced=list(seg.replaced),
        parts=list(seg.parts),
    )
