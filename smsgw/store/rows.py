"""Database rows to store records (and a message back to its column values), for both engines.

Both engines keep the same tables with the same column names; they differ only in how a
value comes back. SQLite stores timestamps as ISO 8601 text and flags as 0/1, asyncpg
returns ``timestamptz`` as an aware ``datetime`` and ``boolean`` as ``bool``. So each
record type has one mapper here, which reads columns by name (``sqlite3.Row`` and
``asyncpg.Record`` both support ``row["name"]``) and leaves those values to a
:class:`Decoder`, one per engine (:data:`SQLITE`, :data:`POSTGRES`).

JSON columns are text in SQLite and ``jsonb`` in PostgreSQL, which asyncpg (without a
type codec, as the pool is set up) returns as ``str`` too: both are decoded with
``json.loads``. The column lists every ``SELECT`` of a message or delivery names are here
as well. Mappers run for every row read, so they are plain functions with no reflection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from smsgw.clock import parse_iso
from smsgw.store.records import (
    ApiKey,
    AppToken,
    Attempt,
    Batch,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Device,
    Inbound,
    Message,
    OptOut,
    Otp,
    Route,
    Status,
    Template,
    UiSession,
    Webhook,
)


class Row(Protocol):
    """A row read by column name: ``sqlite3.Row`` or ``asyncpg.Record``."""

    def __getitem__(self, key: str, /) -> Any: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Decoder:
    """How one engine's column values become Python values."""

    dt: Callable[[Any], datetime | None]
    """A nullable timestamp column."""
    req_dt: Callable[[Any], datetime]
    """A ``NOT NULL`` timestamp column."""
    flag: Callable[[Any], bool]
    """A ``NOT NULL`` flag column (a nullable one is mapped as ``None`` when NULL)."""
    secret: Callable[[str], str] = str
    """A secret the hub signs with: opened when sealed at rest (``smsgw/secretbox.py``);
    each store binds its own key (``Store.dec``), the engine's decoder keeps them as read."""


def _req_iso(value: str) -> datetime:
    dt = parse_iso(value)
    assert dt is not None
    return dt


def _same(value: Any) -> Any:
    return value


SQLITE = Decoder(dt=parse_iso, req_dt=_req_iso, flag=bool)
POSTGRES = Decoder(dt=_same, req_dt=_same, flag=_same)

MESSAGE_FIELDS = (
    "id",
    "recipient",
    "body",
    "status",
    "device_id",
    "pinned_device_id",
    "sim_slot",
    "parts",
    "attempt",
    "lease_until",
    "next_attempt_at",
    "error_code",
    "error",
    "created_at",
    "updated_at",
    "queued_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "expires_at",
    "priority",
    "send_at",
    "cancelled_at",
    "custom_id",
    "metadata",
    "encoding",
    "sensitive",
    "template_id",
    "batch_id",
    "callback_url",
    "processed_at",
    "data_port",
    "encrypted",
    "delivery_report",
    "route_id",
    "route_message_id",
    "cost",
    "currency",
    "sms_type",
    "route_forced",
)
"""The ``messages`` columns :func:`message` reads, in table order."""
MESSAGE_COLUMNS = ", ".join(MESSAGE_FIELDS)

DELIVERY_COLUMNS = (
    "d.id, d.event_id, e.type AS event_type, d.webhook_id, d.url, d.status, d.attempts, "
    "d.max_attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, "
    "d.updated_at, e.payload"
)
"""What :func:`delivery` reads, from ``webhook_deliveries d JOIN events e``."""


def message_values(m: Message) -> tuple[Any, ...]:
    """The values of :data:`MESSAGE_FIELDS`, in order (for INSERT and COPY)."""
    return (
        m.id,
        m.recipient,
        m.body,
        m.status.value,
        m.device_id,
        m.pinned_device_id,
        m.sim_slot,
        m.parts,
        m.attempt,
        m.lease_until,
        m.next_attempt_at,
        m.error_code,
        m.error,
        m.created_at,
        m.updated_at,
        m.queued_at,
        m.sent_at,
        m.delivered_at,
        m.failed_at,
        m.expires_at,
        m.priority,
        m.send_at,
        m.cancelled_at,
        m.custom_id,
        json.dumps(m.metadata) if m.metadata is not None else None,
        m.encoding,
        m.sensitive,
        m.template_id,
        m.batch_id,
        m.callback_url,
        m.processed_at,
        m.data_port,
        m.encrypted,
        m.delivery_report,
        m.route_id,
        m.route_message_id,
        m.cost,
        m.currency,
        m.sms_type,
        m.route_forced,
    )


def message(row: Row, d: Decoder) -> Message:
    dt, req_dt = d.dt, d.req_dt
    metadata = row["metadata"]
    return Message(
        id=row["id"],
        recipient=row["recipient"],
        body=row["body"],
        status=Status(row["status"]),
        device_id=row["device_id"],
        pinned_device_id=row["pinned_device_id"],
        sim_slot=row["sim_slot"],
        parts=row["parts"],
        attempt=row["attempt"],
        lease_until=dt(row["lease_until"]),
        next_attempt_at=dt(row["next_attempt_at"]),
        error_code=row["error_code"],
        error=row["error"],
        created_at=req_dt(row["created_at"]),
        updated_at=req_dt(row["updated_at"]),
        queued_at=dt(row["queued_at"]),
        sent_at=dt(row["sent_at"]),
        delivered_at=dt(row["delivered_at"]),
        failed_at=dt(row["failed_at"]),
        expires_at=req_dt(row["expires_at"]),
        priority=row["priority"],
        send_at=dt(row["send_at"]),
        cancelled_at=dt(row["cancelled_at"]),
        custom_id=row["custom_id"],
        metadata=json.loads(metadata) if metadata is not None else None,
        encoding=row["encoding"],
        sensitive=d.flag(row["sensitive"]),
        template_id=row["template_id"],
        batch_id=row["batch_id"],
        callback_url=row["callback_url"],
        processed_at=dt(row["processed_at"]),
        data_port=row["data_port"],
        encrypted=d.flag(row["encrypted"]),
        delivery_report=d.flag(row["delivery_report"]),
        route_id=row["route_id"],
        route_message_id=row["route_message_id"],
        cost=row["cost"],
        currency=row["currency"],
        sms_type=row["sms_type"],
        route_forced=d.flag(row["route_forced"]),
    )


def attempt(row: Row, d: Decoder) -> Attempt:
    """One ``message_attempts`` row."""
    return Attempt(
        attempt=row["attempt"],
        device_id=row["device_id"],
        offered_at=d.req_dt(row["offered_at"]),
        accepted_at=d.dt(row["accepted_at"]),
        ended_at=d.dt(row["ended_at"]),
        outcome=row["outcome"],
        error_code=row["error_code"],
        error=row["error"],
    )


def template(row: Row, d: Decoder) -> Template:
    return Template(
        id=row["id"],
        name=row["name"],
        body=row["body"],
        category=row["category"],
        active=d.flag(row["active"]),
        usage_count=row["usage_count"],
        created_at=d.req_dt(row["created_at"]),
        updated_at=d.req_dt(row["updated_at"]),
    )


def otp(row: Row, d: Decoder) -> Otp:
    return Otp(
        id=row["id"],
        recipient=row["recipient"],
        code_hash=row["code_hash"],
        message_id=row["message_id"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=d.req_dt(row["created_at"]),
        expires_at=d.req_dt(row["expires_at"]),
        verified_at=d.dt(row["verified_at"]),
        superseded_at=d.dt(row["superseded_at"]),
    )


def device(row: Row, d: Decoder) -> Device:
    charging = row["charging"]
    return Device(
        id=row["id"],
        name=row["name"],
        hardware_id=row["hardware_id"],
        sims=json.loads(row["sims"]),
        fcm_token=row["fcm_token"],
        enabled=d.flag(row["enabled"]),
        daily_quota=row["daily_quota"],
        sent_today=row["sent_today"],
        sent_day=row["sent_day"],
        battery=row["battery"],
        charging=None if charging is None else d.flag(charging),
        signal=row["signal"],
        network=row["network"],
        app_version=row["app_version"],
        last_seen_at=d.dt(row["last_seen_at"]),
        created_at=d.req_dt(row["created_at"]),
        updated_at=d.req_dt(row["updated_at"]),
        kind=row["kind"],
    )


def app_token(row: Row, d: Decoder) -> AppToken:
    return AppToken(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=d.req_dt(row["created_at"]),
        expires_at=d.dt(row["expires_at"]),
        revoked_at=d.dt(row["revoked_at"]),
        last_used_at=d.dt(row["last_used_at"]),
    )


def ui_session(row: Row, d: Decoder) -> UiSession:
    return UiSession(
        id_hash=row["id_hash"],
        key_id=row["key_id"],
        env_key=row["env_key"],
        csrf=row["csrf"],
        created_at=d.req_dt(row["created_at"]),
        expires_at=d.req_dt(row["expires_at"]),
    )


def api_key(row: Row, d: Decoder) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=frozenset(row["scopes"].split()),
        created_at=d.req_dt(row["created_at"]),
        last_used_at=d.dt(row["last_used_at"]),
        revoked_at=d.dt(row["revoked_at"]),
        rate_limit_rpm=row["rate_limit_rpm"],
        daily_message_limit=row["daily_message_limit"],
    )


def inbound(row: Row, d: Decoder) -> Inbound:
    return Inbound(
        id=row["id"],
        device_id=row["device_id"],
        local_id=row["local_id"],
        sender=row["sender"],
        body=row["body"],
        sim_slot=row["sim_slot"],
        received_at=d.req_dt(row["received_at"]),
        created_at=d.req_dt(row["created_at"]),
    )


def opt_out(row: Row, d: Decoder) -> OptOut:
    return OptOut(row["number"], row["source"], row["reason"], d.req_dt(row["created_at"]))


def batch(row: Row, by_status: dict[str, int], d: Decoder) -> Batch:
    """A ``batches`` row, with its messages counted by status."""
    return Batch(
        id=row["id"],
        name=row["name"],
        total=row["total"],
        rejected=row["rejected"],
        created_at=d.req_dt(row["created_at"]),
        by_status=by_status,
        kind=row["kind"],
        device_id=row["device_id"],
    )


def webhook(row: Row, d: Decoder) -> Webhook:
    dt = d.dt
    previous = row["previous_secret"]
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=frozenset(row["events"].split()),
        description=row["description"],
        enabled=d.flag(row["enabled"]),
        secret=d.secret(row["secret"]),
        created_at=d.req_dt(row["created_at"]),
        updated_at=d.req_dt(row["updated_at"]),
        previous_secret=None if previous is None else d.secret(previous),
        previous_secret_until=dt(row["previous_secret_until"]),
        failing_since=dt(row["failing_since"]),
        disabled_at=dt(row["disabled_at"]),
        disabled_reason=row["disabled_reason"],
        format=row["format"],
        event_name=row["event_name"],
        device_id=row["device_id"],
    )


def delivery(row: Row, d: Decoder) -> Delivery:
    """A row of :data:`DELIVERY_COLUMNS`, its attempt history still empty."""
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        webhook_id=row["webhook_id"],
        url=row["url"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        next_attempt_at=d.dt(row["next_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=d.req_dt(row["created_at"]),
        updated_at=d.req_dt(row["updated_at"]),
        payload=row["payload"],
    )


def add_history(by_id: dict[str, Delivery], attempts: Iterable[Row], d: Decoder) -> None:
    """Appends ``webhook_attempts`` rows (in attempt order) to their deliveries' history."""
    for a in attempts:
        by_id[a["delivery_id"]].history.append(
            DeliveryAttempt(
                attempt=a["attempt"],
                at=d.req_dt(a["at"]),
                status_code=a["status_code"],
                error=a["error"],
                duration_ms=a["duration_ms"],
            )
        )


def route(row: Row, d: Decoder) -> Route:
    """A ``routes`` row, its credentials opened (``d.secret``) and parsed."""
    return Route(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        enabled=d.flag(row["enabled"]),
        credentials=json.loads(d.secret(row["credentials"])),
        created_at=d.req_dt(row["created_at"]),
        updated_at=d.req_dt(row["updated_at"]),
        sender=row["sender"],
        priority=row["priority"],
        policy=json.loads(row["policy"]),
        api_base_url=row["api_base_url"],
        price_per_segment=row["price_per_segment"],
        currency=row["currency"],
    )
