"""The SQLite driver (the embedded default): one writer thread with group commit, and a reader.

WAL journal and ``synchronous=FULL`` by default, so every state change is on disk before
the hub acts on it. Writes are operations run on a dedicated writer thread: it takes
every write waiting in its queue, runs them in one ``BEGIN IMMEDIATE`` transaction and
commits them together, so one fsync covers a whole batch (group commit) while a failing
write still rolls back alone (``_apply``). Reads, migrations and administrative paths go
through an aiosqlite connection of their own (WAL readers never wait for the writer).
The event loop only ever awaits futures, never the disk. Why the writer is not aiosqlite
too: docs/architecture.md.

``:memory:`` (``SMSGW_DATABASE_URL=memory://``) is one in-memory database that every
connection of the store shares (SQLite's ``memdb`` VFS, named per store), so the writer
and the reader see the same tables and a reader really waits for the writer's commit.
It lives as long as the store is open.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from smsgw.clock import iso, new_id
from smsgw.secretbox import SecretBox
from smsgw.store.dialect import SqliteDialect
from smsgw.store.migrations import load_migrations
from smsgw.store.sql import (
    AFTER,
    COPY,
    EXECUTE,
    FETCH,
    FETCHROW,
    FETCHVAL,
    MANY,
    Kind,
    Op,
    Rollback,
    Stmt,
    run_after,
    run_async,
    run_sync,
)
from smsgw.store.store import Store

T = TypeVar("T")

# Writes per transaction at most: bounds the latency one batch adds to the next.
MAX_BATCH = 512
MEMORY = ":memory:"

Job = tuple[Callable[[], Op[Any]], asyncio.Future[Any]]
After = list[Callable[[], None]]
# A write's future, its result or error, and what to call once it has committed.
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None, After]


class _Writer(threading.Thread):
    """Runs queued write operations in batches, one transaction (one fsync) per batch."""

    def __init__(self, driver: SqliteDriver) -> None:
        super().__init__(name="smsgw-sqlite-writer", daemon=True)
        self._driver = driver
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.batches = 0
        self.writes = 0

    def run(self) -> None:
        db = self._driver.connect()
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

    def _run_batch(self, db: sqlite3.Connection, batch: list[Job]) -> None:
        started = time.perf_counter()
        committed = 0.0
        try:
            db.execute("BEGIN IMMEDIATE")
            outcomes = self._apply(db, batch)
            db.execute("COMMIT")
            committed = time.perf_counter()
        except Exception as exc:
            # The commit itself failed (disk full, I/O error): nothing of the batch is
            # durable, so every caller gets the error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            outcomes = [(fut, None, exc, []) for _, fut in batch]
        self.batches += 1
        self.writes += len(batch)
        loop = batch[0][1].get_loop()
        loop.call_soon_threadsafe(_deliver, outcomes)
        # After the hand-over, so the loop delivers the results meanwhile.
        observe = self._driver.on_batch
        if observe is not None and committed:
            observe(len(batch), committed - started)

    def _apply(self, db: sqlite3.Connection, batch: list[Job]) -> list[Outcome]:
        """Run a batch's writes inside the open transaction; a write that raises leaves no
        trace and the others stand.

        Optimistic: no savepoint around each write, because every statement releases the
        GIL and must take it back from a busy event loop, and a write that raises is rare.
        When one does, the transaction is rolled back and the batch run again with a
        savepoint per write, so the failure stays its own (operations do no I/O of their
        own, so they are safe to run twice)."""
        run = self._driver.run
        outcomes: list[Outcome] = []
        try:
            for make, fut in batch:
                result, after = run(db, make())
                outcomes.append((fut, result, None, after))
            return outcomes
        except Exception as exc:
            db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:
                return [(batch[0][1], None, exc, [])]
        outcomes = []
        for make, fut in batch:
            db.execute("SAVEPOINT w")
            try:
                result, after = run(db, make())
            except Exception as exc:
                db.execute("ROLLBACK TO w")
                db.execute("RELEASE w")
                outcomes.append((fut, None, exc, []))
            else:
                db.execute("RELEASE w")
                outcomes.append((fut, result, None, after))
        return outcomes


def _deliver(outcomes: list[Outcome]) -> None:
    for fut, result, exc, after in outcomes:
        if after:
            run_after(after)
        if fut.done():
            continue  # the caller gave up (cancelled); the write is durable regardless
        if isinstance(exc, Rollback):
            fut.set_result(exc.value)
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class SqliteDriver:
    dialect = SqliteDialect()

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.synchronous = synchronous.upper()
        if self.synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"invalid sqlite synchronous mode {synchronous!r}")
        self.memory = str(path) in (MEMORY, "")
        # A memdb name starting with "/" is shared by the process's connections to it.
        self.path = f"file:/smsgw-{new_id()}?vfs=memdb" if self.memory else str(path)
        self.writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        # Told (on the writer thread) of each committed batch: its writes and the seconds
        # from BEGIN to the end of COMMIT. Set by the hub's metrics (smsgw/telemetry.py).
        self.on_batch: Callable[[int, float], None] | None = None

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, uri=self.memory, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            db.execute(pragma)
        return db

    def _pragmas(self) -> list[str]:
        return [
            "PRAGMA journal_mode=WAL",  # a memdb database keeps its own ("memory")
            f"PRAGMA synchronous={self.synchronous}",
            "PRAGMA busy_timeout=10000",
            "PRAGMA foreign_keys=ON",
        ]

    async def open(self) -> list[str]:
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Opened first and closed last: it keeps a memdb database alive.
        reader = await aiosqlite.connect(self.path, uri=self.memory, isolation_level=None)
        reader.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            await reader.execute(pragma)
        self._reader = reader
        applied = await self.migrate()
        self.writer = _Writer(self)
        self.writer.start()
        return applied

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; returns what was applied."""
        db = self._reader_db()
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {r[0] for r in await db.execute_fetchall("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for mig in load_migrations(self.dialect.name):
            if mig.version in done:
                continue
            stamp = iso(datetime.now().astimezone())
            # executescript commits on its own; BEGIN/COMMIT inside makes the file and its
            # version record one atomic step.
            await db.executescript(
                "BEGIN IMMEDIATE;\n"
                + mig.sql()
                + f"\n;INSERT INTO schema_migrations VALUES ('{mig.version}', '{stamp}');"
                + "\nCOMMIT;"
            )
            applied.append(mig.version)
        return applied

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.jobs.put(None)
            await asyncio.to_thread(self.writer.join)
            self.writer = None
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    async def ping(self) -> None:
        await self._reader_db().execute_fetchall("SELECT 1")

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        """One process owns the file: nobody else changes the webhooks."""

    def _reader_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    # -- running operations ---------------------------------------------------------

    async def write(self, make: Callable[[], Op[T]]) -> T:
        if self.writer is None:
            raise RuntimeError("store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.writer.jobs.put((make, fut))
        # Once queued the write happens even if the caller is cancelled; its result is
        # then dropped (_deliver skips futures that are already done).
        return await fut

    async def read(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        if snapshot:
            # Several statements that must see one state: one transaction on the writer
            # (cheap, and rare), never a transaction on the reader that every other read
            # shares, which would then miss writes committed meanwhile.
            return await self.write(make)
        return await run_async(make(), self._read_stmt)

    async def _read_stmt(self, stmt: Stmt) -> Any:
        kind, sql, args = stmt
        d = self.dialect
        try:
            found = await self._reader_db().execute_fetchall(d.sql(sql), args)
        except Exception as exc:
            raise d.error(exc) from exc
        return _result(kind, list(found))

    def run(self, db: sqlite3.Connection, op: Op[T]) -> tuple[T, After]:
        """Run ``op`` on the writer thread's connection ``db``; its result, and what it
        asked to be called once committed."""
        after: After = []
        # partial, not a lambda: a call in C, not one more Python frame per statement.
        return run_sync(op, functools.partial(self._write_stmt, db, after)), after

    def _write_stmt(self, db: sqlite3.Connection, after: After, stmt: Stmt) -> Any:
        kind, sql, args = stmt
        d = self.dialect
        try:
            if kind is EXECUTE:
                return db.execute(d.sql(sql), args).rowcount
            if kind is FETCHROW or kind is FETCH or kind is FETCHVAL:
                # fetchall even for one row: a RETURNING statement must run to its end
                # before the transaction can commit.
                return _result(kind, db.execute(d.sql(sql), args).fetchall())
            if kind is AFTER:
                after.append(args[0])
            elif kind is MANY:
                db.executemany(d.sql(sql), args)
            elif kind is COPY:
                columns, records = args
                marks = ", ".join("?" * len(columns))
                db.executemany(
                    f"INSERT INTO {sql} ({', '.join(columns)}) VALUES ({marks})",
                    records,
                )
            return None
        except Exception as exc:
            mapped = d.error(exc)
            if mapped is exc:
                raise
            raise mapped from exc


def _result(kind: Kind, found: list[Any]) -> Any:
    if kind is FETCHROW:
        return found[0] if found else None
    if kind is FETCH:
        return found
    if kind is FETCHVAL:
        return found[0][0] if found else None
    raise TypeError(f"a read cannot {kind.value}")


class SqliteStore(Store):
    """The store on a SQLite file (or ``:memory:``)."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", box: SecretBox | None = None
    ) -> None:
        self.sqlite = SqliteDriver(path, synchronous=synchronous)
        super().__init__(self.sqlite, box)
