"""Webhooks: endpoints that receive signed event POSTs, and the record of each delivery."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.models import (
    BODY_ERRORS,
    DeliveryAttemptOut,
    DeliveryOut,
    DeliveryPage,
    DeliveryQuery,
    ErrorOut,
    RotateIn,
    SecretOut,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookPatch,
)
from smsgw.api.pagination import decode_cursor, next_cursor
from smsgw.auth import Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError
from smsgw.store import Delivery, DeliveryStatus, Webhook

AUTH_ERRORS: dict[int, type[ErrorOut] | None] = {401: ErrorOut, 403: ErrorOut}


def new_webhook_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def webhook_out(h: Webhook) -> WebhookOut:
    return WebhookOut(**_fields(h))


def _fields(h: Webhook) -> dict[str, object]:
    return {
        "id": h.id,
        "url": h.url,
        "events": sorted(h.events),
        "description": h.description,
        "enabled": h.enabled,
        "failing_since": h.failing_since,
        "disabled_at": h.disabled_at,
        "disabled_reason": h.disabled_reason,
        "previous_secret_expires_at": h.previous_secret_until if h.previous_secret else None,
        "created_at": h.created_at,
        "updated_at": h.updated_at,
        "format": h.format,
    }


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        webhook_id=d.webhook_id,
        url=d.url,
        status=d.status.value,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status is DeliveryStatus.PENDING else None,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=d.created_at,
        updated_at=d.updated_at,
        payload=json.loads(d.payload),
        history=[
            DeliveryAttemptOut(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in d.history
        ],
    )


def _missing(call: Call, what: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no {what} {call.path(what + '_id')}")


async def _hook_or_404(call: Call) -> Webhook:
    hook = await call.hub.store.get_webhook(call.path("webhook_id"))
    if hook is None:
        raise _missing(call, "webhook")
    return hook


@api.route(
    "POST",
    "/webhooks",
    tag="webhooks",
    scope=Scope.ADMIN,
    body=WebhookIn,
    summary="Add an endpoint; its signing secret is shown only in this answer",
    responses={201: WebhookCreated, **BODY_ERRORS},
)
async def create_webhook(call: Call) -> Reply:
    body: WebhookIn = call.body
    now = utcnow()
    hook = Webhook(
        id=new_id(),
        url=body.url,
        events=frozenset(body.events),
        description=body.description,
        enabled=body.enabled,
        secret=new_webhook_secret(),
        created_at=now,
        updated_at=now,
    )
    await call.hub.store.create_webhook(hook)
    return Reply(WebhookCreated(**_fields(hook), secret=hook.secret), 201)


@api.route(
    "GET",
    "/webhooks",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="List endpoints (secrets are never shown again)",
    responses={200: WebhookList, **AUTH_ERRORS},
)
async def list_webhooks(call: Call) -> WebhookList:
    return WebhookList(items=[webhook_out(h) for h in await call.hub.store.list_webhooks()])


@api.route(
    "GET",
    "/webhooks/callback-secret",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="The secret that signs requests to per-message callback_url",
    responses={200: SecretOut, **AUTH_ERRORS},
)
async def callback_secret(call: Call) -> SecretOut:
    return SecretOut(secret=call.hub.callback_secret)


@api.route(
    "GET",
    "/webhooks/{webhook_id}",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="One endpoint, with its failure state",
    responses={200: WebhookOut, 404: ErrorOut, **AUTH_ERRORS},
)
async def get_webhook(call: Call) -> WebhookOut:
    return webhook_out(await _hook_or_404(call))


@api.route(
    "PATCH",
    "/webhooks/{webhook_id}",
    tag="webhooks",
    scope=Scope.ADMIN,
    body=WebhookPatch,
    summary="Change an endpoint; enabling it again sends what waited at once",
    responses={200: WebhookOut, 404: ErrorOut, **BODY_ERRORS},
)
async def patch_webhook(call: Call) -> WebhookOut:
    body: WebhookPatch = call.body
    fields = body.model_dump(exclude_unset=True)  # null for url, events or enabled: 422 already
    if "events" in fields:
        fields["events"] = frozenset(fields["events"])
    hook = await call.hub.store.update_webhook(call.path("webhook_id"), utcnow(), **fields)
    if hook is None:
        raise _missing(call, "webhook")
    if call.hub.webhooks is not None:
        call.hub.webhooks.wake()
    return webhook_out(hook)


@api.route(
    "DELETE",
    "/webhooks/{webhook_id}",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="Remove an endpoint and its delivery record",
    responses={204: None, 404: ErrorOut, **AUTH_ERRORS},
)
async def delete_webhook(call: Call) -> Reply:
    if not await call.hub.store.delete_webhook(call.path("webhook_id")):
        raise _missing(call, "webhook")
    return Reply(None, 204)


@api.route(
    "POST",
    "/webhooks/{webhook_id}/rotate-secret",
    tag="webhooks",
    scope=Scope.ADMIN,
    body=RotateIn,
    summary="New signing secret; the old one also signs during the grace period",
    responses={200: SecretOut, 404: ErrorOut, **BODY_ERRORS},
)
async def rotate_secret(call: Call) -> SecretOut:
    body: RotateIn = call.body
    now = utcnow()
    grace = call.hub.settings.webhook_secret_grace
    if body.grace_seconds is not None:
        grace = body.grace_seconds
    until = now + timedelta(seconds=grace)
    hook = await call.hub.store.rotate_webhook_secret(
        call.path("webhook_id"), new_webhook_secret(), until, now
    )
    if hook is None:
        raise _missing(call, "webhook")
    return SecretOut(secret=hook.secret, previous_secret_expires_at=until)


@api.route(
    "GET",
    "/webhooks/{webhook_id}/deliveries",
    tag="webhooks",
    scope=Scope.ADMIN,
    query=DeliveryQuery,
    summary="Deliveries to this endpoint, newest first, with every attempt",
    responses={200: DeliveryPage, 404: ErrorOut, **BODY_ERRORS},
)
async def list_deliveries(call: Call) -> DeliveryPage:
    q: DeliveryQuery = call.body
    hook = await _hook_or_404(call)
    rows = await call.hub.store.list_deliveries(
        hook.id,
        status=DeliveryStatus(q.status) if q.status else None,
        after=decode_cursor(q.cursor),
        limit=q.limit,
    )
    return DeliveryPage(
        items=[delivery_out(d) for d in rows],
        next_cursor=next_cursor([(d.created_at, d.id) for d in rows], q.limit),
    )


@api.route(
    "GET",
    "/webhooks/deliveries/{delivery_id}",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="One delivery (webhook or callback_url), with every attempt",
    responses={200: DeliveryOut, 404: ErrorOut, **AUTH_ERRORS},
)
async def get_delivery(call: Call) -> DeliveryOut:
    d = await call.hub.store.get_delivery(call.path("delivery_id"))
    if d is None:
        raise _missing(call, "delivery")
    return delivery_out(d)


@api.route(
    "POST",
    "/webhooks/deliveries/{delivery_id}/replay",
    tag="webhooks",
    scope=Scope.ADMIN,
    summary="Send a delivery once more, now (same event id)",
    responses={202: DeliveryOut, 404: ErrorOut, **AUTH_ERRORS},
)
async def replay_delivery(call: Call) -> Reply:
    d = await call.hub.store.replay_delivery(call.path("delivery_id"), utcnow())
    if d is None:
        raise _missing(call, "delivery")
    if call.hub.webhooks is not None:
        call.hub.webhooks.wake()
    return Reply(delivery_out(d), 202)
