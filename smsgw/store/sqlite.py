"""SQLite store (the embedded default): one writer thread with group commit.

WAL journal and ``synchronous=FULL`` by default, so every state change is on disk before
the hub acts on it. Writes are functions run on a dedicated writer thread: it takes every
write waiting in its queue, runs them in one ``BEGIN IMMEDIATE`` transaction and commits
them together, so one fsync covers a whole batch (group commit) while a failing write
still rolls back alone (``_apply``). Reads run on a second thread with their own
connection (WAL readers never wait for the writer). The event loop only ever awaits
futures, never the disk.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from smsgw.clock import iso, new_id, utcnow
from smsgw.events import (
    Event,
    EventType,
    Subscriptions,
    Target,
    device_event_types,
    device_events,
    inbound_data,
    make_event,
    message_data,
    otp_data,
)
from smsgw.store import rows as records
from smsgw.store.base import (
    DEVICE_REMOVED,
    DEVICE_REMOVED_ERROR,
    ApiKey,
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
    offered_to_removed,
    settle_first_offer,
)
from smsgw.store.migrations import load_migrations
from smsgw.store.rows import DELIVERY_COLUMNS, MESSAGE_COLUMNS, SQLITE

T = TypeVar("T")

# Writes per transaction at most: bounds the latency one batch adds to the next.
MAX_BATCH = 512


def _day(now: datetime) -> str:
    return now.date().isoformat()


class _Writer(threading.Thread):
    """Runs queued write functions in batches, one transaction (one fsync) per batch."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(name="smsgw-sqlite-writer", daemon=True)
        self._connect = connect
        self.jobs: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self.batches = 0
        self.writes = 0

    def run(self) -> None:
        db = self._connect()
        try:
            while True:
                first = self.jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                self._run_batch(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _run_batch(
        self,
        db: sqlite3.Connection,
        batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]],
    ) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            outcomes = _apply(db, batch)
            db.execute("COMMIT")
        except Exception as exc:
            # The commit itself failed (disk full, I/O error): nothing of the batch is
            # durable, so every caller gets the error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            outcomes = [(fut, None, exc) for _, fut in batch]
        self.batches += 1
        self.writes += len(batch)
        loop = batch[0][1].get_loop()
        loop.call_soon_threadsafe(_deliver, outcomes)


def _apply(
    db: sqlite3.Connection,
    batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]],
) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
    """Run a batch's writes inside the open transaction; a write that raises leaves no
    trace and the others stand.

    Optimistic: no savepoint around each write, because every statement releases the GIL
    and must take it back from a busy event loop, and a write that raises is rare. When
    one does, the transaction is rolled back and the batch run again with a savepoint per
    write, so the failure stays its own (the writes are plain functions of the database,
    safe to run twice; what they do besides, like updating the in-memory subscriptions,
    is idempotent)."""
    try:
        return [(fut, fn(db), None) for fn, fut in batch]
    except Exception as exc:
        db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        if len(batch) == 1:
            return [(batch[0][1], None, exc)]
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for fn, fut in batch:
        db.execute("SAVEPOINT w")
        try:
            result = fn(db)
        except Exception as exc:
            db.execute("ROLLBACK TO w")
            db.execute("RELEASE w")
            outcomes.append((fut, None, exc))
        else:
            db.execute("RELEASE w")
            outcomes.append((fut, result, None))
    return outcomes


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        if fut.done():
            continue  # the caller gave up (cancelled); the write is durable regardless
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class SqliteStore(Store):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"invalid sqlite synchronous mode {synchronous!r}")
        self._writer: _Writer | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_db: sqlite3.Connection | None = None
        self._subs = Subscriptions()
        self._events_written = False

    # -- plumbing -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={self.synchronous}",
            "busy_timeout=10000",
            "foreign_keys=ON",
        ):
            db.execute(f"PRAGMA {pragma}")
        return db

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate_sync)
        await asyncio.to_thread(self._load_subscriptions)
        self._writer = _Writer(self._connect)
        self._writer.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="smsgw-sqlite-reader")
        self._reader_db = await asyncio.get_running_loop().run_in_executor(
            self._reader, self._connect
        )

    def _load_subscriptions(self) -> None:
        db = self._connect()
        try:
            hooks = db.execute("SELECT id, url, events, enabled FROM webhooks").fetchall()
            self._subs.load(
                (h["id"], h["url"], h["events"].split(), bool(h["enabled"])) for h in hooks
            )
            self._subs.callbacks = (
                db.execute(
                    "SELECT 1 FROM messages WHERE callback_url IS NOT NULL LIMIT 1"
                ).fetchone()
                is not None
            )
        finally:
            db.close()

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; returns what was applied."""
        return await asyncio.to_thread(self._migrate_sync)

    def _migrate_sync(self) -> list[str]:
        db = self._connect()
        applied: list[str] = []
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for mig in load_migrations("sqlite"):
                if mig.version in done:
                    continue
                stamp = iso(datetime.now().astimezone())
                # executescript commits on its own; BEGIN/COMMIT inside makes the file and
                # its version record one atomic step.
                db.executescript(
                    "BEGIN IMMEDIATE;\n"
                    + mig.sql()
                    + f"\n;INSERT INTO schema_migrations VALUES ('{mig.version}', '{stamp}');"
                    + "\nCOMMIT;"
                )
                applied.append(mig.version)
        finally:
            db.close()
        return applied

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            reader, db = self._reader, self._reader_db
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(reader, db.close)
            reader.shutdown(wait=True)
            self._reader = self._reader_db = None

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise RuntimeError("store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writer.jobs.put((fn, fut))
        # Once queued the write happens even if the caller is cancelled; its result is
        # then dropped (_deliver skips futures that are already done).
        try:
            return await fut
        finally:
            # Set by the writer before the commit that resolved ``fut``: the rows are
            # visible now.
            if self._events_written:
                self._events_written = False
                if self.on_events is not None:
                    self.on_events()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader, db = self._reader, self._reader_db
        if reader is None or db is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(reader, fn, db)

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        args = tuple(params)
        row: sqlite3.Row | None = await self._read(lambda db: db.execute(sql, args).fetchone())
        return row

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        args = tuple(params)
        return await self._read(lambda db: db.execute(sql, args).fetchall())

    # -- client API keys ------------------------------------------------------------

    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO api_keys (id, name, prefix, key_hash, scopes, created_at, "
                "rate_limit_rpm, daily_message_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.prefix,
                    key_hash,
                    " ".join(sorted(key.scopes)),
                    iso(key.created_at),
                    key.rate_limit_rpm,
                    key.daily_message_limit,
                ),
            )

        return await self._write(op)

    async def api_key_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        row = await self._one(
            "SELECT * FROM api_keys WHERE prefix = ? AND revoked_at IS NULL", (prefix,)
        )
        return (records.api_key(row, SQLITE), row["key_hash"]) if row else None

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._all("SELECT * FROM api_keys ORDER BY created_at, id")
        return [records.api_key(r, SQLITE) for r in rows]

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (iso(now), key_id),
            )
            return cur.rowcount == 1

        return await self._write(op)

    async def has_admin_key(self) -> bool:
        rows = await self._all("SELECT scopes FROM api_keys WHERE revoked_at IS NULL")
        return any("admin" in r[0].split() for r in rows)

    # -- enrollment and devices -----------------------------------------------------

    async def create_enrollment_code(
        self, code_hash: str, now: datetime, expires_at: datetime
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO enrollment_codes (code_hash, created_at, expires_at) VALUES (?, ?, ?)",
                (code_hash, iso(now), iso(expires_at)),
            )

        return await self._write(op)

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
        try:
            return await self._register(
                device_id,
                name,
                hardware_id,
                sims,
                fcm_token,
                token_prefix,
                token_hash,
                now,
                enrollment_code_hash,
            )
        except _Abort:
            return None

    async def _register(
        self,
        device_id: str,
        name: str,
        hardware_id: str,
        sims: list[dict[str, Any]],
        fcm_token: str | None,
        token_prefix: str,
        token_hash: str,
        now: datetime,
        enrollment_code_hash: str | None,
    ) -> tuple[Device, bool]:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> tuple[Device, bool]:
            existing = (
                db.execute("SELECT id FROM devices WHERE hardware_id = ?", (hardware_id,))
            ).fetchone()
            final_id = existing["id"] if existing else device_id
            if enrollment_code_hash is not None:
                cur = db.execute(
                    "UPDATE enrollment_codes SET used_at = ?, device_id = ? "
                    "WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                    (stamp, final_id, enrollment_code_hash, stamp),
                )
                if cur.rowcount != 1:
                    raise _Abort()
            if existing:
                db.execute(
                    "UPDATE devices SET name = ?, token_prefix = ?, token_hash = ?, sims = ?, "
                    "fcm_token = COALESCE(?, fcm_token), updated_at = ?, revoked_at = NULL "
                    "WHERE id = ?",
                    (name, token_prefix, token_hash, json.dumps(sims), fcm_token, stamp, final_id),
                )
            else:
                db.execute(
                    "INSERT INTO devices (id, name, hardware_id, token_prefix, token_hash, sims, "
                    "fcm_token, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        final_id,
                        name,
                        hardware_id,
                        token_prefix,
                        token_hash,
                        json.dumps(sims),
                        fcm_token,
                        stamp,
                        stamp,
                    ),
                )
            row = (db.execute("SELECT * FROM devices WHERE id = ?", (final_id,))).fetchone()
            assert row is not None
            return records.device(row, SQLITE), existing is None

        return await self._write(op)

    async def device_by_token_prefix(self, prefix: str) -> tuple[Device, str] | None:
        row = await self._one(
            "SELECT * FROM devices WHERE token_prefix = ? AND revoked_at IS NULL", (prefix,)
        )
        return (records.device(row, SQLITE), row["token_hash"]) if row else None

    async def get_device(self, device_id: str) -> Device | None:
        row = await self._one(
            "SELECT * FROM devices WHERE id = ? AND revoked_at IS NULL", (device_id,)
        )
        return records.device(row, SQLITE) if row else None

    async def list_devices(self) -> list[Device]:
        rows = await self._all(
            "SELECT * FROM devices WHERE revoked_at IS NULL ORDER BY created_at, id"
        )
        return [records.device(r, SQLITE) for r in rows]

    _UPDATABLE = frozenset({"name", "enabled", "daily_quota", "fcm_token", "sims", "app_version"})

    async def update_device(self, device_id: str, now: datetime, **fields: Any) -> Device | None:
        unknown = set(fields) - self._UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {k: (json.dumps(v) if k == "sims" else v) for k, v in fields.items()}

        def op(db: sqlite3.Connection) -> Device | None:
            if values:
                assignments = ", ".join(f"{k} = ?" for k in values)
                db.execute(
                    f"UPDATE devices SET {assignments}, updated_at = ? "
                    "WHERE id = ? AND revoked_at IS NULL",
                    (*values.values(), iso(now), device_id),
                )
            row = (
                db.execute(
                    "SELECT * FROM devices WHERE id = ? AND revoked_at IS NULL", (device_id,)
                )
            ).fetchone()
            return records.device(row, SQLITE) if row else None

        return await self._write(op)

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
        def op(db: sqlite3.Connection) -> None:
            before = db.execute("SELECT battery FROM devices WHERE id = ?", (device_id,)).fetchone()
            db.execute(
                "UPDATE devices SET battery = ?, charging = ?, signal = ?, network = ?, "
                "last_seen_at = ? WHERE id = ?",
                (battery, int(charging), signal, network, iso(now), device_id),
            )
            if before is not None:
                self._device_events(db, device_id, before["battery"], now, offline=offline)

        return await self._write(op)

    def _device_events(
        self,
        db: sqlite3.Connection,
        device_id: str,
        battery_before: int | None,
        now: datetime,
        *,
        online: bool = False,
        offline: bool = False,
    ) -> None:
        types = device_event_types(online=online, offline=offline)
        if not any(self._subs.wanted(t) for t in types):
            return
        row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            return
        device = records.device(row, SQLITE)
        for t, data in device_events(device, battery_before, online=online, offline=offline):
            self._event(db, t, device_id, data, now)

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
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> tuple[Device, list[Message]] | None:
            before = db.execute("SELECT battery FROM devices WHERE id = ?", (device_id,)).fetchone()
            db.execute(
                "UPDATE devices SET sims = ?, app_version = ?, fcm_token = COALESCE(?, fcm_token), "
                "battery = ?, charging = ?, signal = ?, network = ?, last_seen_at = ?, "
                "updated_at = ? WHERE id = ?",
                (
                    json.dumps(sims),
                    app_version,
                    fcm_token,
                    battery,
                    int(charging),
                    signal,
                    network,
                    stamp,
                    stamp,
                    device_id,
                ),
            )
            rows = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages INDEXED BY messages_owned "
                "WHERE device_id = ? AND status = 'QUEUED'",
                (device_id,),
            ).fetchall()
            device = db.execute(
                "SELECT * FROM devices WHERE id = ? AND revoked_at IS NULL", (device_id,)
            ).fetchone()
            if device is None:
                return None
            if before is not None:
                self._device_events(db, device_id, before["battery"], now, online=True)
            return records.device(device, SQLITE), [records.message(r, SQLITE) for r in rows]

        return await self._write(op)

    async def delete_device(self, device_id: str, now: datetime) -> bool:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE devices SET revoked_at = ?, token_prefix = NULL, token_hash = NULL, "
                "updated_at = ? "
                "WHERE id = ? AND revoked_at IS NULL",
                (stamp, stamp, device_id),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "UPDATE message_attempts SET ended_at = ?, outcome = ? "
                "WHERE device_id = ? AND ended_at IS NULL",
                (stamp, DEVICE_REMOVED, device_id),
            )
            db.execute(
                "UPDATE messages SET status = 'PENDING', device_id = NULL, lease_until = NULL, "
                "queued_at = NULL, updated_at = ? "
                "WHERE device_id = ? AND status IN ('PENDING', 'QUEUED')",
                (stamp, device_id),
            )
            # A message pinned to a removed phone can never leave: fail it visibly.
            failed = db.execute(
                "UPDATE messages SET status = 'FAILED', error_code = ?, error = ?, "
                "failed_at = ?, updated_at = ? WHERE pinned_device_id = ? AND status = 'PENDING' "
                "RETURNING id",
                (DEVICE_REMOVED, DEVICE_REMOVED_ERROR, stamp, stamp, device_id),
            ).fetchall()
            for r in failed:
                self._message_event(db, EventType.MESSAGE_FAILED, r["id"], now)
            return True

        return await self._write(op)

    # -- messages -------------------------------------------------------------------

    async def create_message(
        self,
        message: Message,
        *,
        offer_to: str | None = None,
        lease_until: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> bool:
        if offer_to is None:
            await self._write(lambda db: self._insert_message(db, message, None))
            return True
        device_id, now = offer_to, utcnow()
        first_offer(message, device_id, lease_until, accepted_at)

        def op(db: sqlite3.Connection) -> bool:
            removed = db.execute(
                "SELECT 1 FROM devices WHERE id = ? AND revoked_at IS NOT NULL", (device_id,)
            ).fetchone()
            if removed is not None:  # see Store.create_message
                if accepted_at is None:
                    plain = replace(message)
                    offered_to_removed(plain, device_id, now)
                    self._insert_message(db, plain, None)
                    if plain.status is Status.FAILED:
                        self._message_event(db, EventType.MESSAGE_FAILED, plain.id, now)
                return False
            self._insert_message(db, message, device_id, accepted_at)
            return True

        return await settle_first_offer(message, device_id, accepted_at, now, self._write(op))

    def _insert_message(
        self,
        db: sqlite3.Connection,
        m: Message,
        offer_to: str | None,
        accepted_at: datetime | None = None,
    ) -> None:
        if m.callback_url:
            self._subs.callbacks = True
        db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 30)})",
            (
                m.id,
                m.recipient,
                m.body,
                m.status.value,
                m.device_id,
                m.pinned_device_id,
                m.sim_slot,
                m.parts,
                m.attempt,
                iso(m.lease_until),
                iso(m.next_attempt_at),
                m.error_code,
                m.error,
                iso(m.created_at),
                iso(m.updated_at),
                iso(m.queued_at),
                iso(m.sent_at),
                iso(m.delivered_at),
                iso(m.failed_at),
                iso(m.expires_at),
                m.priority,
                iso(m.send_at),
                iso(m.cancelled_at),
                m.custom_id,
                json.dumps(m.metadata) if m.metadata is not None else None,
                m.encoding,
                int(m.sensitive),
                m.template_id,
                m.batch_id,
                m.callback_url,
            ),
        )
        if offer_to is not None:
            db.execute(
                "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at, "
                "accepted_at) VALUES (?, 1, ?, ?, ?)",
                (m.id, offer_to, iso(m.created_at), iso(accepted_at)),
            )
        if accepted_at is not None and self._subs.wanted(EventType.MESSAGE_QUEUED):
            self._event(
                db, EventType.MESSAGE_QUEUED, m.id, message_data(m), accepted_at, m.callback_url
            )

    async def get_message(self, message_id: str, *, with_attempts: bool = False) -> Message | None:
        row = await self._one(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if row is None:
            return None
        msg = records.message(row, SQLITE)
        if with_attempts:
            rows = await self._all(
                "SELECT * FROM message_attempts WHERE message_id = ? ORDER BY attempt",
                (message_id,),
            )
            msg.attempts = [records.attempt(r, SQLITE) for r in rows]
        return msg

    async def list_messages(self, flt: MessageFilter) -> list[Message]:
        clause, params = _page_where(
            [
                ("status", flt.status.value if flt.status else None),
                ("device_id", flt.device_id),
                ("custom_id", flt.custom_id),
            ],
            flt.since,
            flt.after,
        )
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, flt.limit),
        )
        return [records.message(r, SQLITE) for r in rows]

    async def due_messages(self, now: datetime, limit: int) -> list[Message]:
        stamp = iso(now)
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS}, (SELECT a.device_id FROM recipient_affinity a "
            "WHERE a.recipient = messages.recipient) AS last_device "
            "FROM messages WHERE status = 'PENDING' "
            "AND (lease_until IS NULL OR lease_until <= ?) "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "ORDER BY priority DESC, created_at, id LIMIT ?",
            (stamp, stamp, limit),
        )
        messages = []
        for r in rows:
            msg = records.message(r, SQLITE)
            msg.last_device = r["last_device"]
            messages.append(msg)
        return messages

    async def owned_unfinished(self, device_id: str) -> list[Message]:
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages INDEXED BY messages_owned "
            "WHERE device_id = ? AND status = 'QUEUED'",
            (device_id,),
        )
        return [records.message(r, SQLITE) for r in rows]

    async def offer(
        self,
        message_id: str,
        device_id: str,
        expected_attempt: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE messages SET attempt = attempt + 1, device_id = ?, lease_until = ?, "
                "updated_at = ? WHERE id = ? AND status = 'PENDING' AND attempt = ? "
                "AND (lease_until IS NULL OR lease_until <= ?)",
                (device_id, iso(lease_until), stamp, message_id, expected_attempt, stamp),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at) "
                "VALUES (?, ?, ?, ?)",
                (message_id, expected_attempt + 1, device_id, stamp),
            )
            return True

        return await self._write(op)

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
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> Status | None:
            exhausted = attempt >= max_attempts
            if exhausted:
                cur = db.execute(
                    "UPDATE messages SET status = 'FAILED', device_id = NULL, lease_until = NULL, "
                    "error_code = 'max_attempts', error = ?, failed_at = ?, updated_at = ? "
                    "WHERE id = ? AND status = 'PENDING' AND attempt = ? AND device_id = ?",
                    (
                        f"no phone took the message after {attempt} attempts (last: {outcome})",
                        stamp,
                        stamp,
                        message_id,
                        attempt,
                        device_id,
                    ),
                )
            else:
                cur = db.execute(
                    "UPDATE messages SET device_id = NULL, lease_until = NULL, "
                    "next_attempt_at = ?, updated_at = ? "
                    "WHERE id = ? AND status = 'PENDING' AND attempt = ? AND device_id = ?",
                    (iso(retry_at), stamp, message_id, attempt, device_id),
                )
            if cur.rowcount != 1:
                return None
            self._end_attempt(db, message_id, attempt, outcome, stamp)
            if exhausted:
                self._message_event(db, EventType.MESSAGE_FAILED, message_id, now)
            return Status.FAILED if exhausted else Status.PENDING

        return await self._write(op)

    @staticmethod
    def _end_attempt(
        db: sqlite3.Connection,
        message_id: str,
        attempt: int,
        outcome: str,
        stamp: str | None,
        error_code: str | None = None,
        error: str | None = None,
    ) -> None:
        db.execute(
            "UPDATE message_attempts SET ended_at = ?, outcome = ?, error_code = ?, error = ? "
            "WHERE message_id = ? AND attempt = ? AND ended_at IS NULL",
            (stamp, outcome, error_code, error, message_id, attempt),
        )

    async def accept(self, message_id: str, device_id: str, attempt: int, now: datetime) -> bool:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE messages SET status = 'QUEUED', lease_until = NULL, queued_at = ?, "
                "updated_at = ? WHERE id = ? AND status = 'PENDING' AND attempt = ? "
                "AND device_id = ?",
                (stamp, stamp, message_id, attempt, device_id),
            )
            if cur.rowcount == 1:
                db.execute(
                    "UPDATE message_attempts SET accepted_at = ? "
                    "WHERE message_id = ? AND attempt = ?",
                    (stamp, message_id, attempt),
                )
                self._message_event(db, EventType.MESSAGE_QUEUED, message_id, now)
                return True
            row = (
                db.execute(
                    "SELECT 1 FROM messages WHERE id = ? AND device_id = ? AND attempt = ? "
                    "AND status IN ('QUEUED', 'SENT', 'DELIVERED')",
                    (message_id, device_id, attempt),
                )
            ).fetchone()
            return row is not None

        return await self._write(op)

    async def mark_sent(self, message_id: str, device_id: str, now: datetime) -> str | None:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> str | None:
            cur = db.execute(
                "UPDATE messages SET status = 'SENT', sent_at = ?, updated_at = ? "
                "WHERE id = ? AND device_id = ? AND status = 'QUEUED' RETURNING recipient, attempt",
                (stamp, stamp, message_id, device_id),
            )
            row = cur.fetchone()
            cur.close()
            if row is None:
                return None
            self._end_attempt(db, message_id, row["attempt"], "sent", stamp)
            self._count_sent(db, device_id, now)
            db.execute(
                "INSERT INTO recipient_affinity (recipient, device_id, updated_at) "
                "VALUES (?, ?, ?) ON CONFLICT (recipient) DO UPDATE SET "
                "device_id = excluded.device_id, updated_at = excluded.updated_at",
                (row["recipient"], device_id, stamp),
            )
            self._message_event(db, EventType.MESSAGE_SENT, message_id, now)
            return str(row["recipient"])

        return await self._write(op)

    @staticmethod
    def _count_sent(db: sqlite3.Connection, device_id: str, now: datetime) -> None:
        day = _day(now)
        db.execute(
            "UPDATE devices SET sent_day = ?, "
            "sent_today = CASE WHEN sent_day = ? THEN sent_today + 1 ELSE 1 END WHERE id = ?",
            (day, day, device_id),
        )

    async def mark_delivered(self, message_id: str, device_id: str, now: datetime) -> bool:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> bool:
            # A delivery report may overtake the sent report; it implies sent.
            cur = db.execute(
                "UPDATE messages SET status = 'DELIVERED', delivered_at = ?, "
                "sent_at = COALESCE(sent_at, ?), updated_at = ? "
                "WHERE id = ? AND device_id = ? AND status IN ('QUEUED', 'SENT') "
                "RETURNING attempt, (sent_at = ?) AS was_unsent",
                (stamp, stamp, stamp, message_id, device_id, stamp),
            )
            row = cur.fetchone()
            cur.close()
            if row is None:
                return False
            self._end_attempt(db, message_id, row["attempt"], "sent", stamp)
            if row["was_unsent"]:
                self._count_sent(db, device_id, now)
            self._message_event(db, EventType.MESSAGE_DELIVERED, message_id, now)
            return True

        return await self._write(op)

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
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> Status | None:
            row = (
                db.execute(
                    "SELECT status, attempt FROM messages WHERE id = ? AND device_id = ?",
                    (message_id, device_id),
                )
            ).fetchone()
            if row is None:
                return None
            status = Status(row["status"])
            current = row["attempt"]
            if current != attempt:
                # A report about an older attempt (a decline of an earlier offer, replayed
                # after a reconnect): the message has moved on, maybe to this very phone.
                return None
            if status not in (Status.PENDING, Status.QUEUED, Status.SENT):
                return None  # already final: status never goes backwards
            # Once transmitted (SENT) a retry could deliver twice: a failure is final.
            again = retryable and status is not Status.SENT and current < max_attempts
            if again:
                db.execute(
                    "UPDATE messages SET status = 'PENDING', device_id = NULL, lease_until = NULL, "
                    "queued_at = NULL, next_attempt_at = ?, error_code = ?, error = ?, "
                    "updated_at = ? WHERE id = ?",
                    (iso(retry_at), error_code, error, stamp, message_id),
                )
            else:
                db.execute(
                    "UPDATE messages SET status = 'FAILED', lease_until = NULL, error_code = ?, "
                    "error = ?, failed_at = ?, updated_at = ? WHERE id = ?",
                    (error_code, error, stamp, stamp, message_id),
                )
            self._end_attempt(
                db,
                message_id,
                current,
                "failed_retryable" if retryable else "failed",
                stamp,
                error_code,
                error,
            )
            if not again:
                self._message_event(db, EventType.MESSAGE_FAILED, message_id, now)
            return Status.PENDING if again else Status.FAILED

        return await self._write(op)

    async def cancel_message(self, message_id: str, now: datetime) -> Message | None:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> Message | None:
            cur = db.execute(
                "UPDATE messages SET status = 'CANCELLED', cancelled_at = ?, lease_until = NULL, "
                "updated_at = ? WHERE id = ? AND status = 'PENDING' RETURNING attempt",
                (stamp, stamp, message_id),
            )
            row = cur.fetchone()
            cur.close()
            if row is not None:
                self._end_attempt(db, message_id, row["attempt"], "cancelled", stamp)
                self._message_event(db, EventType.MESSAGE_CANCELLED, message_id, now)
            found = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            return records.message(found, SQLITE) if found else None

        return await self._write(op)

    async def idempotency_claim(
        self, owner: str, key: str, request_hash: str, now: datetime, abandoned_before: datetime
    ) -> IdempotencyRecord | None:
        def op(db: sqlite3.Connection) -> IdempotencyRecord | None:
            cur = db.execute(
                "INSERT INTO idempotency_keys (owner, key, request_hash, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (owner, key) DO UPDATE SET "
                "request_hash = excluded.request_hash, created_at = excluded.created_at "
                "WHERE idempotency_keys.status_code IS NULL "
                "AND idempotency_keys.created_at < ?",
                (owner, key, request_hash, iso(now), iso(abandoned_before)),
            )
            if cur.rowcount == 1:
                return None
            row = db.execute(
                "SELECT request_hash, status_code, response FROM idempotency_keys "
                "WHERE owner = ? AND key = ?",
                (owner, key),
            ).fetchone()
            return IdempotencyRecord(row[0], row[1], row[2])

        return await self._write(op)

    async def idempotency_complete(
        self, owner: str, key: str, status_code: int, response: str
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE idempotency_keys SET status_code = ?, response = ? "
                "WHERE owner = ? AND key = ?",
                (status_code, response, owner, key),
            )

        await self._write(op)

    async def idempotency_release(self, owner: str, key: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM idempotency_keys WHERE owner = ? AND key = ? AND status_code IS NULL",
                (owner, key),
            )

        await self._write(op)

    async def purge_idempotency(self, before: datetime) -> int:
        def op(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (iso(before),)
            ).rowcount

        return await self._write(op)

    # -- templates --------------------------------------------------------------------

    async def create_template(self, template: Template) -> None:
        t = template

        def op(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO templates (id, name, body, category, active, usage_count, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        t.id,
                        t.name,
                        t.body,
                        t.category,
                        int(t.active),
                        t.usage_count,
                        iso(t.created_at),
                        iso(t.updated_at),
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a template named {t.name!r} exists") from None

        await self._write(op)

    async def get_template(self, template_id: str) -> Template | None:
        row = await self._one("SELECT * FROM templates WHERE id = ?", (template_id,))
        return records.template(row, SQLITE) if row else None

    async def list_templates(
        self, *, category: str | None = None, active: bool | None = None
    ) -> list[Template]:
        where: list[str] = []
        params: list[Any] = []
        if category is not None:
            where.append("category = ?")
            params.append(category)
        if active is not None:
            where.append("active = ?")
            params.append(int(active))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = await self._all(f"SELECT * FROM templates {clause} ORDER BY name", params)
        return [records.template(r, SQLITE) for r in rows]

    async def update_template(
        self, template_id: str, now: datetime, **fields: Any
    ) -> Template | None:
        unknown = set(fields) - {"name", "body", "category", "active"}
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")

        def op(db: sqlite3.Connection) -> Template | None:
            if fields:
                assignments = ", ".join(f"{k} = ?" for k in fields)
                try:
                    db.execute(
                        f"UPDATE templates SET {assignments}, updated_at = ? WHERE id = ?",
                        (*fields.values(), iso(now), template_id),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict(f"a template named {fields.get('name')!r} exists") from None
            row = db.execute("SELECT * FROM templates WHERE id = ?", (template_id,)).fetchone()
            return records.template(row, SQLITE) if row else None

        return await self._write(op)

    async def delete_template(self, template_id: str) -> bool:
        return await self._write(
            lambda db: (
                db.execute("DELETE FROM templates WHERE id = ?", (template_id,)).rowcount == 1
            )
        )

    async def count_template_use(self, template_id: str, n: int = 1) -> None:
        await self._write(
            lambda db: db.execute(
                "UPDATE templates SET usage_count = usage_count + ? WHERE id = ?",
                (n, template_id),
            )
        )

    # -- one-time passwords -------------------------------------------------------------

    async def create_otp(self, otp: Otp, message: Message) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE otp_codes SET superseded_at = ? WHERE recipient = ? "
                "AND superseded_at IS NULL AND verified_at IS NULL",
                (iso(otp.created_at), otp.recipient),
            )
            self._insert_message(db, message, None)
            db.execute(
                "INSERT INTO otp_codes (id, recipient, code_hash, message_id, attempts, "
                "max_attempts, created_at, expires_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    otp.id,
                    otp.recipient,
                    otp.code_hash,
                    otp.message_id,
                    otp.max_attempts,
                    iso(otp.created_at),
                    iso(otp.expires_at),
                ),
            )

        await self._write(op)

    async def otp_sends_since(self, recipient: str, since: datetime) -> list[datetime]:
        rows = await self._all(
            "SELECT created_at FROM otp_codes WHERE recipient = ? AND created_at >= ? "
            "ORDER BY created_at DESC",
            (recipient, iso(since)),
        )
        return [SQLITE.req_dt(r[0]) for r in rows]

    async def get_otp(self, otp_id: str) -> Otp | None:
        row = await self._one("SELECT * FROM otp_codes WHERE id = ?", (otp_id,))
        return records.otp(row, SQLITE) if row else None

    async def latest_otp(self, recipient: str) -> Otp | None:
        row = await self._one(
            "SELECT * FROM otp_codes WHERE recipient = ? AND superseded_at IS NULL "
            "ORDER BY created_at DESC LIMIT 1",
            (recipient,),
        )
        return records.otp(row, SQLITE) if row else None

    async def record_otp_attempt(self, otp_id: str, correct: bool, now: datetime) -> Otp | None:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> Otp | None:
            cur = db.execute(
                "UPDATE otp_codes SET attempts = attempts + 1, "
                "verified_at = CASE WHEN ? THEN ? ELSE NULL END "
                "WHERE id = ? AND verified_at IS NULL AND superseded_at IS NULL "
                "AND expires_at > ? AND attempts < max_attempts RETURNING *",
                (int(correct), stamp, otp_id, stamp),
            )
            row = cur.fetchone()
            cur.close()
            if row is None:
                return None
            otp = records.otp(row, SQLITE)
            if otp.verified_at is not None:
                self._event(db, EventType.OTP_VERIFIED, otp.id, otp_data(otp), now)
            return otp

        return await self._write(op)

    async def purge_otps(self, before: datetime) -> int:
        return await self._write(
            lambda db: (
                db.execute("DELETE FROM otp_codes WHERE expires_at < ?", (iso(before),)).rowcount
            )
        )

    async def hub_secret(self, name: str, candidate: str) -> str:
        def op(db: sqlite3.Connection) -> str:
            db.execute(
                "INSERT INTO hub_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (name, candidate),
            )
            row = db.execute("SELECT value FROM hub_secrets WHERE name = ?", (name,)).fetchone()
            return str(row[0])

        return await self._write(op)

    # -- opt-out ----------------------------------------------------------------------

    async def add_opt_out(self, entry: OptOut) -> bool:
        return await self._write(
            lambda db: (
                db.execute(
                    "INSERT INTO opt_outs (number, source, reason, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (number) DO NOTHING",
                    (entry.number, entry.source, entry.reason, iso(entry.created_at)),
                ).rowcount
                == 1
            )
        )

    async def remove_opt_out(self, number: str) -> bool:
        return await self._write(
            lambda db: db.execute("DELETE FROM opt_outs WHERE number = ?", (number,)).rowcount == 1
        )

    async def list_opt_outs(self, *, after: str | None, limit: int) -> list[OptOut]:
        rows = await self._all(
            "SELECT * FROM opt_outs WHERE number > ? ORDER BY number LIMIT ?",
            (after or "", limit),
        )
        return [records.opt_out(r, SQLITE) for r in rows]

    async def create_batch(self, batch: Batch, messages: list[Message]) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO batches (id, name, total, rejected, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch.id, batch.name, batch.total, batch.rejected, iso(batch.created_at)),
            )
            for m in messages:
                self._insert_message(db, m, None)

        await self._write(op)

    async def get_batch(self, batch_id: str) -> Batch | None:
        row = await self._one("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if row is None:
            return None
        counts = await self._all(
            "SELECT status, count(*) FROM messages WHERE batch_id = ? GROUP BY status",
            (batch_id,),
        )
        return records.batch(row, {r[0]: r[1] for r in counts}, SQLITE)

    async def stats(self, since: datetime, until: datetime) -> Stats:
        bounds = (iso(since), iso(until))

        def op(db: sqlite3.Connection) -> Stats:
            in_range = "created_at >= ? AND created_at < ?"
            by_status = dict(
                db.execute(
                    f"SELECT status, count(*) FROM messages WHERE {in_range} GROUP BY status",
                    bounds,
                ).fetchall()
            )
            by_day: dict[str, dict[str, int]] = {}
            for day, status, n in db.execute(
                f"SELECT substr(created_at, 1, 10), status, count(*) FROM messages "
                f"WHERE {in_range} GROUP BY 1, 2",
                bounds,
            ):
                by_day.setdefault(day, {})[status] = n
            by_device: dict[str, dict[str, int]] = {}
            for device, status, n in db.execute(
                f"SELECT device_id, status, count(*) FROM messages WHERE {in_range} "
                "AND device_id IS NOT NULL AND status != 'PENDING' GROUP BY 1, 2",
                bounds,
            ):
                by_device.setdefault(device, {})[status] = n
            reasons = dict(
                db.execute(
                    f"SELECT coalesce(error_code, 'unknown'), count(*) FROM messages "
                    f"WHERE {in_range} AND status = 'FAILED' GROUP BY 1",
                    bounds,
                ).fetchall()
            )
            inbound = db.execute(
                f"SELECT count(*) FROM inbound_messages WHERE {in_range}", bounds
            ).fetchone()[0]
            otp_sent, otp_verified = db.execute(
                f"SELECT count(*), count(verified_at) FROM otp_codes WHERE {in_range}", bounds
            ).fetchone()
            return Stats(by_status, by_day, by_device, reasons, inbound, otp_sent, otp_verified)

        # A read, but several statements that should see one snapshot: run it as one
        # transaction on the writer (cheap, and rare).
        return await self._write(op)

    async def expire_messages(self, now: datetime) -> list[str]:
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> list[str]:
            cur = db.execute(
                "UPDATE messages SET status = 'FAILED', error_code = 'expired', device_id = NULL, "
                "error = 'no phone sent the message before it expired', failed_at = ?, "
                "updated_at = ? WHERE status = 'PENDING' AND expires_at <= ? "
                "AND (lease_until IS NULL OR lease_until <= ?) RETURNING id",
                (stamp, stamp, stamp, stamp),
            )
            rows = cur.fetchall()
            cur.close()
            for r in rows:
                self._message_event(db, EventType.MESSAGE_FAILED, r[0], now)
            return [r[0] for r in rows]

        return await self._write(op)

    async def recent_affinities(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._all(
            "SELECT recipient, device_id FROM recipient_affinity ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [(r[0], r[1]) for r in rows]

    # -- inbound --------------------------------------------------------------------

    async def store_inbound(self, inbound: Inbound) -> bool:
        i = inbound
        i.id = i.id or new_id()

        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT INTO inbound_messages (id, device_id, local_id, sender, body, sim_slot, "
                "received_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, local_id) DO NOTHING",
                (
                    i.id,
                    i.device_id,
                    i.local_id,
                    i.sender,
                    i.body,
                    i.sim_slot,
                    iso(i.received_at),
                    iso(i.created_at),
                ),
            )
            if cur.rowcount != 1:
                return False
            self._event(db, EventType.SMS_RECEIVED, i.id, inbound_data(i), i.created_at)
            return True

        return await self._write(op)

    async def list_inbound(self, flt: InboundFilter) -> list[Inbound]:
        clause, params = _page_where(
            [("sender", flt.sender), ("device_id", flt.device_id)], flt.since, flt.after
        )
        rows = await self._all(
            f"SELECT * FROM inbound_messages {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, flt.limit),
        )
        return [records.inbound(r, SQLITE) for r in rows]

    # -- events and webhooks ----------------------------------------------------------
    # The emitters run inside the write that changed the state (writer thread), so the
    # event commits or rolls back with it.

    def _event(
        self,
        db: sqlite3.Connection,
        type_: EventType,
        subject: str,
        data: dict[str, Any],
        now: datetime,
        callback_url: str | None = None,
    ) -> None:
        targets = self._subs.targets(type_, callback_url)
        if targets:
            self._insert_event(db, make_event(type_, subject, data, now), targets)
            self._events_written = True

    def _message_event(
        self, db: sqlite3.Connection, type_: EventType, message_id: str, now: datetime
    ) -> None:
        if not self._subs.wanted(type_):
            return
        row = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is not None:
            msg = records.message(row, SQLITE)
            self._event(db, type_, msg.id, message_data(msg), now, msg.callback_url)

    @staticmethod
    def _insert_event(db: sqlite3.Connection, event: Event, targets: list[Target]) -> None:
        stamp = iso(event.created_at)
        db.execute(
            "INSERT INTO events (id, type, subject, created_at, payload) VALUES (?, ?, ?, ?, ?)",
            (event.id, event.type, event.subject, stamp, event.payload),
        )
        db.executemany(
            "INSERT INTO webhook_deliveries (id, event_id, target, webhook_id, subject, url, "
            "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (new_id(), event.id, t.key, t.webhook_id, event.subject, t.url, stamp, stamp, stamp)
                for t in targets
            ],
        )

    async def create_webhook(self, hook: Webhook) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO webhooks (id, url, events, description, enabled, secret, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hook.id,
                    hook.url,
                    " ".join(sorted(hook.events)),
                    hook.description,
                    int(hook.enabled),
                    hook.secret,
                    iso(hook.created_at),
                    iso(hook.updated_at),
                ),
            )
            self._subs.set(hook.id, hook.url, hook.events, hook.enabled)

        await self._write(op)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self._one("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
        return records.webhook(row, SQLITE) if row else None

    async def list_webhooks(self) -> list[Webhook]:
        return [
            records.webhook(r, SQLITE)
            for r in await self._all("SELECT * FROM webhooks ORDER BY id")
        ]

    async def update_webhook(self, webhook_id: str, now: datetime, **fields: Any) -> Webhook | None:
        allowed = {"url", "events", "description", "enabled"}
        if unknown := set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(unknown)}")
        stamp = iso(now)

        def op(db: sqlite3.Connection) -> Webhook | None:
            row = db.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
            if row is None:
                return None
            old = records.webhook(row, SQLITE)
            values = dict(fields)
            if "events" in values:
                values["events"] = " ".join(sorted(values["events"]))
            if "enabled" in values:
                values["enabled"] = int(values["enabled"])
                if values["enabled"] and not old.enabled:
                    # Back on: a clean record, and what waited for it goes out now.
                    values.update(failing_since=None, disabled_at=None, disabled_reason=None)
                    db.execute(
                        "UPDATE webhook_deliveries SET next_attempt_at = ? "
                        "WHERE webhook_id = ? AND status = 'pending'",
                        (stamp, webhook_id),
                    )
            values["updated_at"] = stamp
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE webhooks SET {sets} WHERE id = ?", (*values.values(), webhook_id))
            new = records.webhook(
                db.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone(),
                SQLITE,
            )
            self._subs.set(new.id, new.url, new.events, new.enabled)
            return new

        return await self._write(op)

    async def rotate_webhook_secret(
        self, webhook_id: str, secret: str, previous_until: datetime, now: datetime
    ) -> Webhook | None:
        def op(db: sqlite3.Connection) -> Webhook | None:
            cur = db.execute(
                "UPDATE webhooks SET previous_secret = secret, previous_secret_until = ?, "
                "secret = ?, updated_at = ? WHERE id = ? RETURNING *",
                (iso(previous_until), secret, iso(now), webhook_id),
            )
            row = cur.fetchone()
            cur.close()
            return records.webhook(row, SQLITE) if row else None

        return await self._write(op)

    async def delete_webhook(self, webhook_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
            self._subs.remove(webhook_id)
            return cur.rowcount == 1

        return await self._write(op)

    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[Delivery]:
        def op(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
                "JOIN events e ON e.id = d.event_id "
                "LEFT JOIN webhooks w ON w.id = d.webhook_id "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= ? "
                "AND (d.webhook_id IS NULL OR w.enabled = 1) "
                "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p "
                "  WHERE p.status = 'pending' AND p.target = d.target "
                "  AND p.subject = d.subject AND p.seq < d.seq) "
                "ORDER BY d.next_attempt_at, d.seq LIMIT ?",
                (iso(now), limit),
            ).fetchall()
            db.executemany(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                [(iso(lease_until), r["id"]) for r in rows],
            )
            return [records.delivery(r, SQLITE) for r in rows]

        return await self._write(op)

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
        stamp = iso(attempt.at)

        def op(db: sqlite3.Connection) -> tuple[DeliveryStatus, bool] | None:
            row = db.execute(
                "SELECT attempts, max_attempts, webhook_id, status, next_attempt_at "
                "FROM webhook_deliveries WHERE id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None or (
                lease is not None
                and (row["status"] != "pending" or row["next_attempt_at"] != iso(lease))
            ):
                return None
            n = row["attempts"] + 1
            status = next_delivery_status(
                succeeded, retry_at, n, row["max_attempts"] or default_max_attempts
            )
            db.execute(
                "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, at, status_code, "
                "error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (delivery_id, n, stamp, attempt.status_code, attempt.error, attempt.duration_ms),
            )
            db.execute(
                "UPDATE webhook_deliveries SET attempts = ?, status = ?, next_attempt_at = ?, "
                "last_status_code = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (
                    n,
                    status.value,
                    iso(retry_at) if status is DeliveryStatus.PENDING else None,
                    attempt.status_code,
                    attempt.error,
                    stamp,
                    delivery_id,
                ),
            )
            hook_id = row["webhook_id"]
            if hook_id is None:
                return status, False
            if succeeded:
                db.execute(
                    "UPDATE webhooks SET failing_since = NULL "
                    "WHERE id = ? AND failing_since IS NOT NULL",
                    (hook_id,),
                )
                return status, False
            cur = db.execute(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?) WHERE id = ? "
                "RETURNING failing_since, enabled, url, events",
                (stamp, hook_id),
            )
            hook = cur.fetchone()
            cur.close()
            if hook is None or not hook["enabled"]:
                return status, False
            failing_for = (attempt.at - SQLITE.req_dt(hook["failing_since"])).total_seconds()
            if failing_for < disable_after:
                return status, False
            db.execute(
                "UPDATE webhooks SET enabled = 0, disabled_at = ?, disabled_reason = ?, "
                "updated_at = ? WHERE id = ?",
                (stamp, disabled_reason(hook["failing_since"]), stamp, hook_id),
            )
            self._subs.set(hook_id, hook["url"], hook["events"].split(), False)
            return status, True

        return await self._write(op)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = await self._deliveries("WHERE d.id = ?", (delivery_id,))
        return rows[0] if rows else None

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Delivery]:
        where = ["d.webhook_id = ?"]
        params: list[Any] = [webhook_id]
        if status is not None:
            where.append("d.status = ?")
            params.append(status.value)
        if after is not None:
            stamp = iso(after[0])
            where.append("(d.created_at < ? OR (d.created_at = ? AND d.id < ?))")
            params.extend([stamp, stamp, after[1]])
        return await self._deliveries(
            "WHERE " + " AND ".join(where) + " ORDER BY d.created_at DESC, d.id DESC LIMIT ?",
            (*params, limit),
        )

    async def _deliveries(self, tail: str, params: Iterable[Any]) -> list[Delivery]:
        args = tuple(params)

        def op(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
                f"JOIN events e ON e.id = d.event_id {tail}",
                args,
            ).fetchall()
            found = [records.delivery(r, SQLITE) for r in rows]
            by_id = {d.id: d for d in found}
            if by_id:
                marks = ", ".join("?" * len(by_id))
                attempts = db.execute(
                    f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks}) "
                    "ORDER BY attempt",
                    tuple(by_id),
                )
                records.add_history(by_id, attempts, SQLITE)
            return found

        return await self._read(op)

    async def replay_delivery(self, delivery_id: str, now: datetime) -> Delivery | None:
        def op(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, "
                "max_attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (iso(now), iso(now), delivery_id),
            )
            return cur.rowcount

        if not await self._write(op):
            return None
        return await self.get_delivery(delivery_id)

    async def purge_deliveries(self, before: datetime) -> int:
        def op(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "DELETE FROM webhook_deliveries WHERE status != 'pending' AND updated_at < ?",
                (iso(before),),
            )
            db.execute(
                "DELETE FROM events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id)",
                (iso(before),),
            )
            return cur.rowcount

        return await self._write(op)


def _page_where(
    equals: list[tuple[str, str | None]],
    since: datetime | None,
    after: tuple[datetime, str] | None,
) -> tuple[str, list[str]]:
    """WHERE clause for a newest-first keyset page: equality filters, a lower time bound,
    and the (created_at, id) cursor of the previous page."""
    where: list[str] = []
    params: list[str] = []
    for column, value in equals:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("created_at >= ?")
        params.append(iso(since) or "")
    if after is not None:
        stamp = iso(after[0]) or ""
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend([stamp, stamp, after[1]])
    return ("WHERE " + " AND ".join(where)) if where else "", params


class _Abort(Exception):
    """Rolls back a transaction whose precondition did not hold."""
