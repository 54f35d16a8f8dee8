"""The PostgreSQL driver (asyncpg): the engine when several hub nodes share one database.

SQLite serialises every write on one thread; here many nodes write at once, so every
compare-and-set in the operations is a conditional ``UPDATE ... RETURNING`` (the row lock
it takes plus PostgreSQL's re-check of the ``WHERE`` clause on the newest row version
under READ COMMITTED make a second racer see the winner's row and match nothing), or a
transaction that starts with ``SELECT ... FOR UPDATE`` when the decision needs the
current row. A deadlock PostgreSQL still detects is retried.

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
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from smsgw.events import EventType
from smsgw.secretbox import SecretBox
from smsgw.store.dialect import NOTIFY_CHANNEL, Dialect
from smsgw.store.migrations import load_migrations
from smsgw.store.rows import MESSAGE_COLUMNS
from smsgw.store.rules import utc_day
from smsgw.store.sql import (
    Kind,
    Op,
    Rollback,
    Stmt,
    fetchrow,
    run_after,
    run_async,
    write,
)
from smsgw.store.store import Store

T = TypeVar("T")

# A pooled connection is a proxy; both run the same queries.
Conn = asyncpg.Connection | PoolConnectionProxy

log = logging.getLogger(__name__)

# Deadlocks are resolved by PostgreSQL aborting one transaction; the loser is re-run.
DEADLOCK_RETRIES = 5
# The periodic reload of the webhook subscriptions covers a lost listener.
SUBSCRIPTIONS_RELOAD = 10.0
PING_TIMEOUT = 5.0


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


class _Tx:
    """Runs one operation's statements on one connection."""

    __slots__ = ("after", "conn", "dialect")

    def __init__(self, conn: Conn, dialect: Dialect) -> None:
        self.conn, self.dialect = conn, dialect
        self.after: list[Callable[[], None]] = []

    async def do(self, stmt: Stmt) -> Any:
        # The enum's members, not the driver-speed names SQLite uses: here every
        # statement is a round trip to the server, and 65 ns do not show.
        kind, sql, args = stmt
        conn = self.conn
        try:
            if kind is Kind.FETCHROW:
                return await conn.fetchrow(sql, *args)
            if kind is Kind.EXECUTE:
                return _count(await conn.execute(sql, *args))
            if kind is Kind.FETCH:
                return await conn.fetch(sql, *args)
            if kind is Kind.FETCHVAL:
                return await conn.fetchval(sql, *args)
            if kind is Kind.AFTER:
                self.after.append(args[0])
            elif kind is Kind.MANY:
                await conn.executemany(sql, args)
            elif kind is Kind.COPY:
                columns, records = args
                # Up to 10,000 rows in one round trip, inside the same transaction.
                await conn.copy_records_to_table(
                    sql, records=records, columns=list(columns), schema_name=self.dialect.schema
                )
            return None
        except Exception as exc:
            mapped = self.dialect.error(exc)
            if mapped is exc:
                raise
            raise mapped from exc


class PostgresDriver:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = split_url(url)
        self.dialect = Dialect(self.schema)
        self.min_size = min(min_size, max_size)
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        # Writes in progress, shielded from their callers' cancellation; close() waits.
        self._inflight: set[asyncio.Task[Any]] = set()
        self._changed: Callable[[], Awaitable[None]] | None = None
        self._listener: asyncpg.Connection | None = None
        self._watcher: asyncio.Task[None] | None = None

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "smsgw"}
        if self.schema:
            settings["search_path"] = quote_ident(self.schema)
        return settings

    async def open(self) -> list[str]:
        applied = await self.migrate()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            server_settings=self._server_settings(),
            reset=_reset_for_reuse,
        )
        return applied

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
                for mig in load_migrations(self.dialect.name):
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

    # -- other nodes' webhook changes ---------------------------------------------------

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        self._changed = changed
        await self._listen()
        self._watcher = asyncio.create_task(self._watch())

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
        if payload == (self.schema or "") and self._changed is not None:
            task = asyncio.ensure_future(self._changed())
            task.add_done_callback(_log_failure)

    async def _watch(self) -> None:
        """Reloads every so often: the backstop for a missed notification or a dropped
        listener connection."""
        while True:
            await asyncio.sleep(SUBSCRIPTIONS_RELOAD)
            try:
                if self._listener is None or self._listener.is_closed():
                    self._listener = None
                    await self._listen()
                if self._changed is not None:
                    await self._changed()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("reloading webhook subscriptions failed: %s", exc)

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

    def pool_stats(self) -> tuple[int, int, int] | None:
        """The pool's connections now: (open, idle, most it may open); None when closed.
        Read by ``GET /metrics`` at scrape time."""
        pool = self._pool
        if pool is None:
            return None
        return pool.get_size(), pool.get_idle_size(), pool.get_max_size()

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # -- running operations ---------------------------------------------------------

    async def write(self, make: Callable[[], Op[T]]) -> T:
        """Run the operation in one transaction, to completion even if the caller is
        cancelled."""
        pool = self._p()

        async def run() -> T:
            for attempt in range(DEADLOCK_RETRIES):
                try:
                    async with pool.acquire() as conn:
                        tx = _Tx(conn, self.dialect)
                        async with conn.transaction():
                            result = await run_async(make(), tx.do)
                        run_after(tx.after)  # committed
                        return result
                except Rollback as rollback:
                    return rollback.value  # type: ignore[no-any-return]
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

    async def read(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        async with self._p().acquire() as conn:
            tx = _Tx(conn, self.dialect)
            if not snapshot:
                return await run_async(make(), tx.do)
            # One snapshot for every statement (REPEATABLE READ; read only, so it never
            # waits).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await run_async(make(), tx.do)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reloading webhook subscriptions failed: %s", task.exception())


class PostgresStore(Store):
    """The store on PostgreSQL, with the one fast path of its own that earns its keep."""

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, box: SecretBox | None = None
    ) -> None:
        self.postgres = PostgresDriver(url, min_size=min_size, max_size=max_size)
        super().__init__(self.postgres, box)

    # The hot path's second write in one statement (one round trip, not four): the
    # message, its attempt, the phone's daily count and the recipient's affinity, locked
    # in that order, as mark_delivered and Messages.mark_sent lock them. PostgreSQL runs
    # sub-statements that nothing reads in an order of its own (it was affinity, device,
    # attempt); each one here reads the one before it (a count, so it runs whatever that
    # matched), which fixes the order. tests/smsgw/store/test_postgres.py checks it.
    _MARK_SENT = (
        "WITH m AS (UPDATE messages SET status = 'SENT', sent_at = $1, updated_at = $1, "
        "error_code = NULL, error = NULL WHERE id = $2 AND device_id = $3 AND status = 'QUEUED' "
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

    @write
    def mark_sent(self, message_id: str, device_id: str, now: datetime) -> Op[str | None]:
        """As ``Messages.mark_sent``, in one statement."""
        row = yield fetchrow(self._MARK_SENT, now, message_id, device_id, utc_day(now))
        if row is None:
            return None
        yield from self._message_event(EventType.MESSAGE_SENT, row, now)
        return str(row["recipient"])
