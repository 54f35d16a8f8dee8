"""In-process store: the ``Store`` contract in plain dicts, for development and tests.

Nothing survives the process (``SMSGW_DATABASE_URL=memory://``). It implements the same
compare-and-set rules as the SQLite store, and the store test suite runs against both,
so the contract is written down once in tests and kept by two implementations. Every
method body runs without an ``await`` in between, which makes each one atomic on the
event loop, the in-process equivalent of a transaction.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime
from typing import Any

from smsgw.clock import new_id, utcnow
from smsgw.events import (
    Event,
    EventType,
    Subscriptions,
    device_events,
    inbound_data,
    make_event,
    message_data,
    otp_data,
)
from smsgw.store.base import (
    DEVICE_REMOVED,
    DEVICE_REMOVED_ERROR,
    ApiKey,
    Attempt,
    Batch,
    Conflict,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Device,
    IdempotencyRecord,
    Inbound,
    InboundFilter,
    Message,
    MessageFilter,
    OptOut,
    Otp,
    Stats,
    Status,
    Store,
    Template,
    Webhook,
    disabled_reason,
    first_offer,
    next_delivery_status,
    not_offered,
    offered_to_removed,
)


def _page(
    rows: list[Any], since: datetime | None, after: tuple[datetime, str] | None, limit: int
) -> list[Any]:
    rows = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    if since is not None:
        rows = [r for r in rows if r.created_at >= since]
    if after is not None:
        rows = [r for r in rows if (r.created_at, r.id) < after]
    return rows[:limit]


class MemoryStore(Store):
    def __init__(self) -> None:
        self.keys: dict[str, tuple[ApiKey, str]] = {}  # prefix -> (key, hash)
        self.codes: dict[str, tuple[datetime, datetime | None]] = {}  # hash -> (expiry, used)
        self.devices: dict[str, Device] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # prefix -> (device id, hash)
        self.revoked: set[str] = set()
        self.messages: dict[str, Message] = {}
        self.attempts: dict[str, list[Attempt]] = {}
        self.inbound: dict[tuple[str, str], Inbound] = {}
        self.affinity: dict[str, tuple[str, datetime]] = {}
        self.idempotency: dict[tuple[str, str], tuple[IdempotencyRecord, datetime]] = {}
        self.templates: dict[str, Template] = {}
        self.otps: dict[str, Otp] = {}
        self.secrets: dict[str, str] = {}
        self.opt_outs: dict[str, OptOut] = {}
        self.batches: dict[str, Batch] = {}
        self.subs = Subscriptions()
        self.webhooks: dict[str, Webhook] = {}
        self.events: dict[str, Event] = {}
        # Insertion order is creation order (the per-subject ordering rule relies on it).
        self.deliveries: dict[str, tuple[Delivery, str, str]] = {}  # id -> (d, target, subject)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    # -- keys -----------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        self.keys[key.prefix] = (replace(key), key_hash)

    async def api_key_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        found = self.keys.get(prefix)
        if found is None or found[0].revoked_at is not None:
            return None
        return replace(found[0]), found[1]

    async def list_api_keys(self) -> list[ApiKey]:
        return sorted(
            (replace(k) for k, _ in self.keys.values()), key=lambda k: (k.created_at, k.id)
        )

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        for key, _ in self.keys.values():
            if key.id == key_id and key.revoked_at is None:
                key.revoked_at = now
                return True
        return False

    async def has_admin_key(self) -> bool:
        return any("admin" in k.scopes and k.revoked_at is None for k, _ in self.keys.values())

    # -- enrollment and devices -----------------------------------------------------

    async def create_enrollment_code(
        self, code_hash: str, now: datetime, expires_at: datetime
    ) -> None:
        self.codes[code_hash] = (expires_at, None)

    async def register_device(
        self,
        *,
        device_id: str,
        name: str,
        hardware_id: str,
        sims: list[dict[str, Any]],
        fcm_token: str | None,
        token_prefix: str,
        token_hash: str,
        now: datetime,
        enrollment_code_hash: str | None,
    ) -> tuple[Device, bool] | None:
        if enrollment_code_hash is not None:
            code = self.codes.get(enrollment_code_hash)
            if code is None or code[1] is not None or code[0] <= now:
                return None
            self.codes[enrollment_code_hash] = (code[0], now)
        existing = next((d for d in self.devices.values() if d.hardware_id == hardware_id), None)
        if existing is not None:
            self.tokens = {p: t for p, t in self.tokens.items() if t[0] != existing.id}
            existing.name, existing.sims, existing.updated_at = name, copy.deepcopy(sims), now
            existing.fcm_token = fcm_token or existing.fcm_token
            self.revoked.discard(existing.id)
            device, created = existing, False
        else:
            device = Device(
                id=device_id,
                name=name,
                hardware_id=hardware_id,
                sims=copy.deepcopy(sims),
                fcm_token=fcm_token,
                enabled=True,
                daily_quota=None,
                sent_today=0,
                sent_day=None,
                battery=None,
                charging=None,
                signal=None,
                network=None,
                app_version=None,
                last_seen_at=None,
                created_at=now,
                updated_at=now,
            )
            self.devices[device_id] = device
            created = True
        self.tokens[token_prefix] = (device.id, token_hash)
        return replace(device), created

    def _live_device(self, device_id: str) -> Device | None:
        device = self.devices.get(device_id)
        return None if device is None or device_id in self.revoked else device

    async def device_by_token_prefix(self, prefix: str) -> tuple[Device, str] | None:
        found = self.tokens.get(prefix)
        device = self._live_device(found[0]) if found else None
        return (replace(device), found[1]) if device and found else None

    async def get_device(self, device_id: str) -> Device | None:
        device = self._live_device(device_id)
        return replace(device) if device else None

    async def list_devices(self) -> list[Device]:
        return sorted(
            (replace(d) for d in self.devices.values() if d.id not in self.revoked),
            key=lambda d: (d.created_at, d.id),
        )

    async def update_device(self, device_id: str, now: datetime, **fields: Any) -> Device | None:
        device = self._live_device(device_id)
        if device is None:
            return None
        for name, value in fields.items():
            setattr(device, name, copy.deepcopy(value))
        device.updated_at = now
        return replace(device)

    async def record_device_status(
        self,
        device_id: str,
        *,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
        offline: bool = False,
    ) -> None:
        device = self.devices.get(device_id)
        if device is not None:
            before = device.battery
            device.battery, device.charging, device.signal = battery, charging, signal
            device.network, device.last_seen_at = network, now
            self._device_events(device, before, now, offline=offline)

    async def device_online(
        self,
        device_id: str,
        *,
        sims: list[dict[str, Any]],
        app_version: str,
        fcm_token: str | None,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
    ) -> tuple[Device, list[Message]] | None:
        device = self._live_device(device_id)
        if device is None:
            return None
        if device is not None:
            before = device.battery
            device.sims, device.app_version = copy.deepcopy(sims), app_version
            device.fcm_token = fcm_token or device.fcm_token
            device.battery, device.charging, device.signal = battery, charging, signal
            device.network, device.last_seen_at, device.updated_at = network, now, now
            self._device_events(device, before, now, online=True)
        return replace(device), await self.owned_unfinished(device_id)

    async def delete_device(self, device_id: str, now: datetime) -> bool:
        if self._live_device(device_id) is None:
            return False
        self.revoked.add(device_id)
        self.tokens = {p: t for p, t in self.tokens.items() if t[0] != device_id}
        for attempts in self.attempts.values():
            for a in attempts:
                if a.device_id == device_id and a.ended_at is None:
                    a.ended_at, a.outcome = now, DEVICE_REMOVED
        for m in self.messages.values():
            if m.device_id == device_id and m.status in (Status.PENDING, Status.QUEUED):
                m.status, m.device_id, m.lease_until, m.queued_at = Status.PENDING, None, None, None
                m.updated_at = now
            if m.pinned_device_id == device_id and m.status is Status.PENDING:
                m.status, m.error_code, m.failed_at = Status.FAILED, DEVICE_REMOVED, now
                m.error = DEVICE_REMOVED_ERROR
                self._message_event(EventType.MESSAGE_FAILED, m, now)
        return True

    # -- messages -------------------------------------------------------------------

    async def create_message(
        self,
        message: Message,
        *,
        offer_to: str | None = None,
        lease_until: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> bool:
        if message.id in self.messages:
            raise ValueError(f"duplicate message id {message.id}")
        stored_as_asked = True
        if offer_to is not None and offer_to in self.revoked:  # see Store.create_message
            if accepted_at is not None:
                not_offered(message)
                return False
            offered_to_removed(message, offer_to, utcnow())
            if message.status is Status.FAILED:
                self._message_event(EventType.MESSAGE_FAILED, message, message.updated_at)
            offer_to, stored_as_asked = None, False
        if offer_to is not None:
            first_offer(message, offer_to, lease_until, accepted_at)
            self.attempts[message.id] = [
                Attempt(1, offer_to, message.created_at, accepted_at=accepted_at)
            ]
        self.subs.callbacks = self.subs.callbacks or bool(message.callback_url)
        self.messages[message.id] = replace(
            message, attempts=[], last_device=None, metadata=copy.deepcopy(message.metadata)
        )
        if accepted_at is not None:
            self._message_event(EventType.MESSAGE_QUEUED, message, accepted_at)
        return stored_as_asked

    async def get_message(self, message_id: str, *, with_attempts: bool = False) -> Message | None:
        m = self.messages.get(message_id)
        if m is None:
            return None
        attempts = [replace(a) for a in self.attempts.get(message_id, [])] if with_attempts else []
        return replace(m, attempts=attempts)

    async def list_messages(self, flt: MessageFilter) -> list[Message]:
        rows = [
            m
            for m in self.messages.values()
            if (flt.status is None or m.status is flt.status)
            and (flt.device_id is None or m.device_id == flt.device_id)
            and (flt.custom_id is None or m.custom_id == flt.custom_id)
        ]
        return [replace(m) for m in _page(rows, flt.since, flt.after, flt.limit)]

    async def due_messages(self, now: datetime, limit: int) -> list[Message]:
        due = [
            m
            for m in self.messages.values()
            if m.status is Status.PENDING
            and (m.lease_until is None or m.lease_until <= now)
            and (m.next_attempt_at is None or m.next_attempt_at <= now)
        ]
        due.sort(key=lambda m: (-m.priority, m.created_at, m.id))
        out = []
        for m in due[:limit]:
            hint = self.affinity.get(m.recipient)
            out.append(replace(m, last_device=hint[0] if hint else None))
        return out

    async def owned_unfinished(self, device_id: str) -> list[Message]:
        return [
            replace(m)
            for m in self.messages.values()
            if m.device_id == device_id and m.status is Status.QUEUED
        ]

    async def offer(
        self,
        message_id: str,
        device_id: str,
        expected_attempt: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        m = self.messages.get(message_id)
        if (
            m is None
            or m.status is not Status.PENDING
            or m.attempt != expected_attempt
            or (m.lease_until is not None and m.lease_until > now)
        ):
            return False
        m.attempt, m.device_id, m.lease_until, m.updated_at = (
            expected_attempt + 1,
            device_id,
            lease_until,
            now,
        )
        self.attempts.setdefault(message_id, []).append(Attempt(m.attempt, device_id, now))
        return True

    def _end_attempt(
        self,
        message_id: str,
        attempt: int,
        outcome: str,
        now: datetime,
        error_code: str | None = None,
        error: str | None = None,
    ) -> None:
        for a in self.attempts.get(message_id, []):
            if a.attempt == attempt and a.ended_at is None:
                a.ended_at, a.outcome, a.error_code, a.error = now, outcome, error_code, error

    async def release_offer(
        self,
        message_id: str,
        device_id: str,
        attempt: int,
        outcome: str,
        now: datetime,
        retry_at: datetime | None,
        max_attempts: int,
    ) -> Status | None:
        m = self.messages.get(message_id)
        if (
            m is None
            or m.status is not Status.PENDING
            or m.attempt != attempt
            or m.device_id != device_id
        ):
            return None
        m.device_id, m.lease_until, m.updated_at = None, None, now
        if attempt >= max_attempts:
            m.status, m.error_code, m.failed_at = Status.FAILED, "max_attempts", now
            m.error = f"no phone took the message after {attempt} attempts (last: {outcome})"
        else:
            m.next_attempt_at = retry_at
        self._end_attempt(message_id, attempt, outcome, now)
        if m.status is Status.FAILED:
            self._message_event(EventType.MESSAGE_FAILED, m, now)
        return m.status

    async def accept(self, message_id: str, device_id: str, attempt: int, now: datetime) -> bool:
        m = self.messages.get(message_id)
        if m is None or m.device_id != device_id or m.attempt != attempt:
            return False
        if m.status is Status.PENDING:
            m.status, m.lease_until, m.queued_at, m.updated_at = Status.QUEUED, None, now, now
            for a in self.attempts.get(message_id, []):
                if a.attempt == attempt:
                    a.accepted_at = now
            self._message_event(EventType.MESSAGE_QUEUED, m, now)
            return True
        return m.status in (Status.QUEUED, Status.SENT, Status.DELIVERED)

    def _count_sent(self, device_id: str, now: datetime) -> None:
        device = self.devices.get(device_id)
        if device is not None:
            day = now.date().isoformat()
            device.sent_today = device.sent_today + 1 if device.sent_day == day else 1
            device.sent_day = day

    async def mark_sent(self, message_id: str, device_id: str, now: datetime) -> str | None:
        m = self.messages.get(message_id)
        if m is None or m.device_id != device_id or m.status is not Status.QUEUED:
            return None
        m.status, m.sent_at, m.updated_at = Status.SENT, now, now
        self._end_attempt(message_id, m.attempt, "sent", now)
        self._count_sent(device_id, now)
        self.affinity[m.recipient] = (device_id, now)
        self._message_event(EventType.MESSAGE_SENT, m, now)
        return m.recipient

    async def mark_delivered(self, message_id: str, device_id: str, now: datetime) -> bool:
        m = self.messages.get(message_id)
        if m is None or m.device_id != device_id or m.status not in (Status.QUEUED, Status.SENT):
            return False
        if m.sent_at is None:
            m.sent_at = now
            self._count_sent(device_id, now)
        m.status, m.delivered_at, m.updated_at = Status.DELIVERED, now, now
        self._end_attempt(message_id, m.attempt, "sent", now)
        self._message_event(EventType.MESSAGE_DELIVERED, m, now)
        return True

    async def mark_failed(
        self,
        message_id: str,
        device_id: str,
        attempt: int,
        *,
        error_code: str,
        error: str,
        retryable: bool,
        now: datetime,
        retry_at: datetime | None,
        max_attempts: int,
    ) -> Status | None:
        m = self.messages.get(message_id)
        if m is None or m.device_id != device_id:
            return None
        if m.attempt != attempt:  # a report about an older attempt: stale
            return None
        if m.status not in (Status.PENDING, Status.QUEUED, Status.SENT):
            return None
        again = retryable and m.status is not Status.SENT and m.attempt < max_attempts
        m.error_code, m.error, m.lease_until, m.updated_at = error_code, error, None, now
        if again:
            m.status, m.device_id, m.queued_at, m.next_attempt_at = (
                Status.PENDING,
                None,
                None,
                retry_at,
            )
        else:
            m.status, m.failed_at = Status.FAILED, now
        self._end_attempt(
            message_id,
            m.attempt,
            "failed_retryable" if retryable else "failed",
            now,
            error_code,
            error,
        )
        if m.status is Status.FAILED:
            self._message_event(EventType.MESSAGE_FAILED, m, now)
        return m.status

    async def cancel_message(self, message_id: str, now: datetime) -> Message | None:
        m = self.messages.get(message_id)
        if m is None:
            return None
        if m.status is Status.PENDING:
            m.status, m.cancelled_at, m.lease_until, m.updated_at = (
                Status.CANCELLED,
                now,
                None,
                now,
            )
            self._end_attempt(message_id, m.attempt, "cancelled", now)
            self._message_event(EventType.MESSAGE_CANCELLED, m, now)
        return replace(m)

    async def idempotency_claim(
        self, owner: str, key: str, request_hash: str, now: datetime, abandoned_before: datetime
    ) -> IdempotencyRecord | None:
        found = self.idempotency.get((owner, key))
        if found is None or (found[0].status_code is None and found[1] < abandoned_before):
            self.idempotency[(owner, key)] = (IdempotencyRecord(request_hash, None, None), now)
            return None
        return found[0]

    async def idempotency_complete(
        self, owner: str, key: str, status_code: int, response: str
    ) -> None:
        found = self.idempotency.get((owner, key))
        if found is not None:
            self.idempotency[(owner, key)] = (
                IdempotencyRecord(found[0].request_hash, status_code, response),
                found[1],
            )

    async def idempotency_release(self, owner: str, key: str) -> None:
        found = self.idempotency.get((owner, key))
        if found is not None and found[0].status_code is None:
            del self.idempotency[(owner, key)]

    async def purge_idempotency(self, before: datetime) -> int:
        old = [k for k, (_, created) in self.idempotency.items() if created < before]
        for k in old:
            del self.idempotency[k]
        return len(old)

    # -- templates --------------------------------------------------------------------

    def _name_taken(self, name: str, other_than: str | None = None) -> bool:
        return any(t.name == name and t.id != other_than for t in self.templates.values())

    async def create_template(self, template: Template) -> None:
        if self._name_taken(template.name):
            raise Conflict(f"a template named {template.name!r} exists")
        self.templates[template.id] = replace(template)

    async def get_template(self, template_id: str) -> Template | None:
        t = self.templates.get(template_id)
        return replace(t) if t else None

    async def list_templates(
        self, *, category: str | None = None, active: bool | None = None
    ) -> list[Template]:
        return sorted(
            (
                replace(t)
                for t in self.templates.values()
                if (category is None or t.category == category)
                and (active is None or t.active == active)
            ),
            key=lambda t: t.name,
        )

    async def update_template(
        self, template_id: str, now: datetime, **fields: Any
    ) -> Template | None:
        unknown = set(fields) - {"name", "body", "category", "active"}
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        t = self.templates.get(template_id)
        if t is None:
            return None
        if "name" in fields and self._name_taken(fields["name"], template_id):
            raise Conflict(f"a template named {fields['name']!r} exists")
        for name, value in fields.items():
            setattr(t, name, value)
        t.updated_at = now
        return replace(t)

    async def delete_template(self, template_id: str) -> bool:
        return self.templates.pop(template_id, None) is not None

    async def count_template_use(self, template_id: str, n: int = 1) -> None:
        t = self.templates.get(template_id)
        if t is not None:
            t.usage_count += n

    # -- one-time passwords -------------------------------------------------------------

    async def create_otp(self, otp: Otp, message: Message) -> None:
        for other in self.otps.values():
            if (
                other.recipient == otp.recipient
                and other.superseded_at is None
                and other.verified_at is None
            ):
                other.superseded_at = otp.created_at
        await self.create_message(message)
        self.otps[otp.id] = replace(otp)

    async def otp_sends_since(self, recipient: str, since: datetime) -> list[datetime]:
        return sorted(
            (
                o.created_at
                for o in self.otps.values()
                if o.recipient == recipient and o.created_at >= since
            ),
            reverse=True,
        )

    async def get_otp(self, otp_id: str) -> Otp | None:
        o = self.otps.get(otp_id)
        return replace(o) if o else None

    async def latest_otp(self, recipient: str) -> Otp | None:
        live = [
            o for o in self.otps.values() if o.recipient == recipient and o.superseded_at is None
        ]
        return replace(max(live, key=lambda o: o.created_at)) if live else None

    async def record_otp_attempt(self, otp_id: str, correct: bool, now: datetime) -> Otp | None:
        o = self.otps.get(otp_id)
        if (
            o is None
            or o.verified_at is not None
            or o.superseded_at is not None
            or o.expires_at <= now
            or o.attempts >= o.max_attempts
        ):
            return None
        o.attempts += 1
        if correct:
            o.verified_at = now
            self._event(EventType.OTP_VERIFIED, o.id, otp_data(o), now)
        return replace(o)

    async def purge_otps(self, before: datetime) -> int:
        old = [k for k, o in self.otps.items() if o.expires_at < before]
        for k in old:
            del self.otps[k]
        return len(old)

    async def hub_secret(self, name: str, candidate: str) -> str:
        return self.secrets.setdefault(name, candidate)

    # -- opt-out ----------------------------------------------------------------------

    async def add_opt_out(self, entry: OptOut) -> bool:
        if entry.number in self.opt_outs:
            return False
        self.opt_outs[entry.number] = entry
        return True

    async def remove_opt_out(self, number: str) -> bool:
        return self.opt_outs.pop(number, None) is not None

    async def list_opt_outs(self, *, after: str | None, limit: int) -> list[OptOut]:
        return [self.opt_outs[n] for n in sorted(self.opt_outs) if n > (after or "")][:limit]

    async def create_batch(self, batch: Batch, messages: list[Message]) -> None:
        self.batches[batch.id] = replace(batch, by_status={})
        for m in messages:
            await self.create_message(m)

    async def get_batch(self, batch_id: str) -> Batch | None:
        b = self.batches.get(batch_id)
        if b is None:
            return None
        counts: dict[str, int] = {}
        for m in self.messages.values():
            if m.batch_id == batch_id:
                counts[m.status.value] = counts.get(m.status.value, 0) + 1
        return replace(b, by_status=counts)

    async def stats(self, since: datetime, until: datetime) -> Stats:
        msgs = [m for m in self.messages.values() if since <= m.created_at < until]
        result = Stats({}, {}, {}, {}, 0, 0, 0)
        for m in msgs:
            status = m.status.value
            result.by_status[status] = result.by_status.get(status, 0) + 1
            day = result.by_day.setdefault(m.created_at.date().isoformat(), {})
            day[status] = day.get(status, 0) + 1
            if m.device_id is not None and m.status is not Status.PENDING:
                per = result.by_device.setdefault(m.device_id, {})
                per[status] = per.get(status, 0) + 1
            if m.status is Status.FAILED:
                reason = m.error_code or "unknown"
                result.failure_reasons[reason] = result.failure_reasons.get(reason, 0) + 1
        result.inbound = sum(1 for i in self.inbound.values() if since <= i.created_at < until)
        otps = [o for o in self.otps.values() if since <= o.created_at < until]
        result.otp_sent = len(otps)
        result.otp_verified = sum(1 for o in otps if o.verified_at is not None)
        return result

    async def expire_messages(self, now: datetime) -> list[str]:
        expired = []
        for m in self.messages.values():
            if (
                m.status is Status.PENDING
                and m.expires_at <= now
                and (m.lease_until is None or m.lease_until <= now)
            ):
                m.status, m.error_code, m.failed_at, m.updated_at = (
                    Status.FAILED,
                    "expired",
                    now,
                    now,
                )
                m.error = "no phone sent the message before it expired"
                m.device_id = None
                expired.append(m.id)
                self._message_event(EventType.MESSAGE_FAILED, m, now)
        return expired

    async def recent_affinities(self, limit: int) -> list[tuple[str, str]]:
        newest = sorted(self.affinity.items(), key=lambda kv: kv[1][1], reverse=True)
        return [(r, d) for r, (d, _) in newest[:limit]]

    # -- inbound --------------------------------------------------------------------

    async def store_inbound(self, inbound: Inbound) -> bool:
        key = (inbound.device_id, inbound.local_id)
        if key in self.inbound:
            return False
        inbound.id = inbound.id or new_id()
        self.inbound[key] = replace(inbound)
        self._event(EventType.SMS_RECEIVED, inbound.id, inbound_data(inbound), inbound.created_at)
        return True

    async def list_inbound(self, flt: InboundFilter) -> list[Inbound]:
        rows = [
            i
            for i in self.inbound.values()
            if (flt.sender is None or i.sender == flt.sender)
            and (flt.device_id is None or i.device_id == flt.device_id)
        ]
        return [replace(i) for i in _page(rows, flt.since, flt.after, flt.limit)]

    # -- events and webhooks ----------------------------------------------------------

    def _event(
        self,
        type_: EventType,
        subject: str,
        data: dict[str, Any],
        now: datetime,
        callback_url: str | None = None,
    ) -> None:
        targets = self.subs.targets(type_, callback_url)
        if not targets:
            return
        event = make_event(type_, subject, data, now)
        self.events[event.id] = event
        if self.on_events is not None:
            self.on_events()
        for t in targets:
            d = Delivery(
                id=new_id(),
                event_id=event.id,
                event_type=event.type,
                webhook_id=t.webhook_id,
                url=t.url,
                status=DeliveryStatus.PENDING,
                attempts=0,
                max_attempts=None,
                next_attempt_at=now,
                last_status_code=None,
                last_error=None,
                created_at=now,
                updated_at=now,
                payload=event.payload,
            )
            self.deliveries[d.id] = (d, t.key, subject)

    def _message_event(self, type_: EventType, m: Message, now: datetime) -> None:
        if self.subs.wanted(type_):
            self._event(type_, m.id, message_data(m), now, m.callback_url)

    def _device_events(
        self,
        device: Device,
        battery_before: int | None,
        now: datetime,
        *,
        online: bool = False,
        offline: bool = False,
    ) -> None:
        for t, data in device_events(device, battery_before, online=online, offline=offline):
            self._event(t, device.id, data, now)

    async def create_webhook(self, hook: Webhook) -> None:
        self.webhooks[hook.id] = replace(hook)
        self.subs.set(hook.id, hook.url, hook.events, hook.enabled)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        hook = self.webhooks.get(webhook_id)
        return replace(hook) if hook else None

    async def list_webhooks(self) -> list[Webhook]:
        return [replace(h) for _, h in sorted(self.webhooks.items())]

    async def update_webhook(self, webhook_id: str, now: datetime, **fields: Any) -> Webhook | None:
        if unknown := set(fields) - {"url", "events", "description", "enabled"}:
            raise ValueError(f"cannot update {sorted(unknown)}")
        hook = self.webhooks.get(webhook_id)
        if hook is None:
            return None
        if fields.get("enabled") and not hook.enabled:
            hook.failing_since = hook.disabled_at = hook.disabled_reason = None
            for d, _, _ in self.deliveries.values():
                if d.webhook_id == webhook_id and d.status is DeliveryStatus.PENDING:
                    d.next_attempt_at = now
        for name, value in fields.items():
            setattr(hook, name, frozenset(value) if name == "events" else value)
        hook.updated_at = now
        self.subs.set(hook.id, hook.url, hook.events, hook.enabled)
        return replace(hook)

    async def rotate_webhook_secret(
        self, webhook_id: str, secret: str, previous_until: datetime, now: datetime
    ) -> Webhook | None:
        hook = self.webhooks.get(webhook_id)
        if hook is None:
            return None
        hook.previous_secret, hook.previous_secret_until = hook.secret, previous_until
        hook.secret, hook.updated_at = secret, now
        return replace(hook)

    async def delete_webhook(self, webhook_id: str) -> bool:
        if self.webhooks.pop(webhook_id, None) is None:
            return False
        self.subs.remove(webhook_id)
        self.deliveries = {
            k: v for k, v in self.deliveries.items() if v[0].webhook_id != webhook_id
        }
        return True

    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[Delivery]:
        blocked: set[tuple[str, str]] = set()  # (target, subject) with an older pending one
        claimed: list[Delivery] = []
        for d, target, subject in self.deliveries.values():
            if d.status is not DeliveryStatus.PENDING:
                continue
            key = (target, subject)
            if key in blocked:
                continue
            blocked.add(key)
            hook = self.webhooks.get(d.webhook_id) if d.webhook_id else None
            if d.webhook_id is not None and (hook is None or not hook.enabled):
                continue
            if d.next_attempt_at is not None and d.next_attempt_at <= now:
                claimed.append(d)
        claimed.sort(key=lambda d: d.next_attempt_at or now)
        claimed = claimed[:limit]
        for d in claimed:
            d.next_attempt_at = lease_until
        return [replace(d, history=[]) for d in claimed]

    async def finish_delivery(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        succeeded: bool,
        retry_at: datetime | None,
        default_max_attempts: int,
        disable_after: float,
        lease: datetime | None = None,
    ) -> tuple[DeliveryStatus, bool] | None:
        entry = self.deliveries.get(delivery_id)
        if entry is None:
            return None
        d = entry[0]
        if lease is not None and (
            d.status is not DeliveryStatus.PENDING or d.next_attempt_at != lease
        ):
            return None
        d.attempts += 1
        d.status = next_delivery_status(
            succeeded, retry_at, d.attempts, d.max_attempts or default_max_attempts
        )
        d.history = [*(h for h in d.history if h.attempt != d.attempts), attempt]
        d.next_attempt_at = retry_at if d.status is DeliveryStatus.PENDING else None
        d.last_status_code, d.last_error, d.updated_at = (
            attempt.status_code,
            attempt.error,
            attempt.at,
        )
        hook = self.webhooks.get(d.webhook_id) if d.webhook_id else None
        if hook is None:
            return d.status, False
        if succeeded:
            hook.failing_since = None
            return d.status, False
        hook.failing_since = hook.failing_since or attempt.at
        if not hook.enabled or (attempt.at - hook.failing_since).total_seconds() < disable_after:
            return d.status, False
        hook.enabled, hook.disabled_at, hook.updated_at = False, attempt.at, attempt.at
        hook.disabled_reason = disabled_reason(hook.failing_since)
        self.subs.set(hook.id, hook.url, hook.events, False)
        return d.status, True

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        entry = self.deliveries.get(delivery_id)
        return replace(entry[0], history=list(entry[0].history)) if entry else None

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Delivery]:
        rows = [
            d
            for d, _, _ in self.deliveries.values()
            if d.webhook_id == webhook_id and (status is None or d.status is status)
        ]
        return [replace(d, history=list(d.history)) for d in _page(rows, None, after, limit)]

    async def replay_delivery(self, delivery_id: str, now: datetime) -> Delivery | None:
        entry = self.deliveries.get(delivery_id)
        if entry is None:
            return None
        d = entry[0]
        d.status, d.next_attempt_at, d.updated_at = DeliveryStatus.PENDING, now, now
        d.max_attempts = d.attempts + 1
        return await self.get_delivery(delivery_id)

    async def purge_deliveries(self, before: datetime) -> int:
        old = [
            k
            for k, (d, _, _) in self.deliveries.items()
            if d.status is not DeliveryStatus.PENDING and d.updated_at < before
        ]
        for k in old:
            del self.deliveries[k]
        live = {d.event_id for d, _, _ in self.deliveries.values()}
        self.events = {k: e for k, e in self.events.items() if k in live or e.created_at >= before}
        return len(old)
