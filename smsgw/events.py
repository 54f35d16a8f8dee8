"""Outbound events: their types, their JSON envelope, and who subscribes to them.

The stores write an event (and one delivery per subscriber) in the same transaction as
the state change that caused it, so a crash can never lose one. This module is the pure
part they share: which targets want an event, and what its payload looks like. It does
no I/O; the delivery worker (``webhook_worker.py``) sends what the stores wrote.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smsgw.clock import iso, new_id

# A phone reporting less than this (and not charging) raises ``device.battery_low``
# once, when it crosses the line.
BATTERY_LOW_PERCENT = 15

# The target key of a message's own ``callback_url`` (webhook deliveries use the id).
CALLBACK = "callback"


class EventType(enum.StrEnum):
    MESSAGE_QUEUED = "message.queued"  # a phone accepted it and owns it
    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_FAILED = "message.failed"  # final: no more attempts
    MESSAGE_CANCELLED = "message.cancelled"
    SMS_RECEIVED = "sms.received"
    DEVICE_ONLINE = "device.online"
    DEVICE_OFFLINE = "device.offline"
    DEVICE_BATTERY_LOW = "device.battery_low"
    OTP_VERIFIED = "otp.verified"


ALL_EVENTS = frozenset(EventType)
MESSAGE_EVENTS = frozenset(t for t in EventType if t.startswith("message."))


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created_at: datetime
    subject: str  # what it is about (message, device, inbound or OTP id): per-subject order
    payload: str  # the exact JSON body sent, the same bytes on every retry


@dataclass(frozen=True, slots=True)
class Target:
    key: str  # webhook id, or CALLBACK
    webhook_id: str | None
    url: str
    device_id: str | None = None  # only events of this phone (SMSGate's webhooks)

    def wants(self, device_id: str | None) -> bool:
        return self.device_id is None or self.device_id == device_id


def make_event(type_: EventType, subject: str, data: dict[str, Any], now: datetime) -> Event:
    event_id = new_id()
    envelope = {"id": event_id, "type": type_.value, "created_at": iso(now), "data": data}
    payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    return Event(event_id, type_.value, now, subject, payload)


class Subscriptions:
    """The enabled webhooks by event type, kept by the store next to its database so the
    transaction that changes a message knows at once whom to tell (and writes nothing
    when nobody listens). Updated once a change to the webhooks table has committed
    (a message's own ``callback_url`` is read from its row, not from here)."""

    def __init__(self) -> None:
        # id -> (url, events, device filter)
        self._hooks: dict[str, tuple[str, frozenset[str], str | None]] = {}
        self._by_type: dict[str, list[Target]] = {}
        self._lock = threading.Lock()

    def load(self, hooks: Iterable[tuple[str, str, Iterable[str], bool, str | None]]) -> None:
        with self._lock:
            self._hooks = {
                h: (url, frozenset(ev), device) for h, url, ev, on, device in hooks if on
            }
            self._rebuild()

    def put(self, hook: Any) -> None:
        """A webhook as stored (``store.Webhook``) after a change."""
        self.set(hook.id, hook.url, hook.events, hook.enabled, hook.device_id)

    def set(
        self,
        webhook_id: str,
        url: str,
        events: Iterable[str],
        enabled: bool,
        device_id: str | None = None,
    ) -> None:
        with self._lock:
            if enabled:
                self._hooks[webhook_id] = (url, frozenset(events), device_id)
            else:
                self._hooks.pop(webhook_id, None)
            self._rebuild()

    def remove(self, webhook_id: str) -> None:
        self.set(webhook_id, "", (), False)

    def _rebuild(self) -> None:
        by_type: dict[str, list[Target]] = {}
        for hook_id, (url, events, device) in sorted(self._hooks.items()):
            for t in ALL_EVENTS if "*" in events else events:
                by_type.setdefault(t, []).append(Target(hook_id, hook_id, url, device))
        self._by_type = by_type

    def wanted(self, type_: EventType) -> bool:
        """Does a webhook want this event? False means: write nothing, read nothing (a
        message event may still go to the message's callback_url: see ``targets``)."""
        return bool(self._by_type.get(type_))

    def targets(self, type_: EventType, callback_url: str | None = None) -> list[Target]:
        found = list(self._by_type.get(type_, ()))
        if callback_url and type_ in MESSAGE_EVENTS:
            found.append(Target(CALLBACK, None, callback_url))
        return found


# -- payloads ------------------------------------------------------------------------
# Plain dicts built from store rows; the message body is never included (OTP codes, and
# receivers have it already).


def message_data(m: Any) -> dict[str, Any]:
    return {
        "message_id": m.id,
        "to": m.recipient,
        "status": m.status.value,
        "device_id": m.device_id,
        "sim_slot": m.sim_slot,
        "segments": m.parts,
        "encoding": m.encoding,
        "attempt": m.attempt,
        "error_code": m.error_code,
        "error": m.error,
        "custom_id": m.custom_id,
        "metadata": m.metadata,
        "batch_id": m.batch_id,
        "template_id": m.template_id,
        "created_at": iso(m.created_at),
        "queued_at": iso(m.queued_at),
        "sent_at": iso(m.sent_at),
        "delivered_at": iso(m.delivered_at),
        "failed_at": iso(m.failed_at),
        "cancelled_at": iso(m.cancelled_at),
    }


def device_data(d: Any, *, online: bool) -> dict[str, Any]:
    return {
        "device_id": d.id,
        "name": d.name,
        "online": online,
        "battery": d.battery,
        "charging": d.charging,
        "signal": d.signal,
        "network": d.network,
        "last_seen_at": iso(d.last_seen_at),
    }


def device_event_types(*, online: bool = False, offline: bool = False) -> list[EventType]:
    """What a device write may raise (for the nobody-listens check before any read)."""
    types = [EventType.DEVICE_ONLINE] if online else []
    types += [EventType.DEVICE_OFFLINE] if offline else []
    types.append(EventType.DEVICE_BATTERY_LOW)
    return types


def device_events(
    device: Any, battery_before: int | None, *, online: bool = False, offline: bool = False
) -> list[tuple[EventType, dict[str, Any]]]:
    """The events a device write raises, with their payloads: online/offline as told, and
    battery_low only on the report that crosses the line."""
    types = device_event_types(online=online, offline=offline)
    if device.battery is None or not battery_crossed_low(
        battery_before, device.battery, bool(device.charging)
    ):
        types.remove(EventType.DEVICE_BATTERY_LOW)
    return [(t, device_data(device, online=not offline)) for t in types]


def battery_crossed_low(before: int | None, after: int, charging: bool) -> bool:
    """True only on the report that takes the battery below the line (not every one)."""
    if charging or after >= BATTERY_LOW_PERCENT:
        return False
    return before is None or before >= BATTERY_LOW_PERCENT


def inbound_data(i: Any) -> dict[str, Any]:
    return {
        "inbound_id": i.id,
        "device_id": i.device_id,
        "from": i.sender,
        "message": i.body,
        "sim_slot": i.sim_slot,
        "received_at": iso(i.received_at),
    }


def otp_data(o: Any) -> dict[str, Any]:
    return {
        "otp_id": o.id,
        "to": o.recipient,
        "message_id": o.message_id,
        "attempts": o.attempts,
        "verified_at": iso(o.verified_at),
    }
