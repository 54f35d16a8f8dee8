"""What every group of the store's operations shares: the driver that runs them, the
dialect they ask for engine differences, and the event outbox their state changes write to.

An event (and one delivery per subscribed target) is written in the transaction of the
change that raised it, so a crash can never lose one. Who subscribes is kept in memory
(:class:`~smsgw.events.Subscriptions`), so a change nobody listens to writes and reads
nothing extra. A message's own ``callback_url`` is read from the row the change returns,
so it is honoured whichever node stored the message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from smsgw.clock import new_id
from smsgw.events import (
    Event,
    EventType,
    Subscriptions,
    Target,
    device_events,
    make_event,
    message_data,
)
from smsgw.secretbox import SecretBox
from smsgw.store import rows
from smsgw.store.dialect import Dialect
from smsgw.store.records import Message
from smsgw.store.rows import MESSAGE_COLUMNS, MESSAGE_FIELDS, Decoder, Row
from smsgw.store.sql import (
    NOTHING,
    Driver,
    Op,
    Params,
    Stmt,
    after_commit,
    execute,
    fetch,
    fetchrow,
    many,
)


@functools.cache
def _insert_delivery(key_share: str) -> str:
    # A webhook removed a moment ago (by another node, or by a write that committed just
    # before this one) may still be in this node's cache: its delivery is not written,
    # and the change that raised the event stands. The key-share lock waits for a removal
    # in progress and then sees the webhook gone, where the foreign key check alone would
    # fail the whole change.
    return (
        "INSERT INTO webhook_deliveries (id, event_id, target, webhook_id, subject, url, "
        "next_attempt_at, created_at, updated_at) "
        "SELECT $1, $2, $3, $4::text, $5, $6, $7::timestamptz, $7::timestamptz, "
        "$7::timestamptz WHERE $4::text IS NULL OR EXISTS "
        f"(SELECT 1 FROM webhooks WHERE id = $4::text{key_share})"
    )


_INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(MESSAGE_FIELDS) + 1))})"
)


_BRIEF = "id, recipient, attempt, callback_url"
_RETURNING: dict[tuple[str, bool], str] = {}


class Operations:
    """The base of the operation groups (``messages.py``, ``devices.py``, ...)."""

    _driver: Driver
    d: Dialect
    dec: Decoder
    box: SecretBox  # seals a secret column's value on its way in; ``dec.secret`` opens it
    _subs: Subscriptions
    # Called on the event loop after a write that queued webhook deliveries has
    # committed (the webhook worker sets it): a hint to look now, not at the next poll.
    on_events: Callable[[], None] | None = None

    def _events_committed(self) -> None:
        if self.on_events is not None:
            self.on_events()

    # -- the event outbox -------------------------------------------------------------

    # The three below return ``NOTHING`` when nobody wants the event: on the hot path a
    # sub-operation that does nothing still costs a generator.

    def _event(
        self, type_: EventType, subject: str, data: dict[str, Any], now: datetime
    ) -> Op[None]:
        targets = self._subs.targets(type_)
        if not targets:
            return NOTHING
        return self._emit(make_event(type_, subject, data, now), targets, data.get("device_id"))

    def _returning(self, sql: str, type_: EventType) -> str:
        """``sql``, a transition ending in ``RETURNING``, with what it returns: the whole
        message when a webhook wants ``type_`` (its payload is made of it), else the few
        columns the operations read and the message's own ``callback_url`` (returning
        every column of every transition cost the SQLite writer 8 us a dispatch). Each
        text is built once, so the dialect's and sqlite3's caches find it at once."""
        key = (sql, self._subs.wanted(type_))
        text = _RETURNING.get(key)
        if text is None:
            text = _RETURNING[key] = f"{sql} {MESSAGE_COLUMNS if key[1] else _BRIEF}"
        return text

    def _message_event(self, type_: EventType, row: Row, now: datetime) -> Op[None]:
        """``row``: the message as this transaction left it (``_returning``'s columns)."""
        targets = self._subs.targets(type_, row["callback_url"])
        return self._row_event(type_, row, now, targets) if targets else NOTHING

    def _row_event(self, type_: EventType, row: Row, now: datetime, to: list[Target]) -> Op[None]:
        if len(row) < len(MESSAGE_FIELDS):  # brief: read the rest (see _returning)
            whole = yield from self._message_row(row["id"])
            assert whole is not None  # this transaction just changed it
            row = whole
        msg = rows.message(row, self.dec)
        yield from self._emit(make_event(type_, msg.id, message_data(msg), now), to, msg.device_id)

    def _record_event(self, type_: EventType, msg: Message, now: datetime) -> Op[None]:
        """An event of a message this transaction stores as ``msg`` (no row to read)."""
        targets = self._subs.targets(type_, msg.callback_url)
        if not targets:
            return NOTHING
        return self._emit(make_event(type_, msg.id, message_data(msg), now), targets, msg.device_id)

    def _emit(self, event: Event, targets: list[Target], device_id: str | None) -> Op[None]:
        """``event``, delivered to the ``targets`` that want ``device_id``'s events."""
        targets = [t for t in targets if t.wants(device_id)]
        if not targets:
            return
        yield execute(
            "INSERT INTO events (id, type, subject, created_at, payload) "
            "VALUES ($1, $2, $3, $4, $5)",
            event.id,
            event.type,
            event.subject,
            event.created_at,
            event.payload,
        )
        yield many(
            _insert_delivery(self.d.for_key_share),
            [
                (new_id(), event.id, t.key, t.webhook_id, event.subject, t.url, event.created_at)
                for t in targets
            ],
        )
        yield after_commit(self._events_committed)

    def _battery_before(self, device_id: str, types: list[EventType]) -> Op[tuple[Any] | None]:
        """The battery level before this report, when a device event may be wanted (the
        row is locked so a racing report cannot make both see the same "before")."""
        if not any(self._subs.wanted(t) for t in types):
            return None
        row = yield fetchrow(
            f"SELECT battery FROM devices WHERE id = $1{self.d.for_update}", device_id
        )
        return (row["battery"],) if row is not None else None

    def _device_events(
        self, row: Row, battery_before: int | None, types: list[EventType], now: datetime
    ) -> Op[None]:
        device = rows.device(row, self.dec)
        online = EventType.DEVICE_ONLINE in types
        offline = EventType.DEVICE_OFFLINE in types
        for t, data in device_events(device, battery_before, online=online, offline=offline):
            yield from self._event(t, device.id, data, now)

    # -- message writes more than one group makes ---------------------------------------

    def _insert_message(self, m: Message, accepted_at: datetime | None = None) -> Op[None]:
        """The message (with ``accepted_at``: as its phone's accept left it)."""
        yield execute(_INSERT_MESSAGE, *rows.message_values(m))
        if accepted_at is not None:
            yield from self._record_event(EventType.MESSAGE_QUEUED, m, accepted_at)

    def _end_attempt(
        self,
        message_id: str,
        attempt: int,
        outcome: str,
        now: datetime,
        error_code: str | None = None,
        error: str | None = None,
    ) -> Stmt:
        """Ends the attempt (a statement to yield, not a sub-operation: one less
        generator on the hot path)."""
        return execute(
            "UPDATE message_attempts SET ended_at = $1, outcome = $2, error_code = $3, "
            "error = $4 WHERE message_id = $5 AND attempt = $6 AND ended_at IS NULL",
            now,
            outcome,
            error_code,
            error,
            message_id,
            attempt,
        )

    def _message_row(self, message_id: str) -> Op[Row | None]:
        row: Row | None = yield fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
        )
        return row

    def _owned(self, device_id: str) -> Op[list[Message]]:
        """What the phone owns: QUEUED, accepted, no radio result yet."""
        found = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages{self.d.indexed_by('messages_owned')} "
            "WHERE device_id = $1 AND status = 'QUEUED'",
            device_id,
        )
        return [rows.message(r, self.dec) for r in found]

    @staticmethod
    def _page_where(
        p: Params,
        equals: list[tuple[str, Any]],
        since: datetime | None,
        after: tuple[datetime, str] | None,
    ) -> str:
        """WHERE clause of a newest-first keyset page: equality filters, a lower time
        bound, and the (created_at, id) cursor of the previous page."""
        where = [f"{column} = {p(value)}" for column, value in equals if value is not None]
        if since is not None:
            where.append(f"created_at >= {p(since)}")
        if after is not None:
            where.append(f"(created_at, id) < ({p(after[0])}, {p(after[1])})")
        return ("WHERE " + " AND ".join(where)) if where else ""
