"""The agent's durable state in one SQLite file: ``SqlitePhoneStore``.

Same contract as ``MemoryPhoneStore``/``JsonPhoneStore`` (see ``outbox.py``): held
commands, unacknowledged reports and inbound frames, plus named values (the Termux inbox
high-water mark, the daily send counter, the last connection result). Unlike the JSON
store it does not rewrite everything on each change: each mutation is one small statement,
committed at once or, inside ``batch()``, in one transaction with the others.

The database runs in WAL mode with ``synchronous=FULL`` so a committed write survives a
power cut, and so ``smsgw-agent status`` can read it while the agent writes. Calls are
synchronous: they are tiny, happen a few times per SMS, and the agent is single-threaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from .outbox import (
    _HELD_STATES,
    SENT_KEPT,
    SENT_KEPT_SECONDS,
    Frame,
    HeldCommand,
    HeldState,
    PhoneStore,
    _frame_id,
)

SCHEMA_VERSION = 2  # 2: sent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    attempt INTEGER NOT NULL,
    to_number TEXT NOT NULL,
    body TEXT NOT NULL,
    sim_slot INTEGER,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    frame TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    frame TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    message_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    sent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_at ON sent (sent_at);
"""


class SqlitePhoneStore(PhoneStore):
    """A ``PhoneStore`` in a SQLite database at ``path`` (created 0600 if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            # Message bodies are private; SQLite gives the -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            # isolation_level=None: autocommit, transactions only where batch() opens one.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"phone store {self.path} has schema version {version}; "
                    f"this agent knows up to {SCHEMA_VERSION} (upgrade the agent)"
                )
            self._db.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self._db.close()
            raise ValueError(f"cannot open phone store {self.path}: {exc}") from exc
        self._batch_depth = 0

    # -- held commands -------------------------------------------------------------

    def held(self) -> list[HeldCommand]:
        rows = self._db.execute(
            "SELECT message_id, attempt, to_number, body, sim_slot, state FROM held ORDER BY seq"
        ).fetchall()
        return [_held(row) for row in rows]

    def get_held(self, message_id: str) -> HeldCommand | None:
        row = self._db.execute(
            "SELECT message_id, attempt, to_number, body, sim_slot, state FROM held "
            "WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        return None if row is None else _held(row)

    def put_held(self, command: HeldCommand) -> None:
        # Upsert keeps the row (and its place in held()), like a dict assignment.
        self._db.execute(
            "INSERT INTO held (message_id, attempt, to_number, body, sim_slot, state) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
            "attempt = excluded.attempt, to_number = excluded.to_number, body = excluded.body, "
            "sim_slot = excluded.sim_slot, state = excluded.state",
            (
                command.message_id,
                command.attempt,
                command.to,
                command.body,
                command.sim_slot,
                command.state,
            ),
        )

    def drop_held(self, message_id: str) -> None:
        self._db.execute("DELETE FROM held WHERE message_id = ?", (message_id,))

    # -- reports and inbound ----------------------------------------------------------

    def reports(self) -> list[Frame]:
        return self._frames("reports")

    def put_report(self, frame: Frame) -> None:
        self._put_frame("reports", frame)

    def drop_report(self, frame_id: str) -> Frame | None:
        return self._drop_frame("reports", frame_id)

    def inbound(self) -> list[Frame]:
        return self._frames("inbound")

    def put_inbound(self, frame: Frame) -> None:
        self._put_frame("inbound", frame)

    def drop_inbound(self, frame_id: str) -> Frame | None:
        return self._drop_frame("inbound", frame_id)

    def _frames(self, table: str) -> list[Frame]:
        rows = self._db.execute(f"SELECT frame FROM {table} ORDER BY seq").fetchall()
        return [cast(Frame, json.loads(row[0])) for row in rows]

    def _put_frame(self, table: str, frame: Frame) -> None:
        self._db.execute(
            f"INSERT INTO {table} (id, frame) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET frame = excluded.frame",
            (_frame_id(frame), json.dumps(frame, ensure_ascii=False, separators=(",", ":"))),
        )

    def _drop_frame(self, table: str, frame_id: str) -> Frame | None:
        row = self._db.execute(
            f"DELETE FROM {table} WHERE id = ? RETURNING frame", (frame_id,)
        ).fetchone()
        return None if row is None else cast(Frame, json.loads(row[0]))

    # -- sent, waiting for a delivery report ---------------------------------------

    def sent_attempt(self, message_id: str) -> int | None:
        row = self._db.execute(
            "SELECT attempt FROM sent WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def put_sent(self, message_id: str, attempt: int, at: float) -> None:
        with self.batch():
            self._db.execute(
                "INSERT INTO sent (message_id, attempt, sent_at) VALUES (?, ?, ?) "
                "ON CONFLICT (message_id) DO UPDATE SET attempt = excluded.attempt, "
                "sent_at = excluded.sent_at",
                (message_id, attempt, at),
            )
            self._db.execute("DELETE FROM sent WHERE sent_at < ?", (at - SENT_KEPT_SECONDS,))
            self._db.execute(
                "DELETE FROM sent WHERE sent_at < (SELECT sent_at FROM sent "
                "ORDER BY sent_at DESC LIMIT 1 OFFSET ?)",
                (SENT_KEPT,),
            )

    def drop_sent(self, message_id: str) -> None:
        self._db.execute("DELETE FROM sent WHERE message_id = ?", (message_id,))

    # -- named values ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- transactions and lifecycle ---------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for everything inside (nested batches join the outer one).

        Like the other stores it keeps what was done even if the block raises: the
        in-memory protocol state already assumes those writes happened.
        """
        if self._batch_depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqlitePhoneStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _held(row: tuple[Any, ...]) -> HeldCommand:
    message_id, attempt, to, body, sim_slot, state = row
    if state not in _HELD_STATES:
        raise ValueError(f"held command {message_id!r} has unknown state {state!r}")
    return HeldCommand(
        message_id=str(message_id),
        attempt=int(attempt),
        to=str(to),
        body=str(body),
        sim_slot=None if sim_slot is None else int(sim_slot),
        state=cast(HeldState, state),
    )
