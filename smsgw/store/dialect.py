"""Every difference between SQLite and PostgreSQL the store's operations meet, in one place.

The operations (``messages.py``, ``devices.py``, ...) write their SQL once, in the subset
both engines share, with PostgreSQL's ``$1`` placeholders. What does not fit that subset
is asked of the dialect, like Django's ``DatabaseOperations``:

- placeholders and values: SQLite gets ``?1`` for ``$1`` (a ``$1::type`` cast is
  PostgreSQL's alone and dropped), timestamps as ISO 8601 text (they sort as text), and
  lists as JSON; rows come back through the engine's :class:`~smsgw.store.rows.Decoder`;
- row locks and advisory locks: PostgreSQL serves several nodes at once and needs them;
  SQLite's single writer thread already runs one write at a time, so they are nothing;
- ``NOTIFY`` of webhook changes to the other nodes, ``= ANY(array)``, the UTC day of a
  timestamp, a query planner hint SQLite needs, and which unique-key error is which.

What stays in the drivers is how statements run (threads and group commit, or a pool).
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from datetime import datetime
from typing import Any

from smsgw.clock import iso
from smsgw.store.rows import POSTGRES, SQLITE, Decoder
from smsgw.store.sql import Op, UniqueViolation, execute

# The class half of the (class, hashtext(device id)) advisory locks that order a phone's
# removal against inserts of messages on offer to it. The two-key space does not overlap
# the single 64-bit key of the migration lock.
DEVICE_LOCK_CLASS = 0x534D  # "SM"
# Webhook changes are announced on this channel (payload: the schema) so every node's
# subscription cache follows at once.
NOTIFY_CHANNEL = "smsgw_webhooks"

_PLACEHOLDER = re.compile(r"\$(\d+)(?:::[a-z_]+(?:\[\])?)?")
# SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
_SQLITE_UNIQUE = frozenset({1555, 2067})


class Dialect:
    """The PostgreSQL forms; :class:`SqliteDialect` overrides what SQLite does otherwise."""

    name = "postgres"  # also the suffix of this engine's migration files
    decoder: Decoder = POSTGRES
    for_update = " FOR UPDATE"
    """Appended to a SELECT whose row the transaction then changes."""
    for_key_share = " FOR KEY SHARE"
    """Appended to a SELECT of a row a new row will reference: it cannot go meanwhile."""

    def __init__(self, schema: str | None = None) -> None:
        self.schema = schema

    def sql(self, text: str) -> str:
        return text

    def skip_locked(self, of: str | None = None, *, order: str | None = None) -> str:
        """Appended to a claiming SELECT: rows another node holds are left to it, and with
        ``order`` the rows are locked in that order (two claims cannot deadlock)."""
        ordered = f" ORDER BY {order}" if order else ""
        return f"{ordered} FOR UPDATE{f' OF {of}' if of else ''} SKIP LOCKED"

    def in_picked(self, select: str) -> str:
        """``id <this>``: the id is one of the rows a claiming SELECT (with LIMIT and
        ``skip_locked``) picked, evaluated once. ``IN (SELECT ...)`` may be rescanned by
        PostgreSQL's planner as a semi-join's inner side, and a rescan after the UPDATE
        changed the first pick picks the next row: a LIMIT 1 claimed two messages."""
        return f"= ANY(ARRAY({select}))"

    def any_text(self, param: str) -> str:
        """``column <this>``: the column is one of the strings ``param`` passes, as
        ``text_list`` made them."""
        return f"= ANY({param}::text[])"

    def text_list(self, values: list[str]) -> Any:
        return values

    def utc_day(self, column: str) -> str:
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def utc_hour(self, column: str) -> str:
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24')"""

    def indexed_by(self, index: str) -> str:
        return ""

    # The two below are operations to ``yield from``: they run nothing where SQLite
    # needs nothing.

    def lock_device(self, device_id: str, *, shared: bool) -> Op[None]:
        """Orders a phone's removal (exclusive) against new messages offered to it (shared)."""
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        yield execute(f"SELECT {fn}($1, hashtext($2))", DEVICE_LOCK_CLASS, device_id)

    def webhooks_changed(self) -> Op[None]:
        """Tells every node's listener, when (and only if) the transaction commits."""
        yield execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, self.schema or "")

    def error(self, exc: Exception) -> Exception:
        """The store's exception for an engine's (unique violations are told apart)."""
        import asyncpg  # here: a hub on SQLite never loads it

        if isinstance(exc, asyncpg.UniqueViolationError):
            return UniqueViolation(str(exc))
        return exc


class SqliteDialect(Dialect):
    name = "sqlite"
    decoder = SQLITE
    for_update = ""
    for_key_share = ""

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def sql(text: str) -> str:
        return _PLACEHOLDER.sub(r"?\1", text)

    def skip_locked(self, of: str | None = None, *, order: str | None = None) -> str:
        # Nothing, not even the order: SQLite would then scan the whole table in that
        # order (every expiry sweep walked every message by id) instead of an index of
        # the rows it wants.
        return ""

    def in_picked(self, select: str) -> str:
        return f"IN ({select})"  # a subquery without correlation runs once

    def any_text(self, param: str) -> str:
        return f"IN (SELECT value FROM json_each({param}))"

    def text_list(self, values: list[str]) -> Any:
        return json.dumps(values)

    def utc_day(self, column: str) -> str:
        return f"substr({column}, 1, 10)"  # ISO 8601 UTC text

    def utc_hour(self, column: str) -> str:
        return f"substr({column}, 1, 13)"

    def indexed_by(self, index: str) -> str:
        # Without statistics SQLite prefers the wider index on device_id, which holds
        # every message the phone ever sent, over the partial one of what it owns now.
        return f" INDEXED BY {index}"

    def lock_device(self, device_id: str, *, shared: bool) -> Op[None]:
        yield from ()  # one writer: nothing runs beside this write

    def webhooks_changed(self) -> Op[None]:
        yield from ()  # one process: the store updates its own cache

    def error(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode in _SQLITE_UNIQUE:
            return UniqueViolation(str(exc))
        return exc


def _text(dt: datetime) -> str:
    return iso(dt) or ""


# sqlite3's adapter for ``datetime``: the C code binding a statement's values calls it
# for timestamps alone, and nothing runs for the other values (a comprehension over every
# value cost the writer thread 2.5 us a dispatch). Remembered in C (lru_cache): an
# operation passes its ``now`` to several statements, and formatting one costs a
# microsecond on the writer thread, where every microsecond of Python holds up the event
# loop. sqlite3's adapters are process-wide: any datetime bound to SQLite in a hub
# process is stored this way, which replaces Python's own default (deprecated in 3.12).
sqlite3.register_adapter(datetime, functools.lru_cache(maxsize=1024)(_text))
