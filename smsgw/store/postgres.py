"""PostgreSQL store (asyncpg): the production engine when several hub nodes share one database.

Same contract as ``SqliteStore``. SQLite serialises every write on one thread; here many
nodes write at once, so every compare-and-set is a conditional ``UPDATE ... RETURNING``
(the row lock it takes plus PostgreSQL's re-check of the ``WHERE`` clause on the newest
row version under READ COMMITTED make a second racer see the winner's row and match
nothing), or a transaction that starts with ``SELECT ... FOR UPDATE`` when the decision
needs the current row. Transactions lock rows in one order (messages, attempts, devices,
affinity) so nodes do not deadlock each other; a deadlock PostgreSQL still detects is
retried.

Each write runs to completion even if its caller is cancelled (like the SQLite writer),
so a client giving up never leaves the outcome to a half-sent query. ``synchronous_commit``
is left at the server's default: a commit is durable before the hub acts on it.

``SMSGW_DATABASE_URL=postgresql://user@host:5432/db?schema=name`` puts the hub's tables in
schema ``name`` (created if missing); without it they go where the server's
``search_path`` says (normally ``public``). Migrations run under a session advisory lock
keyed by the schema, so nodes starting together apply each one exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

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
from smsgw.store.rows import DELIVERY_COLUMNS, MESSAGE_COLUMNS, MESSAGE_FIELDS, POSTGRES

T = TypeVar("T")

# The class half of the (class, hashtext(device id)) advisory locks that order a phone's
# removal against inserts of messages on offer to it. The two-key space does not overlap
# the single 64-bit key of the migration lock.
DEVICE_LOCK_CLASS = 0x534D  # "SM"
# A pooled connection is a proxy; both run the same queries.
Conn = asyncpg.Connection | PoolConnectionProxy
Row = asyncpg.Record

log = logging.getLogger(__name__)

# Deadlocks are resolved by PostgreSQL aborting one transaction; the loser is re-run.
DEADLOCK_RETRIES = 5

# Webhook changes are announced on this channel (payload: the schema) so every node's
# subscription cache follows at once; the periodic reload covers a lost listener.
NOTIFY_CHANNEL = "smsgw_webhooks"
SUBSCRIPTIONS_RELOAD = 10.0
PING_TIMEOUT = 5.0

# Set by a transaction that queued webhook deliveries (read after its commit).
_events_written: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "smsgw_pg_events_written", default=False
)


def split_url(url: str) -> tuple[str, str | None]:
    """The DSN for asyncpg and the schema named by its ``schema`` query parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value or None
        else:
            rest.append((key, value))
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return dsn, schema


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lock_key(schema: str | None) -> int:
    """A 64-bit advisory lock key for migrating this schema (other schemas migrate freely)."""
    digest = hashlib.sha256(f"smsgw-migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _message_record(m: Message) -> tuple[Any, ...]:
    """The values of ``MESSAGE_FIELDS``, in order (for INSERT and COPY)."""
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
        _json_or_none(m.metadata),
        m.encoding,
        m.sensitive,
        m.template_id,
        m.batch_id,
        m.callback_url,
    )


def _day(now: datetime) -> str:
    return now.date().isoformat()


async def _reset_for_reuse(conn: Conn) -> None:
    """What a pooled connection needs before its next use: nothing, unless a transaction
    was left open (a rollback that never ran).

    asyncpg's default reset sends ``UNLISTEN *; RESET ALL; CLOSE ALL;
    pg_advisory_unlock_all()`` on every release: one more round trip per transaction and
    per read, for state this store never leaves on a pooled connection (the listener and
    migrations have connections of their own; its advisory locks are per transaction;
    it runs no SET and no cursors outside a transaction)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reloading webhook subscriptions failed: %s", task.exception())


class _Abort(Exception):
    """Rolls back a transaction whose precondition did not hold."""


class PostgresStore(Store):
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = split_url(url)
        self.min_size = min(min_size, max_size)
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        # Writes in progress, shielded from their callers' cancellation; close() waits.
        self._inflight: set[asyncio.Task[Any]] = set()
        # Who wants which event, kept in memory so a transition that nobody listens to
        # writes and reads nothing extra. Other nodes change webhooks too: see
        # _watch_subscriptions. (A message's callback_url needs no cache here: every
        # transition reads it back from the row it changed.)
        self._subs = Subscriptions()
        self._listener: asyncpg.Connection | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- plumbing -------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "smsgw"}
        if self.schema:
            settings["search_path"] = quote_ident(self.schema)
        return settings

    async def open(self) -> None:
        await self.migrate()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            server_settings=self._server_settings(),
            reset=_reset_for_reuse,
        )
        await self._reload_subscriptions()
        await self._listen()
        self._watcher = asyncio.create_task(self._watch_subscriptions())

    async def _reload_subscriptions(self) -> None:
        rows = await self._fetch("SELECT id, url, events, enabled FROM webhooks")
        self._subs.load((r["id"], r["url"], r["events"].split(), r["enabled"]) for r in rows)

    async def _listen(self) -> None:
        """A connection of its own LISTENs for webhook changes made by any node."""
        try:
            conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings())
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("webhook change listener unavailable (%s); polling only", exc)
            return
        self._listener = conn

    def _on_notify(self, conn: Conn, pid: int, channel: str, payload: object) -> None:
        if payload == (self.schema or "") and self._pool is not None:
            task = asyncio.ensure_future(self._reload_subscriptions())
            task.add_done_callback(_log_failure)

    async def _watch_subscriptions(self) -> None:
        """Backstop for a missed notification or a dropped listener connection."""
        while True:
            await asyncio.sleep(SUBSCRIPTIONS_RELOAD)
            try:
                if self._listener is None or self._listener.is_closed():
                    self._listener = None
                    await self._listen()
                await self._reload_subscriptions()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("reloading webhook subscriptions failed: %s", exc)

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; returns what was applied.

        A session advisory lock serialises nodes migrating the same schema: the second
        waits, then finds every version recorded. The lock dies with the connection, so
        a node killed mid-migration does not wedge the others.
        """
        conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings())
        applied: list[str] = []
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(self.schema))
            try:
                if self.schema:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
                )
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for mig in load_migrations("postgres"):
                    if mig.version in done:
                        continue
                    sql = mig.sql()  # a small local file, read once per version
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, applied_at) "
                            "VALUES ($1, now())",
                            mig.version,
                        )
                    applied.append(mig.version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(self.schema))
        finally:
            await conn.close()
        return applied

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await listener.close(timeout=5)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()

    async def ping(self) -> None:
        # Bounded: readiness must say "no" promptly, not hang on a dead server.
        await asyncio.wait_for(self._p().fetchval("SELECT 1"), PING_TIMEOUT)

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._p().fetch(sql, *args)
        return rows

    async def _fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._p().fetchrow(sql, *args)
        return row

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction, to completion even if the caller is cancelled."""
        pool = self._p()

        async def run() -> T:
            for attempt in range(DEADLOCK_RETRIES):
                _events_written.set(False)  # this task's own context: no cross-talk
                try:
                    async with pool.acquire() as conn:
                        async with conn.transaction():
                            result = await fn(conn)
                        # Committed: the deliveries are visible, wake the local worker.
                        if _events_written.get() and self.on_events is not None:
                            self.on_events()
                        return result
                except asyncpg.DeadlockDetectedError:
                    if attempt == DEADLOCK_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.001 * (attempt + 1))
            raise AssertionError("unreachable")

        task = asyncio.ensure_future(run())
        self._inflight.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        # A write whose caller was cancelled has nobody to raise to: log, don't lose it.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("store write failed: %r", exc)

    async def _exec(self, sql: str, *args: Any) -> int:
        """One write statement in its own transaction; the number of rows it changed."""

        async def op(conn: Conn) -> int:
            return _count(await conn.execute(sql, *args))

        return await self._tx(op)

    # -- client API keys ------------------------------------------------------------

    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        await self._exec(
            "INSERT INTO api_keys (id, name, prefix, key_hash, scopes, created_at, "
            "rate_limit_rpm, daily_message_limit) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            key.id,
            key.name,
            key.prefix,
            key_hash,
            " ".join(sorted(key.scopes)),
            key.created_at,
            key.rate_limit_rpm,
            key.daily_message_limit,
        )

    async def api_key_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        row = await self._fetchrow(
            "SELECT * FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL", prefix
        )
        return (records.api_key(row, POSTGRES), row["key_hash"]) if row else None

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._fetch("SELECT * FROM api_keys ORDER BY created_at, id")
        return [records.api_key(r, POSTGRES) for r in rows]

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        n = await self._exec(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            key_id,
        )
        return n == 1

    async def has_admin_key(self) -> bool:
        rows = await self._fetch("SELECT scopes FROM api_keys WHERE revoked_at IS NULL")
        return any("admin" in r[0].split() for r in rows)

    # -- enrollment and devices -----------------------------------------------------

    async def create_enrollment_code(
        self, code_hash: str, now: datetime, expires_at: datetime
    ) -> None:
        await self._exec(
            "INSERT INTO enrollment_codes (code_hash, created_at, expires_at) VALUES ($1, $2, $3)",
            code_hash,
            now,
            expires_at,
        )

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
        async def op(conn: Conn) -> tuple[Device, bool]:
            # An upsert rather than SELECT-then-INSERT: two registrations of one new
            # phone racing on two nodes both end on the same row instead of one failing.
            # xmax = 0 only on a freshly inserted row version.
            row = await conn.fetchrow(
                "INSERT INTO devices (id, name, hardware_id, token_prefix, token_hash, sims, "
                "fcm_token, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) "
                "ON CONFLICT (hardware_id) DO UPDATE SET name = excluded.name, "
                "token_prefix = excluded.token_prefix, token_hash = excluded.token_hash, "
                "sims = excluded.sims, "
                "fcm_token = COALESCE(excluded.fcm_token, devices.fcm_token), "
                "updated_at = excluded.updated_at, revoked_at = NULL "
                "RETURNING *, (xmax = 0) AS created",
                device_id,
                name,
                hardware_id,
                token_prefix,
                token_hash,
                json.dumps(sims),
                fcm_token,
                now,
            )
            assert row is not None
            if enrollment_code_hash is not None:
                status = await conn.execute(
                    "UPDATE enrollment_codes SET used_at = $1, device_id = $2 "
                    "WHERE code_hash = $3 AND used_at IS NULL AND expires_at > $1",
                    now,
                    row["id"],
                    enrollment_code_hash,
                )
                if _count(status) != 1:
                    raise _Abort()  # rolls the device write back too
            return records.device(row, POSTGRES), bool(row["created"])

        try:
            return await self._tx(op)
        except _Abort:
            return None

    async def device_by_token_prefix(self, prefix: str) -> tuple[Device, str] | None:
        row = await self._fetchrow(
            "SELECT * FROM devices WHERE token_prefix = $1 AND revoked_at IS NULL", prefix
        )
        return (records.device(row, POSTGRES), row["token_hash"]) if row else None

    async def get_device(self, device_id: str) -> Device | None:
        row = await self._fetchrow(
            "SELECT * FROM devices WHERE id = $1 AND revoked_at IS NULL", device_id
        )
        return records.device(row, POSTGRES) if row else None

    async def list_devices(self) -> list[Device]:
        rows = await self._fetch(
            "SELECT * FROM devices WHERE revoked_at IS NULL ORDER BY created_at, id"
        )
        return [records.device(r, POSTGRES) for r in rows]

    _UPDATABLE = frozenset({"name", "enabled", "daily_quota", "fcm_token", "sims", "app_version"})

    async def update_device(self, device_id: str, now: datetime, **fields: Any) -> Device | None:
        unknown = set(fields) - self._UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {
            k: (json.dumps(v) if k == "sims" else bool(v) if k == "enabled" else v)
            for k, v in fields.items()
        }
        if not values:
            return await self.get_device(device_id)
        # Column names come from the allow-list above, never from the caller's strings.
        assignments = ", ".join(f"{k} = ${i}" for i, k in enumerate(values, start=3))
        row = await self._tx(
            lambda conn: conn.fetchrow(
                f"UPDATE devices SET {assignments}, updated_at = $2 "
                "WHERE id = $1 AND revoked_at IS NULL RETURNING *",
                device_id,
                now,
                *values.values(),
            )
        )
        return records.device(row, POSTGRES) if row else None

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
        types = device_event_types(offline=offline)

        async def op(conn: Conn) -> None:
            before = await self._battery_before(conn, device_id, types)
            row = await conn.fetchrow(
                "UPDATE devices SET battery = $1, charging = $2, signal = $3, network = $4, "
                "last_seen_at = $5 WHERE id = $6 RETURNING *",
                battery,
                charging,
                signal,
                network,
                now,
                device_id,
            )
            if row is not None and before is not None:
                await self._device_events(conn, row, before[0], types, now)

        await self._tx(op)

    async def _battery_before(
        self, conn: Conn, device_id: str, types: list[EventType]
    ) -> tuple[int | None] | None:
        """The battery level before this report, when a device event may be wanted (the
        row is locked so a racing report cannot make both see the same "before")."""
        if not any(self._subs.wanted(t) for t in types):
            return None
        row = await conn.fetchrow("SELECT battery FROM devices WHERE id = $1 FOR UPDATE", device_id)
        return (row["battery"],) if row is not None else None

    async def _device_events(
        self,
        conn: Conn,
        row: Row,
        battery_before: int | None,
        types: list[EventType],
        now: datetime,
    ) -> None:
        device = records.device(row, POSTGRES)
        online = EventType.DEVICE_ONLINE in types
        offline = EventType.DEVICE_OFFLINE in types
        for t, data in device_events(device, battery_before, online=online, offline=offline):
            await self._event(conn, t, device.id, data, now)

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
        types = device_event_types(online=True)

        async def op(conn: Conn) -> tuple[Device, list[Message]] | None:
            before = await self._battery_before(conn, device_id, types)
            device = await conn.fetchrow(
                "UPDATE devices SET sims = $1, app_version = $2, "
                "fcm_token = COALESCE($3, fcm_token), battery = $4, charging = $5, "
                "signal = $6, network = $7, last_seen_at = $8, updated_at = $8 "
                "WHERE id = $9 RETURNING *",
                json.dumps(sims),
                app_version,
                fcm_token,
                battery,
                charging,
                signal,
                network,
                now,
                device_id,
            )
            if device is None or device["revoked_at"] is not None:
                return None
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "
                "WHERE device_id = $1 AND status = 'QUEUED'",
                device_id,
            )
            if before is not None:
                await self._device_events(conn, device, before[0], types, now)
            return records.device(device, POSTGRES), [records.message(r, POSTGRES) for r in rows]

        return await self._tx(op)

    async def delete_device(self, device_id: str, now: datetime) -> bool:
        async def op(conn: Conn) -> bool:
            # Excludes a concurrent insert of a message on offer to this phone (see
            # create_message), so the sweep below cannot miss it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", DEVICE_LOCK_CLASS, device_id
            )
            # Messages first, then attempts, then the device: the order every transaction
            # here locks rows in, so a report racing the removal cannot deadlock with it.
            await conn.execute(
                "UPDATE messages SET status = 'PENDING', device_id = NULL, lease_until = NULL, "
                "queued_at = NULL, updated_at = $1 "
                "WHERE device_id = $2 AND status IN ('PENDING', 'QUEUED')",
                now,
                device_id,
            )
            # A message pinned to a removed phone can never leave: fail it visibly.
            failed = await conn.fetch(
                "UPDATE messages SET status = 'FAILED', error_code = $3, error = $4, "
                "failed_at = $1, updated_at = $1 WHERE pinned_device_id = $2 "
                f"AND status = 'PENDING' RETURNING {MESSAGE_COLUMNS}",
                now,
                device_id,
                DEVICE_REMOVED,
                DEVICE_REMOVED_ERROR,
            )
            for r in failed:
                await self._message_event(conn, EventType.MESSAGE_FAILED, r, now)
            await conn.execute(
                "UPDATE message_attempts SET ended_at = $1, outcome = $2 "
                "WHERE device_id = $3 AND ended_at IS NULL",
                now,
                DEVICE_REMOVED,
                device_id,
            )
            status = await conn.execute(
                "UPDATE devices SET revoked_at = $1, token_prefix = NULL, token_hash = NULL, "
                "updated_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                now,
                device_id,
            )
            if _count(status) != 1:
                raise _Abort()  # unknown or already removed: undo the message updates
            return True

        try:
            return await self._tx(op)
        except _Abort:
            return False

    # -- messages -------------------------------------------------------------------

    _INSERT_MESSAGE = (
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES "
        f"({', '.join(f'${i}' for i in range(1, len(MESSAGE_FIELDS) + 1))})"
    )
    _INSERT_OFFERED_MESSAGE = (
        f"WITH m AS ({_INSERT_MESSAGE} RETURNING id, created_at) "
        "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at, accepted_at) "
        f"SELECT id, 1, ${len(MESSAGE_FIELDS) + 1}::text, created_at, "
        f"${len(MESSAGE_FIELDS) + 2}::timestamptz FROM m"
    )

    async def create_message(
        self,
        message: Message,
        *,
        offer_to: str | None = None,
        lease_until: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> bool:
        if offer_to is None:

            async def plain_op(conn: Conn) -> None:
                await self._insert_message(conn, message, None)

            await self._tx(plain_op)
            return True
        device_id, now = offer_to, utcnow()
        first_offer(message, device_id, lease_until, accepted_at)

        async def op(conn: Conn) -> bool:
            # Shared with other inserts, exclusive in delete_device: a removal either
            # waits for this transaction (and then its sweep sees the message) or went
            # first (and is seen below). An advisory lock, not the device row, because
            # the removal locks that row last, after the messages it sweeps.
            await conn.execute(
                "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))",
                DEVICE_LOCK_CLASS,
                device_id,
            )
            removed = await conn.fetchval(
                "SELECT 1 FROM devices WHERE id = $1 AND revoked_at IS NOT NULL", device_id
            )
            if removed is not None:  # see Store.create_message
                if accepted_at is None:
                    plain = replace(message)
                    offered_to_removed(plain, device_id, now)
                    await self._insert_message(conn, plain, None)
                    if plain.status is Status.FAILED and self._subs.targets(
                        EventType.MESSAGE_FAILED, plain.callback_url
                    ):
                        data = message_data(plain)
                        await self._event(
                            conn, EventType.MESSAGE_FAILED, plain.id, data, now, plain.callback_url
                        )
                return False
            await self._insert_message(conn, message, device_id, accepted_at)
            return True

        return await settle_first_offer(message, device_id, accepted_at, now, self._tx(op))

    async def _insert_message(
        self, conn: Conn, m: Message, offer_to: str | None, accepted_at: datetime | None = None
    ) -> None:
        if offer_to is None:
            await conn.execute(self._INSERT_MESSAGE, *_message_record(m))
        else:  # one statement, one round trip: the message and its first attempt
            await conn.execute(
                self._INSERT_OFFERED_MESSAGE, *_message_record(m), offer_to, accepted_at
            )
        if accepted_at is not None and self._subs.targets(EventType.MESSAGE_QUEUED, m.callback_url):
            await self._event(
                conn, EventType.MESSAGE_QUEUED, m.id, message_data(m), accepted_at, m.callback_url
            )

    async def get_message(self, message_id: str, *, with_attempts: bool = False) -> Message | None:
        row = await self._fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
        )
        if row is None:
            return None
        msg = records.message(row, POSTGRES)
        if with_attempts:
            rows = await self._fetch(
                "SELECT * FROM message_attempts WHERE message_id = $1 ORDER BY attempt",
                message_id,
            )
            msg.attempts = [records.attempt(r, POSTGRES) for r in rows]
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
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages {clause} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(params) + 1}",
            *params,
            flt.limit,
        )
        return [records.message(r, POSTGRES) for r in rows]

    async def due_messages(self, now: datetime, limit: int) -> list[Message]:
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS}, (SELECT a.device_id FROM recipient_affinity a "
            "WHERE a.recipient = messages.recipient) AS last_device "
            "FROM messages WHERE status = 'PENDING' "
            "AND (lease_until IS NULL OR lease_until <= $1) "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= $1) "
            "ORDER BY priority DESC, created_at, id LIMIT $2",
            now,
            limit,
        )
        messages = []
        for r in rows:
            msg = records.message(r, POSTGRES)
            msg.last_device = r["last_device"]
            messages.append(msg)
        return messages

    async def owned_unfinished(self, device_id: str) -> list[Message]:
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE device_id = $1 AND status = 'QUEUED'",
            device_id,
        )
        return [records.message(r, POSTGRES) for r in rows]

    async def offer(
        self,
        message_id: str,
        device_id: str,
        expected_attempt: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        async def op(conn: Conn) -> bool:
            # The CAS. A node racing this UPDATE blocks on the row lock, then PostgreSQL
            # re-evaluates the WHERE on the committed row: attempt has moved on, no match.
            row = await conn.fetchrow(
                "UPDATE messages SET attempt = attempt + 1, device_id = $1, lease_until = $2, "
                "updated_at = $3 WHERE id = $4 AND status = 'PENDING' AND attempt = $5 "
                "AND (lease_until IS NULL OR lease_until <= $3) RETURNING attempt",
                device_id,
                lease_until,
                now,
                message_id,
                expected_attempt,
            )
            if row is None:
                return False
            await conn.execute(
                "INSERT INTO message_attempts (message_id, attempt, device_id, offered_at) "
                "VALUES ($1, $2, $3, $4)",
                message_id,
                row["attempt"],
                device_id,
                now,
            )
            return True

        return await self._tx(op)

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
        exhausted = attempt >= max_attempts

        async def op(conn: Conn) -> Status | None:
            if exhausted:
                row = await conn.fetchrow(
                    "UPDATE messages SET status = 'FAILED', device_id = NULL, lease_until = NULL, "
                    "error_code = 'max_attempts', error = $1, failed_at = $2, updated_at = $2 "
                    "WHERE id = $3 AND status = 'PENDING' AND attempt = $4 AND device_id = $5 "
                    f"RETURNING {MESSAGE_COLUMNS}",
                    f"no phone took the message after {attempt} attempts (last: {outcome})",
                    now,
                    message_id,
                    attempt,
                    device_id,
                )
            else:
                row = await conn.fetchrow(
                    "UPDATE messages SET device_id = NULL, lease_until = NULL, "
                    "next_attempt_at = $1, updated_at = $2 "
                    "WHERE id = $3 AND status = 'PENDING' AND attempt = $4 AND device_id = $5 "
                    f"RETURNING {MESSAGE_COLUMNS}",
                    retry_at,
                    now,
                    message_id,
                    attempt,
                    device_id,
                )
            if row is None:
                return None
            await _end_attempt(conn, message_id, attempt, outcome, now)
            if exhausted:
                await self._message_event(conn, EventType.MESSAGE_FAILED, row, now)
            return Status.FAILED if exhausted else Status.PENDING

        return await self._tx(op)

    async def accept(self, message_id: str, device_id: str, attempt: int, now: datetime) -> bool:
        async def op(conn: Conn) -> bool:
            row = await conn.fetchrow(
                "UPDATE messages SET status = 'QUEUED', lease_until = NULL, queued_at = $1, "
                "updated_at = $1 WHERE id = $2 AND status = 'PENDING' AND attempt = $3 "
                f"AND device_id = $4 RETURNING {MESSAGE_COLUMNS}",
                now,
                message_id,
                attempt,
                device_id,
            )
            if row is not None:
                await conn.execute(
                    "UPDATE message_attempts SET accepted_at = $1 "
                    "WHERE message_id = $2 AND attempt = $3",
                    now,
                    message_id,
                    attempt,
                )
                await self._message_event(conn, EventType.MESSAGE_QUEUED, row, now)
                return True
            # Idempotent: a repeated accept of what this phone already owns.
            owned = await conn.fetchval(
                "SELECT 1 FROM messages WHERE id = $1 AND device_id = $2 AND attempt = $3 "
                "AND status IN ('QUEUED', 'SENT', 'DELIVERED')",
                message_id,
                device_id,
                attempt,
            )
            return owned is not None

        return await self._tx(op)

    # The hot path's second write in one statement (one round trip, not four): the
    # message, its attempt, the phone's daily count and the recipient's affinity, locked
    # in that order, as mark_delivered and the separate statements before lock them.
    # PostgreSQL runs sub-statements that nothing reads in an order of its own (it was
    # affinity, device, attempt); each one here reads the one before it (a count, so it
    # runs whatever that matched), which fixes the order. tests/smsgw/store/test_postgres.py
    # checks it.
    _MARK_SENT = (
        "WITH m AS (UPDATE messages SET status = 'SENT', sent_at = $1, updated_at = $1 "
        "WHERE id = $2 AND device_id = $3 AND status = 'QUEUED' "
        f"RETURNING {MESSAGE_COLUMNS}), "
        "a AS (UPDATE message_attempts SET ended_at = $1, outcome = 'sent', error_code = NULL, "
        "error = NULL WHERE message_id = $2 AND attempt = (SELECT attempt FROM m) "
        "AND ended_at IS NULL RETURNING 1), "
        "d AS (UPDATE devices SET sent_day = $4, "
        "sent_today = CASE WHEN sent_day = $4 THEN sent_today + 1 ELSE 1 END "
        "WHERE id = $3 AND EXISTS (SELECT 1 FROM m) AND (SELECT count(*) FROM a) >= 0 "
        "RETURNING 1), "
        "r AS (INSERT INTO recipient_affinity (recipient, device_id, updated_at) "
        "SELECT recipient, $3, $1 FROM m WHERE (SELECT count(*) FROM d) >= 0 "
        "ON CONFLICT (recipient) DO UPDATE SET "
        "device_id = excluded.device_id, updated_at = excluded.updated_at) "
        "SELECT * FROM m"
    )

    async def mark_sent(self, message_id: str, device_id: str, now: datetime) -> str | None:
        async def op(conn: Conn) -> str | None:
            row = await conn.fetchrow(self._MARK_SENT, now, message_id, device_id, _day(now))
            if row is None:
                return None
            await self._message_event(conn, EventType.MESSAGE_SENT, row, now)
            return str(row["recipient"])

        return await self._tx(op)

    async def mark_delivered(self, message_id: str, device_id: str, now: datetime) -> bool:
        async def op(conn: Conn) -> bool:
            # FOR UPDATE: whether it was already counted as sent must be read from the row
            # this transaction then changes, not from an older snapshot.
            row = await conn.fetchrow(
                "SELECT attempt, sent_at FROM messages WHERE id = $1 AND device_id = $2 "
                "AND status IN ('QUEUED', 'SENT') FOR UPDATE",
                message_id,
                device_id,
            )
            if row is None:
                return False
            # A delivery report may overtake the sent report; it implies sent.
            updated = await conn.fetchrow(
                "UPDATE messages SET status = 'DELIVERED', delivered_at = $1, "
                f"sent_at = COALESCE(sent_at, $1), updated_at = $1 WHERE id = $2 "
                f"RETURNING {MESSAGE_COLUMNS}",
                now,
                message_id,
            )
            assert updated is not None  # locked above
            await _end_attempt(conn, message_id, row["attempt"], "sent", now)
            if row["sent_at"] is None:
                await _count_sent(conn, device_id, now)
            await self._message_event(conn, EventType.MESSAGE_DELIVERED, updated, now)
            return True

        return await self._tx(op)

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
        async def op(conn: Conn) -> Status | None:
            row = await conn.fetchrow(
                "SELECT status, attempt FROM messages WHERE id = $1 AND device_id = $2 FOR UPDATE",
                message_id,
                device_id,
            )
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
            final: Row | None = None
            if again:
                await conn.execute(
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
                final = await conn.fetchrow(
                    "UPDATE messages SET status = 'FAILED', lease_until = NULL, error_code = $1, "
                    f"error = $2, failed_at = $3, updated_at = $3 WHERE id = $4 "
                    f"RETURNING {MESSAGE_COLUMNS}",
                    error_code,
                    error,
                    now,
                    message_id,
                )
            await _end_attempt(
                conn,
                message_id,
                current,
                "failed_retryable" if retryable else "failed",
                now,
                error_code,
                error,
            )
            if not again:
                assert final is not None  # locked above
                await self._message_event(conn, EventType.MESSAGE_FAILED, final, now)
            return Status.PENDING if again else Status.FAILED

        return await self._tx(op)

    async def cancel_message(self, message_id: str, now: datetime) -> Message | None:
        async def op(conn: Conn) -> Message | None:
            row = await conn.fetchrow(
                "UPDATE messages SET status = 'CANCELLED', cancelled_at = $1, "
                "lease_until = NULL, updated_at = $1 WHERE id = $2 AND status = 'PENDING' "
                f"RETURNING {MESSAGE_COLUMNS}",
                now,
                message_id,
            )
            if row is not None:
                await _end_attempt(conn, message_id, row["attempt"], "cancelled", now)
                await self._message_event(conn, EventType.MESSAGE_CANCELLED, row, now)
                return records.message(row, POSTGRES)
            found = await conn.fetchrow(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
            )
            return records.message(found, POSTGRES) if found else None

        return await self._tx(op)

    # -- idempotency ------------------------------------------------------------------

    async def idempotency_claim(
        self, owner: str, key: str, request_hash: str, now: datetime, abandoned_before: datetime
    ) -> IdempotencyRecord | None:
        async def op(conn: Conn) -> IdempotencyRecord | None:
            # ON CONFLICT waits for a racing claim of the same key to commit and locks the
            # row even when its WHERE says no, so the SELECT below sees that row as it is.
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys (owner, key, request_hash, created_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (owner, key) DO UPDATE SET "
                "request_hash = excluded.request_hash, created_at = excluded.created_at "
                "WHERE idempotency_keys.status_code IS NULL "
                "AND idempotency_keys.created_at < $5 RETURNING 1",
                owner,
                key,
                request_hash,
                now,
                abandoned_before,
            )
            if claimed is not None:
                return None
            row = await conn.fetchrow(
                "SELECT request_hash, status_code, response FROM idempotency_keys "
                "WHERE owner = $1 AND key = $2",
                owner,
                key,
            )
            assert row is not None
            return IdempotencyRecord(row[0], row[1], row[2])

        return await self._tx(op)

    async def idempotency_complete(
        self, owner: str, key: str, status_code: int, response: str
    ) -> None:
        await self._exec(
            "UPDATE idempotency_keys SET status_code = $1, response = $2 "
            "WHERE owner = $3 AND key = $4",
            status_code,
            response,
            owner,
            key,
        )

    async def idempotency_release(self, owner: str, key: str) -> None:
        await self._exec(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status_code IS NULL",
            owner,
            key,
        )

    async def purge_idempotency(self, before: datetime) -> int:
        return await self._exec("DELETE FROM idempotency_keys WHERE created_at < $1", before)

    # -- templates --------------------------------------------------------------------

    async def create_template(self, template: Template) -> None:
        t = template
        try:
            await self._exec(
                "INSERT INTO templates (id, name, body, category, active, usage_count, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                t.id,
                t.name,
                t.body,
                t.category,
                t.active,
                t.usage_count,
                t.created_at,
                t.updated_at,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a template named {t.name!r} exists") from None

    async def get_template(self, template_id: str) -> Template | None:
        row = await self._fetchrow("SELECT * FROM templates WHERE id = $1", template_id)
        return records.template(row, POSTGRES) if row else None

    async def list_templates(
        self, *, category: str | None = None, active: bool | None = None
    ) -> list[Template]:
        where: list[str] = []
        params: list[Any] = []
        if category is not None:
            params.append(category)
            where.append(f"category = ${len(params)}")
        if active is not None:
            params.append(active)
            where.append(f"active = ${len(params)}")
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = await self._fetch(f"SELECT * FROM templates {clause} ORDER BY name", *params)
        return [records.template(r, POSTGRES) for r in rows]

    async def update_template(
        self, template_id: str, now: datetime, **fields: Any
    ) -> Template | None:
        unknown = set(fields) - {"name", "body", "category", "active"}
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not fields:
            return await self.get_template(template_id)
        values = {k: (bool(v) if k == "active" else v) for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ${i}" for i, k in enumerate(values, start=3))
        try:
            row = await self._tx(
                lambda conn: conn.fetchrow(
                    f"UPDATE templates SET {assignments}, updated_at = $2 WHERE id = $1 "
                    "RETURNING *",
                    template_id,
                    now,
                    *values.values(),
                )
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a template named {fields.get('name')!r} exists") from None
        return records.template(row, POSTGRES) if row else None

    async def delete_template(self, template_id: str) -> bool:
        return await self._exec("DELETE FROM templates WHERE id = $1", template_id) == 1

    async def count_template_use(self, template_id: str, n: int = 1) -> None:
        await self._exec(
            "UPDATE templates SET usage_count = usage_count + $1 WHERE id = $2", n, template_id
        )

    # -- one-time passwords -------------------------------------------------------------

    async def create_otp(self, otp: Otp, message: Message) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "UPDATE otp_codes SET superseded_at = $1 WHERE recipient = $2 "
                "AND superseded_at IS NULL AND verified_at IS NULL",
                otp.created_at,
                otp.recipient,
            )
            await self._insert_message(conn, message, None)
            await conn.execute(
                "INSERT INTO otp_codes (id, recipient, code_hash, message_id, attempts, "
                "max_attempts, created_at, expires_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7)",
                otp.id,
                otp.recipient,
                otp.code_hash,
                otp.message_id,
                otp.max_attempts,
                otp.created_at,
                otp.expires_at,
            )

        await self._tx(op)

    async def otp_sends_since(self, recipient: str, since: datetime) -> list[datetime]:
        rows = await self._fetch(
            "SELECT created_at FROM otp_codes WHERE recipient = $1 AND created_at >= $2 "
            "ORDER BY created_at DESC",
            recipient,
            since,
        )
        return [r[0] for r in rows]

    async def get_otp(self, otp_id: str) -> Otp | None:
        row = await self._fetchrow("SELECT * FROM otp_codes WHERE id = $1", otp_id)
        return records.otp(row, POSTGRES) if row else None

    async def latest_otp(self, recipient: str) -> Otp | None:
        row = await self._fetchrow(
            "SELECT * FROM otp_codes WHERE recipient = $1 AND superseded_at IS NULL "
            "ORDER BY created_at DESC LIMIT 1",
            recipient,
        )
        return records.otp(row, POSTGRES) if row else None

    async def record_otp_attempt(self, otp_id: str, correct: bool, now: datetime) -> Otp | None:
        async def op(conn: Conn) -> Otp | None:
            # One conditional UPDATE: two guesses racing on two nodes each count, at most
            # max_attempts of them are ever counted, and only one can verify the code.
            row = await conn.fetchrow(
                "UPDATE otp_codes SET attempts = attempts + 1, "
                "verified_at = CASE WHEN $1 THEN $2::timestamptz ELSE NULL END "
                "WHERE id = $3 AND verified_at IS NULL AND superseded_at IS NULL "
                "AND expires_at > $2 AND attempts < max_attempts RETURNING *",
                correct,
                now,
                otp_id,
            )
            if row is None:
                return None
            otp = records.otp(row, POSTGRES)
            if otp.verified_at is not None:
                await self._event(conn, EventType.OTP_VERIFIED, otp.id, otp_data(otp), now)
            return otp

        return await self._tx(op)

    async def purge_otps(self, before: datetime) -> int:
        return await self._exec("DELETE FROM otp_codes WHERE expires_at < $1", before)

    async def hub_secret(self, name: str, candidate: str) -> str:
        async def op(conn: Conn) -> str:
            await conn.execute(
                "INSERT INTO hub_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                name,
                candidate,
            )
            # A new statement, a new snapshot: it sees a racing node's committed secret.
            value = await conn.fetchval("SELECT value FROM hub_secrets WHERE name = $1", name)
            return str(value)

        return await self._tx(op)

    # -- opt-out ----------------------------------------------------------------------

    async def add_opt_out(self, entry: OptOut) -> bool:
        n = await self._exec(
            "INSERT INTO opt_outs (number, source, reason, created_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (number) DO NOTHING",
            entry.number,
            entry.source,
            entry.reason,
            entry.created_at,
        )
        return n == 1

    async def remove_opt_out(self, number: str) -> bool:
        return await self._exec("DELETE FROM opt_outs WHERE number = $1", number) == 1

    async def list_opt_outs(self, *, after: str | None, limit: int) -> list[OptOut]:
        rows = await self._fetch(
            "SELECT * FROM opt_outs WHERE number > $1 ORDER BY number LIMIT $2",
            after or "",
            limit,
        )
        return [records.opt_out(r, POSTGRES) for r in rows]

    async def create_batch(self, batch: Batch, messages: list[Message]) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO batches (id, name, total, rejected, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                batch.id,
                batch.name,
                batch.total,
                batch.rejected,
                batch.created_at,
            )
            if messages:
                # COPY: up to 10,000 rows in one round trip, inside the same transaction.
                await conn.copy_records_to_table(
                    "messages",
                    records=[_message_record(m) for m in messages],
                    columns=list(MESSAGE_FIELDS),
                    schema_name=self.schema,
                )

        await self._tx(op)

    async def get_batch(self, batch_id: str) -> Batch | None:
        row = await self._fetchrow("SELECT * FROM batches WHERE id = $1", batch_id)
        if row is None:
            return None
        counts = await self._fetch(
            "SELECT status, count(*) FROM messages WHERE batch_id = $1 GROUP BY status",
            batch_id,
        )
        return records.batch(row, {r[0]: r[1] for r in counts}, POSTGRES)

    async def stats(self, since: datetime, until: datetime) -> Stats:
        async def op(conn: Conn) -> Stats:
            # One snapshot for every count (REPEATABLE READ; read only, so it never waits).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                in_range = "created_at >= $1 AND created_at < $2"
                by_status: dict[str, int] = {
                    r[0]: r[1]
                    for r in await conn.fetch(
                        f"SELECT status, count(*) FROM messages WHERE {in_range} GROUP BY status",
                        since,
                        until,
                    )
                }
                by_day: dict[str, dict[str, int]] = {}
                for day, status, n in await conn.fetch(
                    "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), status, "
                    f"count(*) FROM messages WHERE {in_range} GROUP BY 1, 2",
                    since,
                    until,
                ):
                    by_day.setdefault(day, {})[status] = n
                by_device: dict[str, dict[str, int]] = {}
                for device, status, n in await conn.fetch(
                    f"SELECT device_id, status, count(*) FROM messages WHERE {in_range} "
                    "AND device_id IS NOT NULL AND status != 'PENDING' GROUP BY 1, 2",
                    since,
                    until,
                ):
                    by_device.setdefault(device, {})[status] = n
                reasons: dict[str, int] = {
                    r[0]: r[1]
                    for r in await conn.fetch(
                        "SELECT coalesce(error_code, 'unknown'), count(*) FROM messages "
                        f"WHERE {in_range} AND status = 'FAILED' GROUP BY 1",
                        since,
                        until,
                    )
                }
                inbound = await conn.fetchval(
                    f"SELECT count(*) FROM inbound_messages WHERE {in_range}", since, until
                )
                otp = await conn.fetchrow(
                    f"SELECT count(*), count(verified_at) FROM otp_codes WHERE {in_range}",
                    since,
                    until,
                )
                assert otp is not None
                return Stats(by_status, by_day, by_device, reasons, inbound, otp[0], otp[1])

        async with self._p().acquire() as conn:
            return await op(conn)

    async def expire_messages(self, now: datetime) -> list[str]:
        # SKIP LOCKED: a row another node is expiring, offering or cancelling right now is
        # left alone (the next sweep sees it), and two sweeps never wait on each other's
        # row sets, so they cannot deadlock.
        async def op(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "UPDATE messages SET status = 'FAILED', error_code = 'expired', "
                "device_id = NULL, error = 'no phone sent the message before it expired', "
                "failed_at = $1, updated_at = $1 WHERE id IN ("
                "SELECT id FROM messages WHERE status = 'PENDING' AND expires_at <= $1 "
                "AND (lease_until IS NULL OR lease_until <= $1) "
                "ORDER BY id FOR UPDATE SKIP LOCKED) "
                f"AND status = 'PENDING' RETURNING {MESSAGE_COLUMNS}",
                now,
            )
            for r in rows:
                await self._message_event(conn, EventType.MESSAGE_FAILED, r, now)
            return [r["id"] for r in rows]

        return await self._tx(op)

    async def recent_affinities(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT recipient, device_id FROM recipient_affinity ORDER BY updated_at DESC LIMIT $1",
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    # -- inbound --------------------------------------------------------------------

    async def store_inbound(self, inbound: Inbound) -> bool:
        i = inbound
        i.id = i.id or new_id()

        async def op(conn: Conn) -> bool:
            status = await conn.execute(
                "INSERT INTO inbound_messages (id, device_id, local_id, sender, body, "
                "sim_slot, received_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (device_id, local_id) DO NOTHING",
                i.id,
                i.device_id,
                i.local_id,
                i.sender,
                i.body,
                i.sim_slot,
                i.received_at,
                i.created_at,
            )
            if _count(status) != 1:
                return False
            await self._event(conn, EventType.SMS_RECEIVED, i.id, inbound_data(i), i.created_at)
            return True

        return await self._tx(op)

    async def list_inbound(self, flt: InboundFilter) -> list[Inbound]:
        clause, params = _page_where(
            [("sender", flt.sender), ("device_id", flt.device_id)], flt.since, flt.after
        )
        rows = await self._fetch(
            f"SELECT * FROM inbound_messages {clause} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(params) + 1}",
            *params,
            flt.limit,
        )
        return [records.inbound(r, POSTGRES) for r in rows]

    # -- events and webhooks ----------------------------------------------------------
    # The emitters run inside the transaction that changed the state, so the event
    # commits or rolls back with it.

    async def _event(
        self,
        conn: Conn,
        type_: EventType,
        subject: str,
        data: dict[str, Any],
        now: datetime,
        callback_url: str | None = None,
    ) -> None:
        targets = self._subs.targets(type_, callback_url)
        if targets:
            await _insert_event(conn, make_event(type_, subject, data, now), targets)
            _events_written.set(True)

    async def _message_event(self, conn: Conn, type_: EventType, row: Row, now: datetime) -> None:
        """``row``: the message as this transaction left it (its RETURNING row), so no
        extra read, and its callback_url is seen whichever node stored the message."""
        if not self._subs.targets(type_, row["callback_url"]):
            return
        msg = records.message(row, POSTGRES)
        await self._event(conn, type_, msg.id, message_data(msg), now, msg.callback_url)

    async def _webhooks_changed(self, conn: Conn) -> None:
        # Delivered to every listening node when (and only if) this transaction commits.
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, self.schema or "")

    async def create_webhook(self, hook: Webhook) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO webhooks (id, url, events, description, enabled, secret, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                hook.id,
                hook.url,
                " ".join(sorted(hook.events)),
                hook.description,
                hook.enabled,
                hook.secret,
                hook.created_at,
                hook.updated_at,
            )
            await self._webhooks_changed(conn)

        await self._tx(op)
        self._subs.set(hook.id, hook.url, hook.events, hook.enabled)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self._fetchrow("SELECT * FROM webhooks WHERE id = $1", webhook_id)
        return records.webhook(row, POSTGRES) if row else None

    async def list_webhooks(self) -> list[Webhook]:
        return [
            records.webhook(r, POSTGRES)
            for r in await self._fetch("SELECT * FROM webhooks ORDER BY id")
        ]

    async def update_webhook(self, webhook_id: str, now: datetime, **fields: Any) -> Webhook | None:
        allowed = {"url", "events", "description", "enabled"}
        if unknown := set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(unknown)}")

        async def op(conn: Conn) -> Webhook | None:
            row = await conn.fetchrow("SELECT * FROM webhooks WHERE id = $1 FOR UPDATE", webhook_id)
            if row is None:
                return None
            old = records.webhook(row, POSTGRES)
            values = dict(fields)
            if "events" in values:
                values["events"] = " ".join(sorted(values["events"]))
            if "enabled" in values:
                values["enabled"] = bool(values["enabled"])
                if values["enabled"] and not old.enabled:
                    # Back on: a clean record, and what waited for it goes out now.
                    values.update(failing_since=None, disabled_at=None, disabled_reason=None)
                    await conn.execute(
                        "UPDATE webhook_deliveries SET next_attempt_at = $1 "
                        "WHERE webhook_id = $2 AND status = 'pending'",
                        now,
                        webhook_id,
                    )
            values["updated_at"] = now
            # Column names come from the allow-list above and fixed names.
            sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(values, start=2))
            new = await conn.fetchrow(
                f"UPDATE webhooks SET {sets} WHERE id = $1 RETURNING *",
                webhook_id,
                *values.values(),
            )
            assert new is not None  # locked above
            await self._webhooks_changed(conn)
            return records.webhook(new, POSTGRES)

        hook = await self._tx(op)
        if hook is not None:
            self._subs.set(hook.id, hook.url, hook.events, hook.enabled)
        return hook

    async def rotate_webhook_secret(
        self, webhook_id: str, secret: str, previous_until: datetime, now: datetime
    ) -> Webhook | None:
        row = await self._tx(
            lambda conn: conn.fetchrow(
                "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $1, "
                "secret = $2, updated_at = $3 WHERE id = $4 RETURNING *",
                previous_until,
                secret,
                now,
                webhook_id,
            )
        )
        return records.webhook(row, POSTGRES) if row else None

    async def delete_webhook(self, webhook_id: str) -> bool:
        async def op(conn: Conn) -> int:
            n = _count(await conn.execute("DELETE FROM webhooks WHERE id = $1", webhook_id))
            await self._webhooks_changed(conn)
            return n

        n = await self._tx(op)
        self._subs.remove(webhook_id)
        return n == 1

    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[Delivery]:
        async def op(conn: Conn) -> list[Delivery]:
            # Workers on several nodes claim at once: FOR UPDATE SKIP LOCKED gives each
            # delivery to one of them, and the lease written in the same transaction keeps
            # it (and, through the "oldest pending" rule, its subject's later events) from
            # the others until the lease runs out.
            rows = await conn.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
                "JOIN events e ON e.id = d.event_id "
                "LEFT JOIN webhooks w ON w.id = d.webhook_id "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= $1 "
                "AND (d.webhook_id IS NULL OR w.enabled) "
                "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p "
                "  WHERE p.status = 'pending' AND p.target = d.target "
                "  AND p.subject = d.subject AND p.seq < d.seq) "
                "ORDER BY d.next_attempt_at, d.seq LIMIT $2 FOR UPDATE OF d SKIP LOCKED",
                now,
                limit,
            )
            if rows:
                await conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = ANY($2::text[])",
                    lease_until,
                    [r["id"] for r in rows],
                )
            return [records.delivery(r, POSTGRES) for r in rows]

        return await self._tx(op)

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
        at = attempt.at

        async def op(conn: Conn) -> tuple[DeliveryStatus, bool] | None:
            row = await conn.fetchrow(
                "SELECT attempts, max_attempts, webhook_id, status, next_attempt_at "
                "FROM webhook_deliveries WHERE id = $1 FOR UPDATE",
                delivery_id,
            )
            if row is None or (
                lease is not None
                and (row["status"] != "pending" or row["next_attempt_at"] != lease)
            ):
                return None
            n = row["attempts"] + 1
            status = next_delivery_status(
                succeeded, retry_at, n, row["max_attempts"] or default_max_attempts
            )
            await conn.execute(
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
            await conn.execute(
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
                await conn.execute(
                    "UPDATE webhooks SET failing_since = NULL "
                    "WHERE id = $1 AND failing_since IS NOT NULL",
                    hook_id,
                )
                return status, False
            hook = await conn.fetchrow(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 "
                "RETURNING failing_since, enabled",
                at,
                hook_id,
            )
            if hook is None or not hook["enabled"]:
                return status, False
            failing_for = (at - hook["failing_since"]).total_seconds()
            if failing_for < disable_after:
                return status, False
            await conn.execute(
                "UPDATE webhooks SET enabled = FALSE, disabled_at = $1, disabled_reason = $2, "
                "updated_at = $1 WHERE id = $3",
                at,
                disabled_reason(iso(hook["failing_since"])),
                hook_id,
            )
            await self._webhooks_changed(conn)
            return status, True

        result = await self._tx(op)
        if result is not None and result[1]:
            await self._reload_subscriptions()
        return result

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = await self._deliveries("WHERE d.id = $1", [delivery_id])
        return rows[0] if rows else None

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Delivery]:
        params: list[Any] = [webhook_id]
        where = ["d.webhook_id = $1"]
        if status is not None:
            params.append(status.value)
            where.append(f"d.status = ${len(params)}")
        if after is not None:
            params.extend(after)
            where.append(f"(d.created_at, d.id) < (${len(params) - 1}, ${len(params)})")
        params.append(limit)
        return await self._deliveries(
            "WHERE "
            + " AND ".join(where)
            + f" ORDER BY d.created_at DESC, d.id DESC LIMIT ${len(params)}",
            params,
        )

    async def _deliveries(self, tail: str, params: list[Any]) -> list[Delivery]:
        async with self._p().acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
                f"JOIN events e ON e.id = d.event_id {tail}",
                *params,
            )
            found = [records.delivery(r, POSTGRES) for r in rows]
            by_id = {d.id: d for d in found}
            if by_id:
                attempts = await conn.fetch(
                    "SELECT * FROM webhook_attempts WHERE delivery_id = ANY($1::text[]) "
                    "ORDER BY attempt",
                    list(by_id),
                )
                records.add_history(by_id, attempts, POSTGRES)
        return found

    async def replay_delivery(self, delivery_id: str, now: datetime) -> Delivery | None:
        n = await self._exec(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, "
            "max_attempts = attempts + 1, updated_at = $1 WHERE id = $2",
            now,
            delivery_id,
        )
        if not n:
            return None
        return await self.get_delivery(delivery_id)

    async def purge_deliveries(self, before: datetime) -> int:
        async def op(conn: Conn) -> int:
            n = _count(
                await conn.execute(
                    "DELETE FROM webhook_deliveries WHERE status != 'pending' AND updated_at < $1",
                    before,
                )
            )
            await conn.execute(
                "DELETE FROM events WHERE created_at < $1 AND NOT EXISTS "
                "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id)",
                before,
            )
            return n

        return await self._tx(op)


async def _insert_event(conn: Conn, event: Event, targets: list[Target]) -> None:
    await conn.execute(
        "INSERT INTO events (id, type, subject, created_at, payload) VALUES ($1, $2, $3, $4, $5)",
        event.id,
        event.type,
        event.subject,
        event.created_at,
        event.payload,
    )
    await conn.executemany(
        "INSERT INTO webhook_deliveries (id, event_id, target, webhook_id, subject, url, "
        "next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)",
        [
            (new_id(), event.id, t.key, t.webhook_id, event.subject, t.url, event.created_at)
            for t in targets
        ],
    )


async def _end_attempt(
    conn: Conn,
    message_id: str,
    attempt: int,
    outcome: str,
    now: datetime,
    error_code: str | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE message_attempts SET ended_at = $1, outcome = $2, error_code = $3, error = $4 "
        "WHERE message_id = $5 AND attempt = $6 AND ended_at IS NULL",
        now,
        outcome,
        error_code,
        error,
        message_id,
        attempt,
    )


async def _count_sent(conn: Conn, device_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE devices SET sent_day = $1, "
        "sent_today = CASE WHEN sent_day = $1 THEN sent_today + 1 ELSE 1 END WHERE id = $2",
        _day(now),
        device_id,
    )


def _page_where(
    equals: list[tuple[str, str | None]],
    since: datetime | None,
    after: tuple[datetime, str] | None,
) -> tuple[str, list[Any]]:
    """WHERE clause for a newest-first keyset page: equality filters, a lower time bound,
    and the (created_at, id) cursor of the previous page."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in equals:
        if value is not None:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if since is not None:
        params.append(since)
        where.append(f"created_at >= ${len(params)}")
    if after is not None:
        params.extend(after)
        where.append(f"(created_at, id) < (${len(params) - 1}, ${len(params)})")
    return ("WHERE " + " AND ".join(where)) if where else "", params
