"""``smsgw backup`` and ``smsgw restore``: a consistent copy of the hub's database taken
while the hub runs, and putting one back (docs/deploy.md, "Backups").

SQLite: SQLite's online backup API (``sqlite3.Connection.backup``) copies the database a
batch of pages at a time, pausing between batches so the hub's writer is never held up
for long. The copy runs inside one read transaction on the source: in WAL mode (the
hub's journal) a reader keeps its snapshot while the hub goes on committing, so every
batch comes from the same moment and the copy never restarts. Without that transaction
SQLite restarts a paged backup whenever another process writes, which under load is
forever. The copy is written beside the destination, switched to a rollback journal (one
self-contained file), checked with ``PRAGMA integrity_check``, flushed and renamed into
place: a backup that did not finish leaves no file at the destination.

A restore refuses while any process has the database open (the hub holds a shared lock
on the WAL index's dead-man-switch byte as long as it runs), checks the backup's
integrity and that its migrations are ones this smsgw knows (a backup from a newer
version is refused; an older one is migrated by the hub when it starts), and replaces
the file by rename. The database it replaces is kept beside it (``.replaced-<time>``,
with its WAL), and stale ``-wal``/``-shm`` files are moved away first: a WAL left from
the old database must never be replayed onto the restored one.

PostgreSQL: ``pg_dump --format=custom`` of the hub's schema (``?schema=``; the whole
database without it), run by ``smsgw backup`` when ``pg_dump`` is on ``PATH`` (else it
prints the command and fails). ``smsgw restore`` runs ``pg_restore`` in one transaction
into an empty target only: a schema holding a hub's tables is never written over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from smsgw.store.migrations import load_migrations

# Pages per step of the online backup (4 KiB pages: 4 MiB), and the pause between steps
# that lets the hub's writer take the database meanwhile.
STEP_PAGES = 1024
STEP_PAUSE = 0.005
# The byte of a WAL database's "-shm" file every open connection holds a shared lock on
# (SQLite's os_unix.c: UNIX_SHM_DMS, (22 + 8) * 4 + 8).
_SHM_DMS_BYTE = 128


class BackupError(Exception):
    """A backup or restore that cannot (or must not) go ahead; the message says why."""


@dataclass(frozen=True, slots=True)
class Copied:
    """What a backup wrote or a restore put in place."""

    path: Path
    bytes: int
    version: str | None  # the last migration the database has (None: not read)
    messages: int | None
    steps: int = 0  # online backup steps taken (SQLite)
    replaced: Path | None = None  # where a restore moved the database it replaced


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if sys.platform != "win32":  # a directory cannot be opened for fsync there
        _fsync(path.parent)


def _beside(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _checked(db: sqlite3.Connection) -> tuple[str, int]:
    """Integrity and migrations of an smsgw SQLite database: (last migration, messages)."""
    problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise BackupError("integrity check failed: " + "; ".join(problems[:5]))
    try:
        versions = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
        messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not an smsgw database ({exc})") from None
    if not versions:
        raise BackupError("not an smsgw database (no migrations recorded)")
    newer = versions - {m.version for m in load_migrations("sqlite")}
    if newer:
        raise BackupError(
            f"made by a newer smsgw (migrations {', '.join(sorted(newer))}): "
            "restore it with that version"
        )
    return max(versions), int(messages)


# -- SQLite ------------------------------------------------------------------------------


def sqlite_backup(
    db: Path,
    dest: Path,
    *,
    pages: int = STEP_PAGES,
    pause: float = STEP_PAUSE,
) -> Copied:
    """Copy the database at ``db`` to ``dest``, consistent as of the moment the copy
    began, while the hub keeps writing."""
    if not db.is_file():
        raise BackupError(f"no database at {db}")
    if dest.exists() and dest.resolve() in {
        db.resolve(),
        *(Path(f"{db}-{x}").resolve() for x in ("wal", "shm", "journal")),
    }:
        raise BackupError(f"{dest} is the database itself")
    tmp = _beside(dest, "backup")
    steps = 0

    def step(status: int, remaining: int, total: int) -> None:
        nonlocal steps
        steps += 1

    src = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        # The read transaction that pins one snapshot for every step (see above).
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as out:
            src.backup(out, pages=pages, progress=step, sleep=pause)
            src.execute("COMMIT")
            # The hub's WAL mode is in the copied header; a backup is one file.
            out.execute("PRAGMA journal_mode=DELETE")
            version, messages = _checked(out)
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return Copied(dest, dest.stat().st_size, version, messages, steps)


@contextlib.contextmanager
def _nobody_using(db: Path) -> Iterator[None]:
    """Raise if another process has the database open (a running hub), checked on the
    lock every connection to a WAL database holds; held while the restore runs."""
    shm = Path(f"{db}-shm")
    if sys.platform == "win32" or not shm.exists():
        yield  # no WAL index: nobody has it open in WAL mode
        return
    import fcntl

    fd = os.open(shm, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE, os.SEEK_SET)
        except OSError:
            raise BackupError(
                f"{db} is in use (a hub running on it?): stop the hub, then restore"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def sqlite_restore(backup: Path, db: Path) -> Copied:
    """Put the backup at ``backup`` in place of the database at ``db`` (stopped)."""
    if not backup.is_file():
        raise BackupError(f"no backup at {backup}")
    db.parent.mkdir(parents=True, exist_ok=True)
    with _nobody_using(db):
        tmp = _beside(db, "restore")
        try:
            # Copied through SQLite, not byte for byte: what is checked is what goes in.
            src = sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)
            with contextlib.closing(src), contextlib.closing(sqlite3.connect(tmp)) as out:
                src.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")
                version, messages = _checked(out)
            _fsync(tmp)
            replaced = _move_aside(db)
            os.replace(tmp, db)
            _fsync_dir(db)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{backup} is not a usable SQLite database ({exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
    return Copied(db, db.stat().st_size, version, messages, replaced=replaced)


def _move_aside(db: Path) -> Path | None:
    """Keep the database being replaced (with its WAL) as ``<db>.replaced-<time>``; the
    WAL index is dropped. The database path itself changes only by the final rename."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = db.with_name(f"{db.name}.replaced-{stamp}")
    for n in itertools.count(2):  # never over an earlier restore's
        if not any(Path(f"{aside}{x}").exists() for x in ("", "-wal", "-journal")):
            break
        aside = db.with_name(f"{db.name}.replaced-{stamp}-{n}")
    if db.exists():
        try:
            os.link(db, aside)  # the old file stays at db until the rename replaces it
        except OSError:
            shutil.copy2(db, aside)
    for suffix in ("-wal", "-journal"):
        old = Path(f"{db}{suffix}")
        if old.exists():
            os.replace(old, Path(f"{aside}{suffix}"))
    Path(f"{db}-shm").unlink(missing_ok=True)
    return aside if aside.exists() else None


# -- PostgreSQL ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgCommand:
    argv: list[str]
    password: str | None  # handed over as PGPASSWORD, never on the command line

    def shown(self) -> str:
        line = shlex.join(self.argv)
        return f"PGPASSWORD=... {line}" if self.password else line

    def run(self) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return subprocess.run(self.argv, env=env, capture_output=True, text=True, check=False)


def pg_target(url: str) -> tuple[str, str | None, str | None]:
    """libpq's URL for the hub's database URL (without ``schema`` and the password), the
    password, and the schema."""
    from smsgw.store.postgres import split_url

    dsn, schema = split_url(url)
    parts = urlsplit(dsn)
    password = parts.password
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}@{host}")
    return (
        # libpq takes postgres:// too; one spelling in what is printed.
        urlunsplit(parts._replace(scheme="postgresql")),
        None if password is None else unquote(password),
        schema,
    )


def _pattern(schema: str) -> str:
    """A pg_dump/pg_restore name pattern matching exactly ``schema``."""
    return '"' + schema.replace('"', '""') + '"'


def pg_dump_command(url: str, dest: Path) -> PgCommand:
    dsn, password, schema = pg_target(url)
    argv = ["pg_dump", "--format=custom", f"--file={dest}"]
    if schema:
        argv.append(f"--schema={_pattern(schema)}")
    return PgCommand([*argv, f"--dbname={dsn}"], password)


def pg_restore_command(url: str, backup: Path) -> PgCommand:
    dsn, password, _ = pg_target(url)
    return PgCommand(
        [
            "pg_restore",
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            f"--dbname={dsn}",
            str(backup),
        ],
        password,
    )


def _tool(name: str, command: PgCommand) -> None:
    if shutil.which(name) is None:
        raise BackupError(
            f"{name} is not on PATH (install PostgreSQL's client tools, the same major "
            f"version as the server or newer), or run:\n  {command.shown()}"
        )


def postgres_backup(url: str, dest: Path) -> Copied:
    """``pg_dump`` of the hub's schema to ``dest``: one snapshot (pg_dump reads in one
    repeatable-read transaction), taken while the nodes keep writing."""
    _tool("pg_dump", pg_dump_command(url, dest))
    tmp = _beside(dest, "backup")
    try:
        done = pg_dump_command(url, tmp).run()
        if done.returncode != 0:
            raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
        schema = pg_target(url)[2] or "public"
        if (schema, "schema_migrations") not in _archive_tables(tmp):
            raise BackupError(f"pg_dump found no smsgw tables in schema {schema!r}")
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest)
    finally:
        tmp.unlink(missing_ok=True)
    # What migration and how many messages it holds is known once it is restored.
    return Copied(dest, dest.stat().st_size, None, None)


# "1234; 1259 16390 TABLE <schema> <name> <owner>" in pg_restore --list
_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (\S+) (\S+) ")


def _archive_tables(backup: Path) -> set[tuple[str, str]]:
    listed = subprocess.run(
        ["pg_restore", "--list", str(backup)], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        raise BackupError(f"{backup} is not a pg_dump archive: {listed.stderr.strip()}")
    found = set()
    for line in listed.stdout.splitlines():
        m = _TABLE.match(line)
        if m:
            found.add((m.group(1), m.group(2)))
    return found


def postgres_restore(url: str, backup: Path) -> Copied:
    """Restore ``backup`` into the database and schema of ``url``, which must hold no
    smsgw tables (a running hub's schema is never written over)."""
    _tool("pg_restore", pg_restore_command(url, backup))
    target = pg_target(url)[2] or "public"
    held = sorted({s for s, t in _archive_tables(backup) if t == "schema_migrations"})
    if held != [target]:
        raise BackupError(
            f"the archive holds smsgw's tables in schema {', '.join(held) or 'none'}, "
            f"not {target!r}: restore with ?schema={held[0] if held else '...'} in "
            "SMSGW_DATABASE_URL"
        )
    asyncio.run(_pg_make_room(url))
    done = pg_restore_command(url, backup).run()
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed (nothing was restored): {done.stderr.strip()}")
    version, messages = asyncio.run(_pg_restored(url))
    return Copied(backup, backup.stat().st_size, version, messages)


async def _pg_connect(url: str) -> Any:
    import asyncpg

    dsn, password, _ = pg_target(url)
    return await asyncpg.connect(dsn, password=password, timeout=30)


async def _pg_make_room(url: str) -> None:
    """Refuse a target holding smsgw's tables; drop an empty schema of the archive's name
    (the archive creates it; RESTRICT: anything in it stops the restore instead)."""
    from smsgw.store.postgres import quote_ident

    schema = pg_target(url)[2]
    conn = await _pg_connect(url)
    try:
        target = quote_ident(schema or "public")
        if await conn.fetchval("SELECT to_regclass($1)", f"{target}.schema_migrations"):
            raise BackupError(
                f"schema {schema or 'public'!r} already holds smsgw's tables (a hub may be "
                "running on it): restore into an empty schema or database"
            )
        if schema and await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"DROP SCHEMA {target} RESTRICT")
    finally:
        await conn.close()


async def _pg_restored(url: str) -> tuple[str, int]:
    from smsgw.store.postgres import quote_ident

    target = quote_ident(pg_target(url)[2] or "public")
    conn = await _pg_connect(url)
    try:
        version = await conn.fetchval(f"SELECT max(version) FROM {target}.schema_migrations")
        messages = await conn.fetchval(f"SELECT count(*) FROM {target}.messages")
    finally:
        await conn.close()
    return str(version), int(messages)
