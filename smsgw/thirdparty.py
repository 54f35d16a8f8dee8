"""SMSGate's 3rd-party API as its clients speak it: bodies, states, scopes, webhooks.

Integrations written for "SMS Gateway for Android" (its PyPI client, client-go, n8n and
Home Assistant recipes) call ``/api/3rdparty/v1``; ``../shared/specs/smsgate-wire.md``
§6-§7 has what they send and read. This module is the pure part: request models and
their checks, a message's state built from smsgw's records, the scopes and what smsgw
scope each needs, SMSGate's webhook events and envelope. No I/O; the endpoints are in
``smsgw/api/thirdparty.py``, the tokens in ``smsgw/thirdparty_auth.py``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smsgw.appwire import WEBHOOK_EVENTS, app_time, parse_app_time, sign
from smsgw.auth import Principal, Scope
from smsgw.events import EventType
from smsgw.store import Batch, Message
from smsgw.store.rules import RECIPIENT_STATE, group_history, group_state

PREFIX = "/api/3rdparty/v1"

# -- scopes ---------------------------------------------------------------------------------

# Each SMSGate scope and the smsgw scope a key needs for it: the same as smsgw's own API
# asks for the same act (webhooks and settings hold secrets: admin).
SCOPES: dict[str, Scope] = {
    "messages:send": Scope.SEND,
    "messages:read": Scope.READ,
    "messages:list": Scope.READ,
    "messages:cancel": Scope.SEND,
    "messages:export": Scope.ADMIN,
    "devices:list": Scope.READ,
    "devices:delete": Scope.ADMIN,
    "webhooks:list": Scope.ADMIN,
    "webhooks:write": Scope.ADMIN,
    "webhooks:delete": Scope.ADMIN,
    "settings:read": Scope.ADMIN,
    "settings:write": Scope.ADMIN,
    "inbox:list": Scope.READ,
    "inbox:refresh": Scope.ADMIN,
    "logs:read": Scope.READ,
    "tokens:manage": Scope.ADMIN,
}
ALL_SCOPE = "all:any"  # SMSGate's wildcard: every scope the key itself holds
REFRESH_SCOPE = "tokens:refresh"  # only on a refresh token, and only what it may do


def key_scopes(principal: Principal) -> frozenset[str]:
    """The SMSGate scopes an smsgw key holds."""
    return frozenset(name for name, needs in SCOPES.items() if principal.allows(needs))


# -- errors -----------------------------------------------------------------------------------


def error_body(message: str, code: str | None = None) -> dict[str, Any]:
    """SMSGate's error body (``{"message"}``, its clients read nothing else), with smsgw's
    error code beside it."""
    body: dict[str, Any] = {"message": message}
    if code is not None:
        body["code"] = code
    return body


# -- messages ---------------------------------------------------------------------------------

MAX_RECIPIENTS = 100
MIN_TTL = 5


class _In(BaseModel):
    # Unknown fields are ignored, as SMSGate's server does (clients send newer ones).
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TextContent(_In):
    text: str = Field(min_length=1, max_length=65536)


class DataContent(_In):
    data: str = Field(min_length=1, max_length=65536, description="base64")
    port: int = Field(ge=1, le=65535)


def _utc(value: datetime | None) -> datetime | None:
    # client-py sends naive datetimes ("2026-01-01T12:00:00"): taken as UTC (§6.7).
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # 9999-12-31T23:59:59-01:00: past year 9999 in UTC (was a 500)
        raise ValueError("a date and time between years 1 and 9999 in UTC is expected") from None


class MessageIn(_In):
    """``POST /messages`` (§6.2)."""

    id: str | None = Field(default=None, min_length=1, max_length=36)
    device_id: str | None = Field(default=None, alias="deviceId", max_length=64)
    message: str | None = Field(default=None, min_length=1, max_length=65536)  # legacy text
    text_message: TextContent | None = Field(default=None, alias="textMessage")
    data_message: DataContent | None = Field(default=None, alias="dataMessage")
    mms_message: dict[str, Any] | None = Field(default=None, alias="mmsMessage")
    phone_numbers: list[str] = Field(alias="phoneNumbers", min_length=1, max_length=MAX_RECIPIENTS)
    sim_number: int | None = Field(default=None, alias="simNumber", ge=1, le=3)
    with_delivery_report: bool = Field(default=True, alias="withDeliveryReport")
    priority: int = Field(default=0, ge=-128, le=127)
    is_encrypted: bool = Field(default=False, alias="isEncrypted")
    ttl: int | None = Field(default=None, ge=MIN_TTL)
    valid_until: datetime | None = Field(default=None, alias="validUntil")
    schedule_at: datetime | None = Field(default=None, alias="scheduleAt")

    @field_validator("phone_numbers")
    @classmethod
    def _numbers(cls, numbers: list[str]) -> list[str]:
        for n in numbers:
            if not 1 <= len(n) <= 128:
                raise ValueError("each phone number is 1 to 128 characters")
        return numbers

    @field_validator("valid_until", "schedule_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @model_validator(mode="after")
    def _one_content(self) -> MessageIn:
        if self.mms_message is not None:
            raise ValueError("MMS messages are not supported by smsgw")
        given = [self.message, self.text_message, self.data_message]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of textMessage, dataMessage (or message)")
        if self.ttl is not None and self.valid_until is not None:
            raise ValueError("ttl and validUntil are mutually exclusive")
        if self.data_message is not None and not self.is_encrypted:
            try:
                base64.b64decode(self.data_message.data, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("dataMessage.data is not valid base64") from None
        if (
            self.schedule_at is not None
            and self.valid_until is not None
            and self.schedule_at > self.valid_until
        ):
            raise ValueError("scheduleAt must not be after validUntil")
        return self

    @property
    def text(self) -> str | None:
        if self.text_message is not None:
            return self.text_message.text
        return self.message


class MessagesQuery(_In):
    """``GET /messages`` (§6.2)."""

    since: datetime | None = Field(default=None, alias="from")
    until: datetime | None = Field(default=None, alias="to")
    state: (
        Literal["Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelling", "Cancelled"]
        | None
    ) = None
    device_id: str | None = Field(default=None, alias="deviceId", max_length=64)
    limit: int = Field(default=50, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)  # a database's OFFSET: 64 bits
    include_content: bool = Field(default=False, alias="includeContent")
    sort: Literal["created_at", "-created_at"] = "-created_at"

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


def recipient(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"phoneNumber": m.recipient, "state": RECIPIENT_STATE[m.status]}
    if m.error is not None and m.status.value == "FAILED":
        out["error"] = m.error
    return out


def message_state(
    group_id: str,
    messages: list[Message],
    *,
    device_id: str | None = None,
    content: bool = True,
) -> dict[str, Any]:
    """SMSGate's MessageState of one message: its recipients (one smsgw message each)
    with their states, the state of the whole by the app's rule, and when it reached
    each state. Content is kept, never hashed (``isHashed`` is false)."""
    first = messages[0]
    owners = {m.device_id for m in messages if m.device_id is not None}
    shown_device = device_id or (owners.pop() if len(owners) == 1 else None)
    out: dict[str, Any] = {
        "id": group_id,
        "deviceId": shown_device,
        "state": group_state(RECIPIENT_STATE[m.status] for m in messages),
        "isHashed": False,
        "isEncrypted": first.encrypted,
        "recipients": [recipient(m) for m in messages],
        "states": {s: app_time(at) for s, at in group_history(messages).items()},
        "createdAt": app_time(first.created_at),
    }
    if content:
        if first.data_port is not None:
            out["dataMessage"] = {"data": first.body, "port": first.data_port}
        elif not first.sensitive:
            out["textMessage"] = {"text": first.body}
    return out


def group_state_of(batch: Batch, messages: list[Message], content: bool = True) -> dict[str, Any]:
    return message_state(batch.id, messages, device_id=batch.device_id, content=content)


# -- devices ----------------------------------------------------------------------------------


def device_out(d: Any) -> dict[str, Any]:
    """A phone as SMSGate lists it (§6.3), from ``store.Device``."""
    sims = [
        {
            "slotIndex": s.get("slot", i),
            "simNumber": int(s.get("slot", i)) + 1,
            **({"phoneNumber": s["number"]} if s.get("number") else {}),
            **({"carrierName": s["carrier"]} if s.get("carrier") else {}),
        }
        for i, s in enumerate(d.sims or [])
    ]
    return {
        "id": d.id,
        "name": d.name,
        "createdAt": app_time(d.created_at),
        "updatedAt": app_time(d.updated_at),
        "lastSeen": app_time(d.last_seen_at or d.created_at),
        "simCards": sims,
    }


def inbox_out(i: Any) -> dict[str, Any]:
    """A received SMS as client-py's ``list_inbox_messages`` reads it, from ``Inbound``."""
    out: dict[str, Any] = {
        "id": i.id,
        "type": "SMS",
        "sender": i.sender,
        "contentPreview": i.body,
        "createdAt": app_time(i.received_at),
        "deviceId": i.device_id,
    }
    if i.sim_slot is not None:
        out["simNumber"] = i.sim_slot + 1
    return out


# -- webhooks ---------------------------------------------------------------------------------

# SMSGate's event names and the smsgw event behind each; the names smsgw never raises
# (data SMS and MMS received, the app's start and pings) may be registered and stay quiet.
EVENT_SOURCES: dict[str, EventType | None] = {
    "sms:received": EventType.SMS_RECEIVED,
    "sms:sent": EventType.MESSAGE_SENT,
    "sms:delivered": EventType.MESSAGE_DELIVERED,
    "sms:failed": EventType.MESSAGE_FAILED,
    "sms:cancelled": EventType.MESSAGE_CANCELLED,
    "sms:data-received": None,
    "mms:received": None,
    "mms:downloaded": None,
    "system:ping": None,
    "app:started": None,
}
assert set(EVENT_SOURCES) == WEBHOOK_EVENTS
EVENT_NAMES = {source: name for name, source in EVENT_SOURCES.items() if source is not None}


class WebhookIn(_In):
    """``POST /webhooks`` (§6.4): create, or replace the one with this id."""

    id: str | None = Field(default=None, max_length=64)
    url: str = Field(min_length=1, max_length=2048)
    event: str
    device_id: str | None = Field(default=None, alias="deviceId", max_length=64)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        # http as well as https: a self-hosted hub posts to services on its own network.
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest or " " in url:
            raise ValueError("url must be an http:// or https:// URL")
        return url

    @field_validator("event")
    @classmethod
    def _event(cls, event: str) -> str:
        if event not in EVENT_SOURCES:
            raise ValueError(f"unknown event {event!r}; known: {sorted(EVENT_SOURCES)}")
        return event


def webhook_out(hook: Any) -> dict[str, Any]:
    """``store.Webhook`` of SMSGate's format as its API shows it."""
    return {"id": hook.id, "deviceId": hook.device_id, "url": hook.url, "event": hook.event_name}


def _payload(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """An smsgw event's data as the payload of SMSGate's event (§5.3): the message id is
    the one SMSGate's API knows (the group's, for a message to several recipients)."""
    if event == "sms:received":
        out: dict[str, Any] = {
            "message": data["message"],
            "receivedAt": app_time(parse_app_time(data["received_at"])),
            "messageId": data["inbound_id"],
            "sender": data["from"],
        }
        if data.get("sim_slot") is not None:
            out["simNumber"] = data["sim_slot"] + 1
        out["phoneNumber"] = data["from"]
        return out
    stamp = {
        "sms:sent": ("sentAt", "sent_at"),
        "sms:delivered": ("deliveredAt", "delivered_at"),
        "sms:failed": ("failedAt", "failed_at"),
        "sms:cancelled": ("cancelledAt", "cancelled_at"),
    }[event]
    when = data.get(stamp[1])
    out = {stamp[0]: app_time(parse_app_time(when)) if when else None}
    if event == "sms:sent":
        out = {"partsCount": data.get("segments") or -1, **out}
    if event == "sms:failed":
        out["reason"] = data.get("error") or "Unknown"
    out["messageId"] = data.get("batch_id") or data["message_id"]
    out["recipient"] = data["to"]
    if data.get("sim_slot") is not None:
        out["simNumber"] = data["sim_slot"] + 1
    out["phoneNumber"] = data["to"]
    return out


def envelope(hook: Any, event_type: str, event_payload: str, delivery_id: str) -> bytes:
    """The body SMSGate's receivers expect for one delivery of an smsgw event:
    ``{id, webhookId, event, deviceId, payload}``. Built from the stored event, so every
    retry of a delivery sends the same bytes; its ``id`` is the delivery's (unique per
    delivery, stable across retries: receivers drop duplicates by it)."""
    data = json.loads(event_payload)["data"]
    name = EVENT_NAMES[EventType(event_type)]
    body = {
        "id": delivery_id,
        "webhookId": hook.id,
        "event": name,
        "deviceId": data.get("device_id"),
        "payload": _payload(name, data),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(signing_key: str, body: bytes, now: float) -> dict[str, str]:
    """``X-Timestamp`` and ``X-Signature`` as the app signs its webhooks (§5.5)."""
    timestamp = str(int(now))
    return {"X-Timestamp": timestamp, "X-Signature": sign(signing_key, body, timestamp)}


# -- settings -------------------------------------------------------------------------------

SETTINGS = "smsgate.settings"


def default_settings() -> dict[str, Any]:
    """The settings document before anyone set one: a fresh signing key, so this API's
    webhooks are never sent unsigned."""
    return {"webhooks": {"signing_key": secrets.token_urlsafe(16)}}


# The sections and keys SMSGate's DeviceSettings has (client-py's domain.py, §3.6), and
# the type each value must have. smsgw acts on webhooks.signing_key (it signs the
# webhooks above); the rest is kept and returned for clients that round-trip it.
SETTINGS_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "encryption": {"passphrase": str},
    "gateway": {"cloud_url": str, "private_token": str, "notification_channel": str},
    "messages": {
        "limit_period": str,
        "limit_value": int,
        "log_lifetime_days": int,
        "processing_order": str,
        "send_interval_max": int,
        "send_interval_min": int,
        "sim_selection_mode": str,
    },
    "logs": {"lifetime_days": int},
    "ping": {"interval_seconds": int},
    "webhooks": {"internet_required": bool, "retry_count": int, "signing_key": str},
}


def check_settings(doc: Any) -> dict[str, dict[str, Any]]:
    """A settings body, or ValueError saying what is wrong with it."""
    if not isinstance(doc, dict):
        raise ValueError("settings are a JSON object of sections")
    out: dict[str, dict[str, Any]] = {}
    for section, values in doc.items():
        keys = SETTINGS_SCHEMA.get(section)
        if keys is None:
            raise ValueError(f"unknown settings section {section!r}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{section} must be an object")
        for key, value in values.items():
            kind = keys.get(key)
            if kind is None:
                raise ValueError(f"unknown setting {section}.{key}")
            if value is None:
                continue
            if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
                raise ValueError(f"{section}.{key} has the wrong type")
        out[section] = {k: v for k, v in values.items() if v is not None}
    key = out.get("webhooks", {}).get("signing_key")
    if key is not None and not 1 <= len(key) <= 256:
        raise ValueError("webhooks.signing_key is 1 to 256 characters")
    return out


def merge_settings(current: dict[str, Any], patch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in current.items()}
    for section, values in patch.items():
        merged.setdefault(section, {}).update(values)
    return merged


# -- health -----------------------------------------------------------------------------------


def health(version: str, checks: dict[str, tuple[str, str, float | int | None]]) -> dict[str, Any]:
    """SMSGate's health body (§6.5): ``checks`` maps a name to (status, description,
    observed value); the whole is the worst of them."""
    order = {"pass": 0, "warn": 1, "fail": 2}
    worst = max((c[0] for c in checks.values()), key=order.__getitem__, default="pass")
    return {
        "status": worst,
        "version": version,
        "releaseId": 1,
        "checks": {
            name: {
                "description": description,
                "observedUnit": "",
                "observedValue": value if value is not None else 0,
                "status": status,
            }
            for name, (status, description, value) in checks.items()
        },
    }
