"""Webhook endpoints and the deliveries of the event outbox to them.

Events are written by the state changes themselves (``operations.py``); here they are
claimed by the delivery worker, recorded attempt by attempt, retried, given up on and
replayed. The in-memory subscription cache follows each change to the endpoints once it
has committed (``after_commit``), and, on PostgreSQL, every other node's cache through
``NOTIFY``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Delivery, DeliveryAttempt, DeliveryStatus, Webhook
from smsgw.store.rows import DELIVERY_COLUMNS
from smsgw.store.rules import disabled_reason, next_delivery_status, should_disable
from smsgw.store.sql import Op, Params, after_commit, execute, fetch, fetchrow, read, write

_UPDATABLE = frozenset({"url", "events", "description", "enabled"})


class Webhooks(Operations):
    @write
    def create_webhook(self, hook: Webhook) -> Op[None]:
        yield from self._insert_webhook(hook)

    def _insert_webhook(self, hook: Webhook) -> Op[None]:
        yield execute(
            "INSERT INTO webhooks (id, url, events, description, enabled, secret, "
            "created_at, updated_at, format, event_name, device_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            hook.id,
            hook.url,
            " ".join(sorted(hook.events)),
            hook.description,
            hook.enabled,
            self.box.seal(hook.secret),
            hook.created_at,
            hook.updated_at,
            hook.format,
            hook.event_name,
            hook.device_id,
        )
        yield from self.d.webhooks_changed()
        yield after_commit(lambda: self._subs.put(hook))

    @write
    def put_smsgate_webhook(self, hook: Webhook) -> Op[Webhook | None]:
        """Create or replace (url, event, device) a webhook of SMSGate's API by its id;
        None when the id is taken by a webhook of smsgw's own API."""
        row = yield fetchrow(
            f"SELECT format FROM webhooks WHERE id = $1{self.d.for_update}", hook.id
        )
        if row is None:
            yield from self._insert_webhook(hook)
            return hook
        if row["format"] != hook.format:
            return None
        new = yield fetchrow(
            "UPDATE webhooks SET url = $2, events = $3, event_name = $4, device_id = $5, "
            "updated_at = $6 WHERE id = $1 RETURNING *",
            hook.id,
            hook.url,
            " ".join(sorted(hook.events)),
            hook.event_name,
            hook.device_id,
            hook.updated_at,
        )
        stored = rows.webhook(new, self.dec)
        yield from self.d.webhooks_changed()
        yield after_commit(lambda: self._subs.put(stored))
        return stored

    @read
    def get_webhook(self, webhook_id: str) -> Op[Webhook | None]:
        row = yield fetchrow("SELECT * FROM webhooks WHERE id = $1", webhook_id)
        return rows.webhook(row, self.dec) if row else None

    @read
    def list_webhooks(self) -> Op[list[Webhook]]:
        found = yield fetch("SELECT * FROM webhooks ORDER BY id")
        return [rows.webhook(r, self.dec) for r in found]

    @write
    def update_webhook(
        self, /, webhook_id: str, now: datetime, **fields: Any
    ) -> Op[Webhook | None]:
        """Set url/events/description/enabled. Enabling clears the failure record and
        makes the endpoint's pending deliveries due at once."""
        if unknown := set(fields) - _UPDATABLE:
            raise ValueError(f"cannot update {sorted(unknown)}")
        row = yield fetchrow(
            f"SELECT enabled FROM webhooks WHERE id = $1{self.d.for_update}", webhook_id
        )
        if row is None:
            return None
        values = dict(fields)
        if "events" in values:
            values["events"] = " ".join(sorted(values["events"]))
        if "enabled" in values:
            values["enabled"] = bool(values["enabled"])
            if values["enabled"] and not self.dec.flag(row["enabled"]):
                # Back on: a clean record, and what waited for it goes out now.
                values.update(failing_since=None, disabled_at=None, disabled_reason=None)
                yield execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = $1 "
                    "WHERE webhook_id = $2 AND status = 'pending'",
                    now,
                    webhook_id,
                )
        p = Params(webhook_id, now)
        # Column names come from the allow-list above and fixed names.
        sets = "".join(f", {k} = {p(v)}" for k, v in values.items())
        new = yield fetchrow(
            f"UPDATE webhooks SET updated_at = $2{sets} WHERE id = $1 RETURNING *", *p.values
        )
        hook = rows.webhook(new, self.dec)
        yield from self.d.webhooks_changed()
        yield after_commit(lambda: self._subs.put(hook))
        return hook

    @write
    def rotate_webhook_secret(
        self, webhook_id: str, secret: str, previous_until: datetime, now: datetime
    ) -> Op[Webhook | None]:
        """The new secret signs from now on; the current one also signs until
        ``previous_until``."""
        row = yield fetchrow(
            "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $1, "
            "secret = $2, updated_at = $3 WHERE id = $4 RETURNING *",
            previous_until,
            self.box.seal(secret),
            now,
            webhook_id,
        )
        return rows.webhook(row, self.dec) if row else None

    @write
    def delete_webhook(self, webhook_id: str) -> Op[bool]:
        """Remove it with its deliveries."""
        n = yield execute("DELETE FROM webhooks WHERE id = $1", webhook_id)
        yield from self.d.webhooks_changed()
        yield after_commit(lambda: self._subs.remove(webhook_id))
        return bool(n == 1)

    # -- deliveries -----------------------------------------------------------------------

    @write
    def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> Op[list[Delivery]]:
        """Due pending deliveries of enabled endpoints (and callbacks), leased until
        ``lease_until`` so no other worker takes them; per target and subject only the
        oldest pending one, so one message's events arrive in order."""
        # Workers on several nodes claim at once: SKIP LOCKED gives each delivery to one
        # of them, and the lease written in the same transaction keeps it (and, through
        # the "oldest pending" rule, its subject's later events) from the others until
        # the lease runs out.
        found = yield fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
            "JOIN events e ON e.id = d.event_id "
            "LEFT JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE d.status = 'pending' AND d.next_attempt_at <= $1 "
            "AND (d.webhook_id IS NULL OR w.enabled = TRUE) "
            "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p "
            "  WHERE p.status = 'pending' AND p.target = d.target "
            "  AND p.subject = d.subject AND p.seq < d.seq) "
            f"ORDER BY d.next_attempt_at, d.seq LIMIT $2{self.d.skip_locked('d')}",
            now,
            limit,
        )
        if found:
            yield execute(
                f"UPDATE webhook_deliveries SET next_attempt_at = $1 "
                f"WHERE id {self.d.any_text('$2')}",
                lease_until,
                self.d.text_list([r["id"] for r in found]),
            )
        return [rows.delivery(r, self.dec) for r in found]

    @write
    def finish_delivery(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        succeeded: bool,
        retry_at: datetime | None,
        default_max_attempts: int,
        disable_after: float,
        lease: datetime | None = None,
    ) -> Op[tuple[DeliveryStatus, bool] | None]:
        """Record an attempt, if the delivery is still pending under ``lease`` (the lease
        its claim set: a worker whose lease ran out, and whose delivery another worker
        took over meanwhile, records nothing and gets None). Failed with attempts left
        and ``retry_at`` -> pending again; otherwise dead. A webhook failing without a
        success for ``disable_after`` seconds is disabled. Returns the delivery's new
        status and whether the webhook was just disabled; None if the delivery is gone."""
        at = attempt.at
        row = yield fetchrow(
            "SELECT attempts, max_attempts, webhook_id, status, next_attempt_at "
            f"FROM webhook_deliveries WHERE id = $1{self.d.for_update}",
            delivery_id,
        )
        if row is None or (
            lease is not None
            and (row["status"] != "pending" or self.dec.dt(row["next_attempt_at"]) != lease)
        ):
            return None
        n = row["attempts"] + 1
        status = next_delivery_status(
            succeeded, retry_at, n, row["max_attempts"] or default_max_attempts
        )
        yield execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, "
            "duration_ms) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (delivery_id, attempt) DO UPDATE SET at = excluded.at, "
            "status_code = excluded.status_code, error = excluded.error, "
            "duration_ms = excluded.duration_ms",
            delivery_id,
            n,
            at,
            attempt.status_code,
            attempt.error,
            attempt.duration_ms,
        )
        yield execute(
            "UPDATE webhook_deliveries SET attempts = $1, status = $2, next_attempt_at = $3, "
            "last_status_code = $4, last_error = $5, updated_at = $6 WHERE id = $7",
            n,
            status.value,
            retry_at if status is DeliveryStatus.PENDING else None,
            attempt.status_code,
            attempt.error,
            at,
            delivery_id,
        )
        hook_id = row["webhook_id"]
        if hook_id is None:
            return status, False
        if succeeded:
            yield execute(
                "UPDATE webhooks SET failing_since = NULL "
                "WHERE id = $1 AND failing_since IS NOT NULL",
                hook_id,
            )
            return status, False
        hook = yield fetchrow(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 "
            "RETURNING failing_since, enabled",
            at,
            hook_id,
        )
        if hook is None or not self.dec.flag(hook["enabled"]):
            return status, False
        failing_since = self.dec.req_dt(hook["failing_since"])
        if not should_disable(failing_since, at, disable_after):
            return status, False
        yield execute(
            "UPDATE webhooks SET enabled = FALSE, disabled_at = $1, disabled_reason = $2, "
            "updated_at = $1 WHERE id = $3",
            at,
            disabled_reason(failing_since),
            hook_id,
        )
        yield from self.d.webhooks_changed()
        yield after_commit(lambda: self._subs.remove(hook_id))
        return status, True

    @read
    def get_delivery(self, delivery_id: str) -> Op[Delivery | None]:
        """With its attempt history."""
        found = yield from self._deliveries("WHERE d.id = $1", [delivery_id])
        return found[0] if found else None

    @read
    def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Op[list[Delivery]]:
        """Newest first, with attempt histories; ``after`` is the keyset cursor."""
        p = Params(webhook_id)
        where = ["d.webhook_id = $1"]
        if status is not None:
            where.append(f"d.status = {p(status.value)}")
        if after is not None:
            where.append(f"(d.created_at, d.id) < ({p(after[0])}, {p(after[1])})")
        return (
            yield from self._deliveries(
                "WHERE "
                + " AND ".join(where)
                + f" ORDER BY d.created_at DESC, d.id DESC LIMIT {p(limit)}",
                p.values,
            )
        )

    @read
    def subject_deliveries(self, subject: str, limit: int = 100) -> Op[list[Delivery]]:
        """What was sent about one message (or phone, received SMS...), oldest first."""
        return (
            yield from self._deliveries(
                "WHERE d.subject = $1 ORDER BY d.created_at, d.id LIMIT $2", [subject, limit]
            )
        )

    def _deliveries(self, tail: str, args: list[Any]) -> Op[list[Delivery]]:
        found = yield fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
            f"JOIN events e ON e.id = d.event_id {tail}",
            *args,
        )
        deliveries = [rows.delivery(r, self.dec) for r in found]
        by_id = {d.id: d for d in deliveries}
        if by_id:
            attempts = yield fetch(
                f"SELECT * FROM webhook_attempts WHERE delivery_id {self.d.any_text('$1')} "
                "ORDER BY attempt",
                self.d.text_list(list(by_id)),
            )
            rows.add_history(by_id, attempts, self.dec)
        return deliveries

    async def replay_delivery(self, delivery_id: str, now: datetime) -> Delivery | None:
        """Send it once more, now (a dead delivery gets one more attempt)."""
        if not await self._driver.write(lambda: self._replay(delivery_id, now)):
            return None
        return await self.get_delivery(delivery_id)

    def _replay(self, delivery_id: str, now: datetime) -> Op[int]:
        n: int = yield execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, "
            "max_attempts = attempts + 1, updated_at = $1 WHERE id = $2",
            now,
            delivery_id,
        )
        return n

    @write
    def purge_deliveries(self, before: datetime) -> Op[int]:
        """Forget finished deliveries last changed before ``before`` (and their events)."""
        n: int = yield execute(
            "DELETE FROM webhook_deliveries WHERE status != 'pending' AND updated_at < $1",
            before,
        )
        yield execute(
            "DELETE FROM events WHERE created_at < $1 AND NOT EXISTS "
            "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id)",
            before,
        )
        return n
