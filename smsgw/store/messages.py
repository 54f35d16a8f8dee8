"""A message's way through the hub: stored, offered, accepted, reported, retried, expired.

Every change that must not race is a compare-and-set on the message row (an ``UPDATE``
whose ``WHERE`` states what the caller believes: status, attempt, the phone it is on
offer to), so the database, not any one process, decides who owns a message. On
PostgreSQL a racing node blocks on the row lock, then the ``WHERE`` is checked again on
the committed row and matches nothing; on SQLite the single writer orders them.
Transactions lock rows in one order (messages, attempts, devices, affinity), so nodes do
not deadlock each other.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from smsgw.clock import utcnow
from smsgw.events import EventType
from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Message, MessageFilter, Status
from smsgw.store.rows import MESSAGE_COLUMNS, Row
from smsgw.store.rules import (
    EXPIRED,
    EXPIRED_ERROR,
    MAX_ATTEMPTS,
    after_failure,
    after_release,
    failure_outcome,
    first_offer,
    max_attempts_error,
    offered_to_removed,
    settle_first_offer,
    utc_day,
)
from smsgw.store.sql import (
    Op,
    Params,
    Stmt,
    execute,
    fetch,
    fetchrow,
    fetchval,
    many,
    read,
    write,
)


class Messages(Operations):
    async def create_message(
        self,
        message: Message,
        *,
        offer_to: str | None = None,
        lease_until: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> bool:
        """Insert. With ``offer_to`` the message is stored already on offer to that phone
        (attempt 1, with its attempt row), in the same transaction: one write instead of
        two, and still durable before any command leaves the hub. With ``accepted_at`` as
        well, the phone has already accepted that offer: the message is stored QUEUED,
        owned by it (as ``accept`` would leave it, with its ``message.queued`` event).

        Returns False when ``offer_to`` names a removed phone (checked in the transaction,
        so a concurrent ``delete_device`` is ordered before or after it): with
        ``accepted_at`` nothing is written (the phone's accept is refused), without it the
        message is stored on offer to nobody, or FAILED if it was pinned to that phone
        (``offered_to_removed``). ``message`` is updated to what was stored."""
        if offer_to is None:
            await self._driver.write(lambda: self._insert_message(message))
            return True
        device_id, now = offer_to, utcnow()
        first_offer(message, device_id, lease_until, accepted_at)
        write = self._driver.write(
            lambda: self._insert_offered(message, device_id, accepted_at, now)
        )
        return await settle_first_offer(message, device_id, accepted_at, now, write)

    def _insert_offered(
        self, message: Message, device_id: str, accepted_at: datetime | None, now: datetime
    ) -> Op[bool]:
        # Shared with other inserts, exclusive in delete_device: a removal either waits
        # for this transaction (and then its sweep sees the message) or went first (and
        # is seen below). An advisory lock, not the device row, because the removal locks
        # that row last, after the messages it sweeps.
        yield from self.d.lock_device(device_id, shared=True)
        # The first attempt, unless the phone was removed: the check and the write in one
        # statement (the attempt has no foreign key to wait for the message's row).
        offered = yield execute(
            "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at, "
            "accepted_at) SELECT $1::text, 1, $2::text, $3::timestamptz, $4::timestamptz "
            "WHERE NOT EXISTS (SELECT 1 FROM devices WHERE id = $2 AND revoked_at IS NOT NULL)",
            message.id,
            device_id,
            message.created_at,
            accepted_at,
        )
        if offered == 1:
            yield from self._insert_message(message, accepted_at)
            return True
        if accepted_at is None:  # see create_message
            plain = replace(message)
            offered_to_removed(plain, device_id, now)
            yield from self._insert_message(plain)
            if plain.status is Status.FAILED:
                yield from self._record_event(EventType.MESSAGE_FAILED, plain, now)
        return False

    @read
    def get_message(self, message_id: str, *, with_attempts: bool = False) -> Op[Message | None]:
        row = yield from self._message_row(message_id)
        if row is None:
            return None
        msg = rows.message(row, self.dec)
        if with_attempts:
            attempts = yield fetch(
                "SELECT * FROM message_attempts WHERE message_id = $1 ORDER BY attempt",
                message_id,
            )
            msg.attempts = [rows.attempt(r, self.dec) for r in attempts]
        return msg

    @read
    def list_messages(self, flt: MessageFilter) -> Op[list[Message]]:
        p = Params()
        where = self._page_where(
            p,
            [
                ("status", flt.status.value if flt.status else None),
                ("device_id", flt.device_id),
                ("custom_id", flt.custom_id),
                ("recipient", flt.recipient),
            ],
            flt.since,
            flt.after,
        )
        found = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages {where} "
            f"ORDER BY created_at DESC, id DESC LIMIT {p(flt.limit)}",
            *p.values,
        )
        return [rows.message(r, self.dec) for r in found]

    @read
    def due_messages(self, now: datetime, limit: int) -> Op[list[Message]]:
        """PENDING, not on offer (or the offer's lease ran out), retry time reached, not
        bound to a route (docs/routes.md: phones are never offered those); with the phone
        that last sent to the recipient as a routing hint."""
        found = yield fetch(
            f"SELECT {MESSAGE_COLUMNS}, (SELECT a.device_id FROM recipient_affinity a "
            "WHERE a.recipient = messages.recipient) AS last_device "
            "FROM messages WHERE status = 'PENDING' AND route_id IS NULL "
            "AND (lease_until IS NULL OR lease_until <= $1) "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= $1) "
            "ORDER BY priority DESC, created_at, id LIMIT $2",
            now,
            limit,
        )
        messages = []
        for r in found:
            msg = rows.message(r, self.dec)
            msg.last_device = r["last_device"]
            messages.append(msg)
        return messages

    @read
    def owned_unfinished(self, device_id: str) -> Op[list[Message]]:
        """QUEUED messages this device owns (accepted, no radio result yet)."""
        return (yield from self._owned(device_id))

    @write
    def offer(
        self,
        message_id: str,
        device_id: str,
        expected_attempt: int,
        now: datetime,
        lease_until: datetime,
    ) -> Op[bool]:
        """CAS: PENDING, attempt == expected, no live lease -> on offer to ``device_id``
        under attempt ``expected + 1``."""
        attempt = yield fetchval(
            "UPDATE messages SET attempt = attempt + 1, device_id = $1, lease_until = $2, "
            "updated_at = $3 WHERE id = $4 AND status = 'PENDING' AND attempt = $5 "
            "AND (lease_until IS NULL OR lease_until <= $3) RETURNING attempt",
            device_id,
            lease_until,
            now,
            message_id,
            expected_attempt,
        )
        if attempt is None:
            return False
        yield execute(
            "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at) "
            "VALUES ($1, $2, $3, $4)",
            message_id,
            attempt,
            device_id,
            now,
        )
        return True

    @write
    def release_offer(
        self,
        message_id: str,
        device_id: str,
        attempt: int,
        outcome: str,
        now: datetime,
        retry_at: datetime | None,
        max_attempts: int,
    ) -> Op[Status | None]:
        """The offer ended without ownership (timeout, disconnect). Returns the new status
        (PENDING, or FAILED after ``max_attempts``), or None if the offer was no longer
        current (e.g. the phone's accept won the race)."""
        status = after_release(attempt, max_attempts)
        current = "WHERE id = $3 AND status = 'PENDING' AND attempt = $4 AND device_id = $5"
        if status is Status.FAILED:
            row = yield fetchrow(
                self._returning(
                    "UPDATE messages SET status = 'FAILED', device_id = NULL, "
                    "lease_until = NULL, error_code = $6, error = $1, failed_at = $2, "
                    f"updated_at = $2 {current} RETURNING",
                    EventType.MESSAGE_FAILED,
                ),
                max_attempts_error(attempt, outcome),
                now,
                message_id,
                attempt,
                device_id,
                MAX_ATTEMPTS,
            )
        else:
            row = yield fetchrow(
                "UPDATE messages SET device_id = NULL, lease_until = NULL, "
                f"next_attempt_at = $1, updated_at = $2 {current} RETURNING id",
                retry_at,
                now,
                message_id,
                attempt,
                device_id,
            )
        if row is None:
            return None
        yield self._end_attempt(message_id, attempt, outcome, now)
        if status is Status.FAILED:
            yield from self._message_event(EventType.MESSAGE_FAILED, row, now)
        return status

    @write
    def accept(self, message_id: str, device_id: str, attempt: int, now: datetime) -> Op[bool]:
        """CAS: the phone becomes the owner if the message is on offer to it under this
        attempt (or it already owns it under this attempt: accept is idempotent)."""
        row = yield fetchrow(
            self._returning(
                "UPDATE messages SET status = 'QUEUED', lease_until = NULL, queued_at = $1, "
                "updated_at = $1 WHERE id = $2 AND status = 'PENDING' AND attempt = $3 "
                "AND device_id = $4 RETURNING",
                EventType.MESSAGE_QUEUED,
            ),
            now,
            message_id,
            attempt,
            device_id,
        )
        if row is not None:
            yield execute(
                "UPDATE message_attempts SET accepted_at = $1 "
                "WHERE message_id = $2 AND attempt = $3",
                now,
                message_id,
                attempt,
            )
            yield from self._message_event(EventType.MESSAGE_QUEUED, row, now)
            return True
        owned = yield fetchval(
            "SELECT 1 FROM messages WHERE id = $1 AND device_id = $2 AND attempt = $3 "
            "AND status IN ('QUEUED', 'SENT', 'DELIVERED')",
            message_id,
            device_id,
            attempt,
        )
        return owned is not None

    @write
    def app_pull(
        self, device_id: str, now: datetime, *, pinned: int, limit: int
    ) -> Op[tuple[list[tuple[str, int]], list[Message]]]:
        """An app phone's pull (docs/smsgate-app.md), which is its accept. In one
        transaction: every message on offer to it becomes its own (the compare-and-set of
        ``accept``: still PENDING, still on offer to it under a live lease), then up to
        ``pinned`` due messages pinned to it that nobody has on offer (a phone without a
        stream is offered nothing: its pull is the offer; ``pinned`` counts what it already
        holds unsent). Returns the (id, attempt) of
        the messages it took now (their offers end) and what it holds and has not yet
        taken in hand ("Processed"), at most ``limit``, for the answer."""
        taken: list[Row] = yield fetch(
            self._returning(
                "UPDATE messages SET status = 'QUEUED', lease_until = NULL, queued_at = $2, "
                "updated_at = $2 WHERE device_id = $1 AND status = 'PENDING' "
                "AND lease_until > $2 RETURNING",
                EventType.MESSAGE_QUEUED,
            ),
            device_id,
            now,
        )
        if taken:
            yield many(
                "UPDATE message_attempts SET accepted_at = $1 "
                "WHERE message_id = $2 AND attempt = $3",
                [(now, r["id"], r["attempt"]) for r in taken],
            )
        if pinned > 0:
            # What it holds unsent counts against the limit (its in-flight and its quota).
            holding = yield fetchval(
                "SELECT count(*) FROM messages WHERE device_id = $1 AND status = 'QUEUED'",
                device_id,
            )
            pinned -= int(holding)
        if pinned > 0:
            due: list[Row] = yield fetch(
                self._returning(
                    "UPDATE messages SET status = 'QUEUED', device_id = $1, "
                    "attempt = attempt + 1, lease_until = NULL, queued_at = $2, updated_at = $2 "
                    "WHERE id "
                    + self.d.in_picked(
                        "SELECT id FROM messages WHERE status = 'PENDING' "
                        "AND pinned_device_id = $1 AND (lease_until IS NULL OR lease_until <= $2) "
                        "AND (next_attempt_at IS NULL OR next_attempt_at <= $2) "
                        "AND expires_at > $2 "
                        f"ORDER BY priority DESC, created_at LIMIT $3{self.d.skip_locked()}"
                    )
                    + " AND status = 'PENDING' RETURNING",
                    EventType.MESSAGE_QUEUED,
                ),
                device_id,
                now,
                pinned,
            )
            if due:
                yield many(
                    "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at, "
                    "accepted_at) VALUES ($1, $2, $3, $4, $4)",
                    [(r["id"], r["attempt"], device_id, now) for r in due],
                )
            taken += due
        for r in taken:
            yield from self._message_event(EventType.MESSAGE_QUEUED, r, now)
        held = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages{self.d.indexed_by('messages_owned')} "
            "WHERE device_id = $1 AND status = 'QUEUED' AND processed_at IS NULL "
            "ORDER BY priority DESC, created_at LIMIT $2",
            device_id,
            limit,
        )
        return [(r["id"], r["attempt"]) for r in taken], [rows.message(r, self.dec) for r in held]

    @write
    def mark_processed(self, message_id: str, device_id: str, now: datetime) -> Op[bool]:
        """An app phone took a message it owns in hand: its pulls stop returning it."""
        n = yield execute(
            "UPDATE messages SET processed_at = $3 WHERE id = $1 AND device_id = $2 "
            "AND status IN ('QUEUED', 'SENT', 'DELIVERED', 'FAILED') AND processed_at IS NULL",
            message_id,
            device_id,
            now,
        )
        return bool(n == 1)

    @write
    def mark_sent(self, message_id: str, device_id: str, now: datetime) -> Op[str | None]:
        """QUEUED -> SENT for the owner; returns the recipient, or None if nothing changed."""
        row = yield fetchrow(
            self._returning(
                "UPDATE messages SET status = 'SENT', sent_at = $1, updated_at = $1, "
                "error_code = NULL, error = NULL "
                "WHERE id = $2 AND device_id = $3 AND status = 'QUEUED' RETURNING",
                EventType.MESSAGE_SENT,
            ),
            now,
            message_id,
            device_id,
        )
        if row is None:
            return None
        yield self._end_attempt(message_id, row["attempt"], "sent", now)
        yield self._count_sent(device_id, now)
        yield execute(
            "INSERT INTO recipient_affinity (recipient, device_id, updated_at) "
            "VALUES ($1, $2, $3) ON CONFLICT (recipient) DO UPDATE SET "
            "device_id = excluded.device_id, updated_at = excluded.updated_at",
            row["recipient"],
            device_id,
            now,
        )
        yield from self._message_event(EventType.MESSAGE_SENT, row, now)
        return str(row["recipient"])

    def _count_sent(self, device_id: str, now: datetime) -> Stmt:
        return execute(
            "UPDATE devices SET sent_day = $1, "
            "sent_today = CASE WHEN sent_day = $1 THEN sent_today + 1 ELSE 1 END WHERE id = $2",
            utc_day(now),
            device_id,
        )

    @write
    def mark_delivered(self, message_id: str, device_id: str, now: datetime) -> Op[bool]:
        # Locked: whether it was already counted as sent must be read from the row this
        # transaction then changes, not from an older snapshot.
        row = yield fetchrow(
            "SELECT attempt, sent_at FROM messages WHERE id = $1 AND device_id = $2 "
            f"AND status IN ('QUEUED', 'SENT'){self.d.for_update}",
            message_id,
            device_id,
        )
        if row is None:
            return False
        # A delivery report may overtake the sent report; it implies sent.
        updated = yield fetchrow(
            self._returning(
                "UPDATE messages SET status = 'DELIVERED', delivered_at = $1, "
                "sent_at = COALESCE(sent_at, $1), updated_at = $1, error_code = NULL, "
                "error = NULL WHERE id = $2 RETURNING",
                EventType.MESSAGE_DELIVERED,
            ),
            now,
            message_id,
        )
        yield self._end_attempt(message_id, row["attempt"], "sent", now)
        if row["sent_at"] is None:
            yield self._count_sent(device_id, now)
        yield from self._message_event(EventType.MESSAGE_DELIVERED, updated, now)
        return True

    @write
    def mark_failed(
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
    ) -> Op[Status | None]:
        """A phone's failure report, for an offer it declined or a message it owns.
        Retryable and attempts left -> PENDING again; otherwise FAILED. None if the
        phone had no claim on the message (a stale report)."""
        row = yield fetchrow(
            "SELECT status, attempt FROM messages WHERE id = $1 AND device_id = $2"
            f"{self.d.for_update}",
            message_id,
            device_id,
        )
        if row is None:
            return None
        current = row["attempt"]
        status = after_failure(
            Status(row["status"]),
            current,
            attempt,
            retryable=retryable,
            max_attempts=max_attempts,
        )
        if status is None:
            return None
        if status is Status.PENDING:
            yield execute(
                "UPDATE messages SET status = 'PENDING', device_id = NULL, "
                "lease_until = NULL, queued_at = NULL, next_attempt_at = $1, "
                "error_code = $2, error = $3, updated_at = $4 WHERE id = $5",
                retry_at,
                error_code,
                error,
                now,
                message_id,
            )
        else:
            final = yield fetchrow(
                self._returning(
                    "UPDATE messages SET status = 'FAILED', lease_until = NULL, "
                    "error_code = $1, error = $2, failed_at = $3, updated_at = $3 "
                    "WHERE id = $4 RETURNING",
                    EventType.MESSAGE_FAILED,
                ),
                error_code,
                error,
                now,
                message_id,
            )
        outcome = failure_outcome(retryable)
        yield self._end_attempt(message_id, current, outcome, now, error_code, error)
        if status is Status.FAILED:
            yield from self._message_event(EventType.MESSAGE_FAILED, final, now)
        return status

    @write
    def cancel_message(self, message_id: str, now: datetime) -> Op[Message | None]:
        """CAS: PENDING (even while on offer) -> CANCELLED. Returns the message as it then
        stands (check its status: a message a phone owns is not cancelled), or None if
        unknown. A phone's later accept of the old offer fails, because it is no longer
        PENDING."""
        row = yield fetchrow(
            "UPDATE messages SET status = 'CANCELLED', cancelled_at = $1, "
            "lease_until = NULL, updated_at = $1 WHERE id = $2 AND status = 'PENDING' "
            f"RETURNING {MESSAGE_COLUMNS}",
            now,
            message_id,
        )
        if row is not None:
            yield self._end_attempt(message_id, row["attempt"], "cancelled", now)
            yield from self._message_event(EventType.MESSAGE_CANCELLED, row, now)
        else:
            row = yield from self._message_row(message_id)
        return rows.message(row, self.dec) if row is not None else None

    @write
    def expire_messages(self, now: datetime) -> Op[list[str]]:
        """PENDING messages past ``expires_at`` -> FAILED ``expired``; returns their ids."""
        # SKIP LOCKED: a row another node is expiring, offering or cancelling right now is
        # left alone (the next sweep sees it), and two sweeps never wait on each other's
        # row sets, so they cannot deadlock.
        expired: list[Row] = yield fetch(
            self._returning(
                "UPDATE messages SET status = 'FAILED', error_code = $2, device_id = NULL, "
                "error = $3, failed_at = $1, updated_at = $1 WHERE id IN ("
                "SELECT id FROM messages WHERE status = 'PENDING' AND expires_at <= $1 "
                "AND (lease_until IS NULL OR lease_until <= $1) "
                f"{self.d.skip_locked(order='id')}) AND status = 'PENDING' RETURNING",
                EventType.MESSAGE_FAILED,
            ),
            now,
            EXPIRED,
            EXPIRED_ERROR,
        )
        for r in expired:
            yield from self._message_event(EventType.MESSAGE_FAILED, r, now)
        return [r["id"] for r in expired]

    @read
    def recent_affinities(self, limit: int) -> Op[list[tuple[str, str]]]:
        """(recipient, device_id) of the most recent sends, newest first (cache warm-up)."""
        found = yield fetch(
            "SELECT recipient, device_id FROM recipient_affinity ORDER BY updated_at DESC LIMIT $1",
            limit,
        )
        return [(r[0], r[1]) for r in found]
