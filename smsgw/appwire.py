"""The wire format of the stock "SMS Gateway for Android" app in private-server mode.

What the app sends and accepts, read from its source (``../shared/specs/smsgate-wire.md``,
cited below as §n): the bodies of its mobile API calls, its dates, its message states,
the server-sent events it listens for and the signed webhooks it posts. Pure: no I/O;
``smsgw/api/mobile.py`` serves it and ``smsgw/app_session.py`` streams it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smsgw.store import Message, Status

# The path prefix the app's private-server setting uses (§1.1).
PREFIX = "/api/mobile/v1"

# Event names the app knows for its webhooks (§3.7): one unknown name makes the app drop
# its whole list and retry forever, so the hub only ever hands out these.
WEBHOOK_EVENTS = frozenset(
    {
        "sms:received",
        "sms:sent",
        "sms:delivered",
        "sms:failed",
        "system:ping",
        "sms:data-received",
        "mms:received",
        "mms:downloaded",
        "app:started",
        "sms:cancelled",
    }
)


class AppState(enum.StrEnum):
    """A message's (or a recipient's) state as the app reports it (§3.5)."""

    PENDING = "Pending"
    PROCESSED = "Processed"
    SENT = "Sent"
    DELIVERED = "Delivered"
    FAILED = "Failed"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"


class PushEvent(enum.StrEnum):
    """Server-sent events the app acts on (§4.2)."""

    MESSAGE_ENQUEUED = "MessageEnqueued"
    MESSAGE_CANCELLED = "MessageCancelled"
    WEBHOOKS_UPDATED = "WebhooksUpdated"
    SETTINGS_UPDATED = "SettingsUpdated"
    MESSAGES_EXPORT_REQUESTED = "MessagesExportRequested"


# -- dates --------------------------------------------------------------------------------


def app_time(dt: datetime) -> str:
    """A date the app reads right: exactly three fraction digits (§2.3; its parser takes
    every digit after the point as milliseconds, so microseconds would be 16 minutes
    off), UTC."""
    utc = dt.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


_APP_DATE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:?\d{2}|\+-\d{1,2}:\d{2})?$"
)


def parse_app_time(text: str) -> datetime:
    """A date the app wrote: ``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` in the phone's own zone
    (§2.2), also without a fraction or a zone (UTC assumed), and the broken ``+-5:00``
    of Android before 7 (a negative offset)."""
    m = _APP_DATE.match(text.strip())
    if m is None:
        raise ValueError(f"not a date: {text!r}")
    day, clock, fraction, zone = m.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    naive = datetime.fromisoformat(f"{day}T{clock}").replace(microsecond=micros)
    if zone is None or zone == "Z":
        return naive.replace(tzinfo=UTC)
    sign = -1 if zone.startswith("-") or zone.startswith("+-") else 1
    hours, _, minutes = zone.lstrip("+-").partition(":")
    if not minutes and len(hours) == 4:
        hours, minutes = hours[:2], hours[2:]
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    found = naive.replace(tzinfo=timezone(sign * offset))
    try:
        found.astimezone(UTC)  # what the store writes: 9999-12-31T23:00-05:00 has none
    except OverflowError:
        raise ValueError(f"not a date with a UTC equivalent: {text!r}") from None
    return found


# -- bodies of the mobile API -------------------------------------------------------------


class _AppModel(BaseModel):
    # The app ignores fields it does not know; so does the hub (newer app versions).
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=False)


class SimCard(_AppModel):
    slot_index: int = Field(alias="slotIndex", ge=0, le=16)
    sim_number: int | None = Field(default=None, alias="simNumber", ge=1, le=17)
    phone_number: str | None = Field(default=None, alias="phoneNumber", max_length=64)
    carrier_name: str | None = Field(default=None, alias="carrierName", max_length=128)
    iccid: str | None = Field(default=None, max_length=64)

    def as_sim(self) -> dict[str, Any]:
        """What the hub keeps of a SIM (the shape the agent reports)."""
        sim: dict[str, Any] = {"slot": self.slot_index}
        if self.phone_number:
            sim["number"] = self.phone_number
        if self.carrier_name:
            sim["carrier"] = self.carrier_name
        return sim


class RegisterRequest(_AppModel):
    name: str = Field(min_length=1, max_length=128)
    push_token: str | None = Field(default=None, alias="pushToken", max_length=4096)
    sim_cards: list[SimCard] = Field(default_factory=list, alias="simCards", max_length=16)


class RegisterResponse(_AppModel):
    id: str
    token: str
    login: str
    password: str | None = None


class DeviceUpdate(_AppModel):
    id: str = Field(min_length=1, max_length=64)
    push_token: str | None = Field(default=None, alias="pushToken", max_length=4096)
    sim_cards: list[SimCard] = Field(default_factory=list, alias="simCards", max_length=16)


class RecipientReport(_AppModel):
    phone_number: str = Field(alias="phoneNumber", min_length=1, max_length=128)
    state: AppState
    error: str | None = Field(default=None, max_length=4096)


class StateReport(_AppModel):
    """One item of ``PATCH /message`` (§3.5)."""

    id: str = Field(min_length=1, max_length=36)
    state: AppState
    recipients: list[RecipientReport] = Field(min_length=1, max_length=100)
    states: dict[AppState, str] = Field(default_factory=dict)

    @field_validator("states")
    @classmethod
    def _dates(cls, states: dict[AppState, str]) -> dict[AppState, str]:
        for value in states.values():
            parse_app_time(value)
        return states

    def state_of(self, recipient: str) -> tuple[AppState, str | None]:
        """The state (and error) the report gives ``recipient``, the one number of an
        smsgw message; the message's own state when no recipient entry matches it."""
        wanted = _digits(recipient)
        for r in self.recipients:
            if _digits(r.phone_number) == wanted:
                return r.state, r.error
        if len(self.recipients) == 1:  # the app may reformat the number it was given
            return self.recipients[0].state, self.recipients[0].error
        return self.state, None


def _digits(number: str) -> str:
    return "".join(c for c in number if c in "0123456789")


def mobile_message(m: Message) -> dict[str, Any]:
    """A message as ``GET /message`` hands it to the app (§3.4). ``validUntil`` is the
    message's expiry: the app ignores ``ttl``."""
    item: dict[str, Any] = {"id": m.id}
    if m.data_port is not None:
        item["dataMessage"] = {"data": m.body, "port": m.data_port}
    else:
        item["message"] = m.body
        item["textMessage"] = {"text": m.body}
    item |= {
        "phoneNumbers": [m.recipient],
        "withDeliveryReport": m.delivery_report,
        "isEncrypted": m.encrypted,
        "validUntil": app_time(m.expires_at),
        "state": AppState.PENDING.value,
        "createdAt": app_time(m.created_at),
    }
    if m.sim_slot is not None:
        item["simNumber"] = m.sim_slot + 1
    # The app reads a signed byte; 100 and more skip its own pacing (expedited).
    priority = max(-128, min(127, m.priority))
    if priority:
        item["priority"] = priority
    if m.send_at is not None:
        item["scheduleAt"] = app_time(m.send_at)
    return item


# -- state reports to smsgw statuses -----------------------------------------------------

# Where a report moves a message. Processed: the app took it in hand (it stays QUEUED);
# Failed is final, the phone may have transmitted part of it; Pending changes nothing.
REPORTED_STATUS: dict[AppState, Status | None] = {
    AppState.PENDING: None,
    AppState.PROCESSED: Status.QUEUED,
    AppState.SENT: Status.SENT,
    AppState.DELIVERED: Status.DELIVERED,
    AppState.FAILED: Status.FAILED,
    AppState.CANCELLING: None,
    AppState.CANCELLED: Status.FAILED,  # cancelled on the phone after it owned the message
}


def failure_code(state: AppState, error: str | None) -> tuple[str, str]:
    """An smsgw error code and text for a Failed (or phone-cancelled) report."""
    if state is AppState.CANCELLED:
        return "cancelled_on_phone", error or "the app cancelled the message"
    text = error or "the app reported a failure"
    if text.startswith("TTL expired"):
        return "expired", text
    found = re.search(r"RESULT_([A-Z_]+)", text)
    if found:
        return found.group(1).lower()[:48], text
    return "app_failed", text


# -- server-sent events ---------------------------------------------------------------------

KEEPALIVE = b":keepalive\n\n"


def sse_event(event: PushEvent, data: dict[str, str] | None = None) -> bytes:
    """One event as the app's SSE reader dispatches it (§4.2): it needs a data line, so an
    event without data says ``null``."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {event.value}\ndata: {payload}\n\n".encode()


# -- webhooks the app posts ---------------------------------------------------------------


def sign(key: str, body: bytes, timestamp: str) -> str:
    """``X-Signature``: lowercase hex HMAC-SHA256 of the raw body followed by the
    ``X-Timestamp`` text, keyed with the app's ``webhooks.signing_key`` (§5.5)."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def signature_valid(key: str, body: bytes, timestamp: str, signature: str) -> bool:
    # As bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500),
    # and a header may carry any latin-1 byte.
    given = signature.strip().lower().encode(errors="replace")
    return hmac.compare_digest(sign(key, body, timestamp).encode(), given)


def _no_nul(value: str | None) -> str | None:
    """U+0000 read as U+FFFD: PostgreSQL's text cannot hold it (the write failed, a 500)."""
    return value.replace("\x00", "\ufffd") if value else value


class ReceivedSms(_AppModel):
    """The payload of ``sms:received`` (§5.3)."""

    message: str = Field(max_length=65536)
    received_at: str = Field(alias="receivedAt")
    message_id: str | None = Field(default=None, alias="messageId", max_length=128)
    sender: str | None = Field(default=None, max_length=128)
    phone_number: str | None = Field(default=None, alias="phoneNumber", max_length=128)
    sim_number: int | None = Field(default=None, alias="simNumber", ge=1, le=17)

    @field_validator("received_at")
    @classmethod
    def _date(cls, value: str) -> str:
        parse_app_time(value)
        return value

    @field_validator("message", "message_id", "sender", "phone_number")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @property
    def from_number(self) -> str:
        return self.sender or self.phone_number or ""


class Envelope(_AppModel):
    """A webhook the app posts: ``{id, webhookId, event, deviceId, payload}`` (§5.3)."""

    id: str = Field(min_length=1, max_length=128)
    webhook_id: str | None = Field(default=None, alias="webhookId", max_length=128)
    event: str = Field(max_length=64)
    device_id: str | None = Field(default=None, alias="deviceId", max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _no_nul(value) or value  # the SMS's local id in the store
