"""SMSGate's 3rd-party API, ``/api/3rdparty/v1``: smsgw behind SMSGate's clients.

Thin: SMSGate's requests (``smsgw/thirdparty.py``) mapped onto what smsgw's own API
does, through the same code (``prepare``'s checks, the store's batches, the hub's
cancel and device removal, the event outbox). A message to several recipients is one
smsgw message per recipient, grouped as a batch under the message's id, each routed and
failed over on its own. Errors carry SMSGate's body (``{"message"}``): the mapping is in
``smsgw/errors.py``, by path. docs/smsgate-api.md lists what is served and what is not.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field, RootModel, ValidationError
from starlette.responses import JSONResponse, Response

from smsgw import __version__
from smsgw.api import api
from smsgw.api.framework import Call, Handler, count_request, decode_json, read_body
from smsgw.api.messages import schedule, segmented, sendable
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError, validation_details
from smsgw.hub import Hub
from smsgw.routing import APP
from smsgw.store import Batch, InboundFilter, Message, Status, Webhook
from smsgw.store.smsgate import SMSGATE, GroupFilter
from smsgw.store.sql import UniqueViolation
from smsgw.thirdparty import (
    EVENT_SOURCES,
    PREFIX,
    SETTINGS,
    MessageIn,
    MessagesQuery,
    WebhookIn,
    check_settings,
    default_settings,
    device_out,
    group_state_of,
    health,
    inbox_out,
    merge_settings,
    message_state,
    webhook_out,
)
from smsgw.thirdparty_auth import Caller

AUTH = "SMSGate: Basic <any>:<API key>, Bearer <API key> or Bearer <access token>"
TAG = "smsgate"


class Json(RootModel[Any]):
    """A body in SMSGate's shape (smsgate-wire.md §6)."""


class SmsgateError(BaseModel):
    message: str
    code: str | None = None


ERRORS: dict[int, type[BaseModel] | None] = {
    400: SmsgateError,
    401: SmsgateError,
    403: SmsgateError,
    404: SmsgateError,
}
# What an operation that serves nothing still answers: the caller is checked first.
REFUSALS: dict[int, type[BaseModel] | None] = {401: SmsgateError, 403: SmsgateError}


class TokenIn(BaseModel):
    scopes: list[str] = Field(min_length=1, max_length=32)
    ttl: int | None = None


def route(method: str, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
    return api.route(
        method,
        PREFIX + path,
        tag=TAG,
        scope=None,
        security=kw.pop("security", AUTH),
        summary=summary,
        responses=kw.pop("responses", {200: Json, **ERRORS}),
        raw_body=True,
        **kw,
    )


async def caller(call: Call, scope: str) -> Caller:
    """Who calls, refused unless they hold ``scope``; the call counts against their key."""
    who = await call.hub.thirdparty.identify(call.request)
    who.require(scope)
    count_request(call.hub, who.principal)
    return who


async def body_of(call: Call) -> Any:
    return decode_json(await read_body(call.request, call.hub.settings.max_body_bytes))


def parse(model: type[Any], data: Any) -> Any:
    """``data`` as ``model``; 400 with the first problem (SMSGate answers validation
    errors with 400, not 422)."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "a JSON object is expected")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = validation_details(exc)[0]
        field = first["field"]
        text = first["message"].removeprefix("Value error, ")
        message = text if field == "body" else f"{field}: {text}"
        raise ApiError(400, "invalid_request", message) from None


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(data, status, headers=headers)


# -- messages ---------------------------------------------------------------------------------


def _flag(call: Call, name: str) -> bool:
    value = call.request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_request", f"{name}: true or false")
    return value in ("true", "1")


async def _recipient(hub: Hub, call: Call, who: Caller, raw: str, body: MessageIn) -> str:
    if body.is_encrypted:
        # The number is encrypted too: the hub cannot read it, so it checks nothing.
        return raw
    if _flag(call, "skipPhoneValidation"):
        kept = "".join(c for c in raw if c in "0123456789+*#")
        if not kept:
            raise ApiError(400, "invalid_number", f"{raw!r} has no digits")
        if kept in hub.opted_out:
            raise ApiError(400, "opted_out", f"{kept} has opted out of messages (replied STOP)")
        return kept
    return await sendable(hub, raw, who.principal)


async def _device_for(hub: Hub, body: MessageIn, app_only: bool) -> None:
    """400 when the message asks for a phone it cannot have (SMSGate's "device selection
    problems"): an unknown one, or one that cannot send this content."""
    if body.device_id is not None:
        device = await hub.store.get_device(body.device_id)
        if device is None:
            raise ApiError(400, "device_not_found", f"no device {body.device_id}")
        if app_only and device.kind != APP:
            raise ApiError(
                400,
                "device_cannot_send",
                f"device {body.device_id} runs smsgw-agent: only phones running the SMS "
                "Gateway app send data and encrypted messages",
            )
    elif app_only and not any(d.kind == APP and d.enabled for d in await hub.store.list_devices()):
        raise ApiError(
            400,
            "no_capable_device",
            "no phone can send this message: data and encrypted messages need a phone "
            "running the SMS Gateway app",
        )


async def _messages(call: Call, who: Caller, body: MessageIn, group_id: str) -> list[Message]:
    hub = call.hub
    app_only = body.data_message is not None or body.is_encrypted
    await _device_for(hub, body, app_only)
    if len(set(body.phone_numbers)) != len(body.phone_numbers):
        raise ApiError(400, "invalid_request", "phoneNumbers must be unique")
    now = utcnow()
    # The ttl as it came: float() of a 400-digit number was a 500.
    send_at, expires_at = schedule(hub, now, body.schedule_at, body.valid_until, body.ttl)
    text = body.text
    if body.data_message is not None:
        content, parts, encoding = body.data_message.data, 1, "binary"
    elif body.is_encrypted:
        assert text is not None
        content, parts, encoding = text, 1, None  # unreadable: its length says nothing
    else:
        assert text is not None
        seg = segmented(hub, text, False)
        content, parts, encoding = seg.text, seg.segments, seg.encoding
    numbers: list[str] = []
    for raw in body.phone_numbers:
        numbers.append(await _recipient(hub, call, who, raw, body))
    if len(set(numbers)) != len(numbers):
        raise ApiError(400, "invalid_request", "phoneNumbers must be unique after normalization")
    return [
        Message(
            id=new_id(),
            recipient=to,
            body=content,
            status=Status.PENDING,
            # A microsecond apart: the recipients' order is the request's.
            created_at=now + timedelta(microseconds=i),
            updated_at=now,
            expires_at=expires_at,
            pinned_device_id=body.device_id,
            sim_slot=body.sim_number - 1 if body.sim_number is not None else None,
            parts=parts,
            encoding=encoding,
            priority=max(-100, min(100, body.priority)),  # smsgw's range; 100 is expedited
            send_at=send_at,
            next_attempt_at=send_at,
            custom_id=group_id,
            batch_id=group_id,
            data_port=body.data_message.port if body.data_message is not None else None,
            encrypted=body.is_encrypted,
            delivery_report=body.with_delivery_report,
        )
        for i, to in enumerate(numbers)
    ]


async def send(call: Call) -> Response:
    who = await caller(call, "messages:send")
    body: MessageIn = parse(MessageIn, await body_of(call))
    hub = call.hub
    group_id = body.id or new_id()
    if await hub.store.get_group(group_id) is not None:
        raise ApiError(409, "duplicate_id", f"a message with id {group_id} exists")
    messages = await _messages(call, who, body, group_id)
    batch = Batch(
        id=group_id,
        name=None,
        total=len(messages),
        rejected=0,
        created_at=messages[0].created_at,
        kind=SMSGATE,
        device_id=body.device_id,
    )
    try:
        await hub.store.create_batch(batch, messages)
    except UniqueViolation:  # the same id from a racing request
        raise ApiError(409, "duplicate_id", f"a message with id {group_id} exists") from None
    hub.dispatcher.wake(due=True)
    location = f"{str(call.request.base_url).rstrip('/')}{PREFIX}/messages/{group_id}"
    return json(group_state_of(batch, messages), 202, {"Location": location})


for _path in ("/messages", "/message"):
    route(
        "POST",
        _path,
        "Send a message to 1-100 recipients (one smsgw message each)",
        body=MessageIn,
        responses={202: Json, 409: SmsgateError, **ERRORS},
    )(send)


async def _state(hub: Hub, message_id: str, content: bool = True) -> dict[str, Any] | None:
    """A message by SMSGate's id: a group (any batch), or a single smsgw message."""
    group = await hub.store.get_group(message_id)
    if group is not None:
        batch, messages = group
        if messages:
            return group_state_of(batch, messages, content)
    msg = await hub.store.get_message(message_id)
    if msg is None:
        return None
    return message_state(msg.id, [msg], content=content)


@route("GET", "/messages/{message_id}", "A message's state, with each recipient's")
async def get_message(call: Call) -> Response:
    await caller(call, "messages:read")
    state = await _state(call.hub, call.path("message_id"))
    if state is None:
        raise ApiError(404, "message_not_found", f"no message {call.path('message_id')}")
    return json(state)


@route("GET", "/messages", "The messages sent through this API, with X-Total-Count")
async def list_messages(call: Call) -> Response:
    await caller(call, "messages:list")
    q: MessagesQuery = parse(MessagesQuery, dict(call.request.query_params))
    groups, total = await call.hub.store.list_groups(
        GroupFilter(
            since=q.since,
            until=q.until,
            state=q.state,
            device_id=q.device_id,
            newest_first=q.sort == "-created_at",
            limit=q.limit,
            offset=q.offset,
        )
    )
    out = [group_state_of(b, ms, q.include_content) for b, ms in groups]
    return json(out, headers={"X-Total-Count": str(total)})


@route(
    "DELETE",
    "/messages/{message_id}",
    "Cancel what no phone owns yet",
    responses={200: Json, 409: SmsgateError, **ERRORS},
)
async def cancel_message(call: Call) -> Response:
    await caller(call, "messages:cancel")
    hub, message_id = call.hub, call.path("message_id")
    before = await _state(hub, message_id, content=False)
    if before is None:
        raise ApiError(404, "message_not_found", f"no message {message_id}")
    if before["state"] != "Pending":
        raise ApiError(409, "not_pending", f"message is {before['state']}: not Pending")
    group = await hub.store.get_group(message_id)
    for one in [m.id for m in group[1]] if group is not None else [message_id]:
        await hub.cancel_message(one)  # a recipient a phone took meanwhile stays its own
    after = await _state(hub, message_id)
    assert after is not None
    return json(after)


# -- devices ----------------------------------------------------------------------------------


async def list_devices(call: Call) -> Response:
    await caller(call, "devices:list")
    return json([device_out(d) for d in await call.hub.store.list_devices()])


for _path in ("/devices", "/device"):
    route("GET", _path, "The phones")(list_devices)


@route(
    "DELETE",
    "/devices/{device_id}",
    "Remove a phone (as DELETE /devices/{id} of smsgw's API)",
    responses={204: None, **ERRORS},
)
async def delete_device(call: Call) -> Response:
    await caller(call, "devices:delete")
    if not await call.hub.revoke_device(call.path("device_id")):
        raise ApiError(404, "device_not_found", f"no device {call.path('device_id')}")
    return Response(status_code=204)


# -- settings ---------------------------------------------------------------------------------


async def current_settings(hub: Hub) -> dict[str, Any]:
    """The API's settings; on first use with a signing key generated for the webhooks."""
    return await hub.store.hub_setting(SETTINGS, default_settings(), utcnow())


async def _save_settings(hub: Hub, doc: dict[str, Any]) -> dict[str, Any]:
    if not doc.get("webhooks", {}).get("signing_key"):
        # Never unsigned: a replaced document without a key keeps the one in use.
        key = (await current_settings(hub))["webhooks"]["signing_key"]
        doc = merge_settings(doc, {"webhooks": {"signing_key": key}})
    await hub.store.put_hub_setting(SETTINGS, doc, utcnow())
    return doc


def _settings_body(data: Any) -> dict[str, dict[str, Any]]:
    try:
        return check_settings(data)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


@route("GET", "/settings", "The settings (webhooks.signing_key signs this API's webhooks)")
async def get_settings(call: Call) -> Response:
    await caller(call, "settings:read")
    return json(await current_settings(call.hub))


@route("PATCH", "/settings", "Change some settings", body=Json)
async def patch_settings(call: Call) -> Response:
    await caller(call, "settings:write")
    patch = _settings_body(await body_of(call))
    return json(
        await _save_settings(call.hub, merge_settings(await current_settings(call.hub), patch))
    )


@route("PUT", "/settings", "Replace the settings", body=Json)
async def put_settings(call: Call) -> Response:
    await caller(call, "settings:write")
    return json(await _save_settings(call.hub, _settings_body(await body_of(call))))


# -- webhooks ---------------------------------------------------------------------------------


@route("GET", "/webhooks", "Webhooks in SMSGate's shape")
async def list_webhooks(call: Call) -> Response:
    await caller(call, "webhooks:list")
    hooks = await call.hub.store.list_webhooks()
    return json([webhook_out(h) for h in hooks if h.format == SMSGATE])


@route(
    "POST",
    "/webhooks",
    "Create a webhook, or replace the one with this id",
    body=WebhookIn,
    responses={201: Json, 409: SmsgateError, **ERRORS},
)
async def put_webhook(call: Call) -> Response:
    await caller(call, "webhooks:write")
    body: WebhookIn = parse(WebhookIn, await body_of(call))
    hub = call.hub
    if body.device_id is not None and await hub.store.get_device(body.device_id) is None:
        raise ApiError(400, "device_not_found", f"no device {body.device_id}")
    source = EVENT_SOURCES[body.event]
    now = utcnow()
    hook = Webhook(
        id=body.id or new_id(),
        url=body.url,
        events=frozenset({source.value} if source is not None else ()),
        description=f"SMSGate API: {body.event}",
        enabled=True,
        secret=secrets.token_hex(32),  # unused: these are signed with the signing key
        created_at=now,
        updated_at=now,
        format=SMSGATE,
        event_name=body.event,
        device_id=body.device_id,
    )
    stored = await hub.store.put_smsgate_webhook(hook)
    if stored is None:
        raise ApiError(
            409, "webhook_conflict", f"{hook.id} is a webhook of smsgw's own API (/webhooks)"
        )
    return json(webhook_out(stored), 201)


@route("DELETE", "/webhooks/{webhook_id}", "Delete a webhook", responses={204: None, **ERRORS})
async def delete_webhook(call: Call) -> Response:
    await caller(call, "webhooks:delete")
    hook = await call.hub.store.get_webhook(call.path("webhook_id"))
    if hook is None or hook.format != SMSGATE:
        raise ApiError(404, "webhook_not_found", f"no webhook {call.path('webhook_id')}")
    await call.hub.store.delete_webhook(hook.id)
    return Response(status_code=204)


# -- inbox ------------------------------------------------------------------------------------

MAX_INBOX_OFFSET = 10_000


@route("GET", "/inbox", "Received SMS, newest first (limit, offset, deviceId, from, to)")
async def list_inbox(call: Call) -> Response:
    await caller(call, "inbox:list")
    q: MessagesQuery = parse(MessagesQuery, dict(call.request.query_params))
    kind = call.request.query_params.get("type")
    if kind not in (None, "SMS"):
        return json([], headers={"X-Total-Count": "0"})  # smsgw keeps text SMS only
    if q.offset > MAX_INBOX_OFFSET:
        raise ApiError(400, "invalid_request", f"offset: at most {MAX_INBOX_OFFSET}")
    found = await call.hub.store.list_inbound(
        InboundFilter(device_id=q.device_id, since=q.since, limit=q.offset + q.limit)
    )
    if q.until is not None:
        found = [i for i in found if i.received_at < q.until]
    return json([inbox_out(i) for i in found[q.offset :]])


async def refresh_inbox(call: Call) -> Response:
    await caller(call, "inbox:refresh")
    data = await body_of(call)
    if not isinstance(data, dict) or not data.get("since") or not data.get("until"):
        raise ApiError(400, "invalid_request", "since and until are required")
    device_id = data.get("deviceId")
    request = {
        "since": str(data["since"]),
        "until": str(data["until"]),
        "messageTypes": "SMS",
        "webhookDelivery": "Individual",
        "triggerWebhooks": "true",
    }
    hub = call.hub
    hub.apps.request_export(device_id, request)
    await hub.registry.tell_nodes(
        {"what": "inbox_export", "device_id": device_id, "request": request}
    )
    headers = {"Deprecation": "true"} if "export" in call.request.url.path else None
    return json({}, 202, headers)


for _path in ("/inbox/refresh", "/inbox/export", "/messages/inbox/export"):
    route(
        "POST",
        _path,
        "Ask app phones to post again the SMS they received in a time range",
        body=Json,  # {since, until, deviceId?}: read by the handler, listed for its 400/413
        responses={202: Json, **ERRORS},
    )(refresh_inbox)


@route(
    "GET",
    "/logs",
    "Not served: a phone's logs stay on the phone",
    responses={501: SmsgateError, **REFUSALS},
)
async def logs(call: Call) -> Response:
    await caller(call, "logs:read")
    raise ApiError(501, "not_implemented", "device logs are not accessible through smsgw")


@route("GET", "/inbox/{message_id}/attachments/{part_id}",
       "Not served: smsgw receives no MMS", responses={501: SmsgateError, **REFUSALS})  # fmt: skip
async def inbox_attachment(call: Call) -> Response:
    await caller(call, "inbox:list")
    raise ApiError(501, "not_implemented", "MMS attachments: smsgw receives no MMS")


# -- tokens -----------------------------------------------------------------------------------


@route("POST", "/auth/token", "An access token (JWT) for some scopes", body=TokenIn,
       responses={201: Json, **ERRORS})  # fmt: skip
async def issue_token(call: Call) -> Response:
    who = await call.hub.thirdparty.identify(call.request)
    count_request(call.hub, who.principal)
    body: TokenIn = parse(TokenIn, await body_of(call))
    if who.token_id is not None:
        who.require("tokens:manage")  # a token asks for another only with this scope
    return json(await call.hub.thirdparty.issue(who, body.scopes, body.ttl), 201)


@route("POST", "/auth/token/refresh", "A new pair for a refresh token (which it ends)",
       security="Bearer <refresh token>", responses={201: Json, **ERRORS})  # fmt: skip
async def refresh_token(call: Call) -> Response:
    return json(await call.hub.thirdparty.refresh(call.request), 201)


@route("DELETE", "/auth/token/{jti}", "Revoke an access token (and its refresh token)",
       responses={204: None, **ERRORS})  # fmt: skip
async def revoke_token(call: Call) -> Response:
    await caller(call, "tokens:manage")
    await call.hub.thirdparty.revoke(call.path("jti"))
    return Response(status_code=204)


# -- health -----------------------------------------------------------------------------------


async def _health(call: Call, *, ready: bool) -> Response:
    hub = call.hub
    checks: dict[str, tuple[str, str, float | int | None]] = {}
    if ready:
        try:
            await hub.store.ping()
            checks["db:status"] = ("pass", "the database answers", 1)
        except Exception:
            checks["db:status"] = ("fail", "the database does not answer", 0)
        if hub.draining:
            checks["node:draining"] = ("fail", "this hub node is shutting down", 1)
        online = len(hub.registry.all())
        checks["devices:online"] = (
            "pass" if online else "warn",
            "phones connected to the hub",
            online,
        )
    body = health(__version__, checks)
    return json(body, 503 if body["status"] == "fail" else 200)


async def health_ready(call: Call) -> Response:
    return await _health(call, ready=True)


async def health_live(call: Call) -> Response:
    return await _health(call, ready=False)


for _path, _handler, _what in (
    ("/health", health_ready, "readiness"),
    ("/health/ready", health_ready, "readiness"),
    ("/health/startup", health_ready, "startup"),
    ("/health/live", health_live, "liveness"),
):
    route("GET", _path, f"SMSGate's health ({_what})", security=None,
          responses={200: Json, 503: Json})(_handler)  # fmt: skip
