"""``smsgw backup`` and ``smsgw restore`` (smsgw/backup.py), run as a user runs them: a
backup taken from a hub process under load (simulated phones, a loop of dispatches),
restored into a fresh database, a hub started on it, and every message acknowledged
before the backup began found there, at least as far along as when it was acknowledged.
On SQLite, and on PostgreSQL when a server and pg_dump/pg_restore are at hand."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from smsgw.clock import iso, utcnow
from tests.harness import Farm, HubProcess, wait_for
from tests.pgtest import drop_schema, fresh_schema_name, require_postgres, with_schema

# How far a message has come; a final status is as far as it gets.
RANK = {"PENDING": 0, "QUEUED": 1, "SENT": 2, "DELIVERED": 3, "FAILED": 3}
# The farm sends more than a phone's default daily quota.
LOAD = {"default_daily_quota": 100_000, "log_level": "warning"}
SENDERS = 4


async def smsgw(database_url: str, *args: str) -> tuple[int, str]:
    """The CLI in a process of its own, as cron would run it."""
    env = {**os.environ, "SMSGW_DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsgw",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Load:
    """Dispatches in a loop from a few clients, each answer recorded with when it came:
    half of them wait for the phone (SENT), half are only stored (``wait: false``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: dict[str, tuple[str, float]] = {}  # id -> (status, answered at)
        self._numbers = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send(i)) for i in range(SENDERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _send(self, i: int) -> None:
        async with httpx.AsyncClient(
            base_url=self.url, headers={"X-API-Key": "sk_000000000000_test-admin-key"}
        ) as api:
            while not self._stop.is_set():
                n = next(self._numbers)
                r = await api.post(
                    "/sms/dispatch",
                    json={
                        "to": f"+1202555{n % 10_000:04d}",
                        "message": f"m{n}",
                        "wait": i % 2 == 0,
                    },
                )
                assert r.status_code in {200, 202}, r.text
                self.acked[r.json()["message_id"]] = (r.json()["status"], time.monotonic())

    def before(self, moment: float) -> dict[str, str]:
        return {m: status for m, (status, at) in self.acked.items() if at < moment}

    def between(self, start: float, end: float) -> int:
        return sum(start <= at < end for _, at in self.acked.values())


async def backup_under_load(hub: HubProcess, database_url: str, dest: Path) -> dict[str, str]:
    """Take a backup while phones and clients keep the hub busy; the messages acknowledged
    before it began, with their status then."""
    farm = Farm(lambda: hub.url)
    load = Load(hub.url)
    try:
        for _ in range(3):
            await farm.add(send_delay=0.005, delivery_delay=0.05)
        load.start()
        await wait_for(lambda: len(load.acked) >= 400, 90, "a database worth backing up")
        began = time.monotonic()
        # Small steps: the hub commits between them (SQLite), and the copy must not care.
        code, out = await smsgw(database_url, "backup", str(dest), "--pages", "4")
        ended = time.monotonic()
        await asyncio.sleep(0.3)
        await load.stop()
    finally:
        await farm.close()
    assert code == 0, out
    steps = re.search(r"(\d+) step\(s\)", out)
    if database_url.startswith("sqlite"):  # many steps, the hub committing between them
        assert steps and int(steps.group(1)) > 10, out
    assert load.between(began, ended) > 0, "the hub answered nothing during the backup"
    before = load.before(began)
    assert len(set(before.values())) >= 2, before  # stored-only and sent ones alike
    return before


async def check_restored(hub: HubProcess, before: dict[str, str]) -> None:
    """Every message acknowledged before the backup is there, no less advanced."""
    async with hub.client() as api:
        behind = {}
        for mid, status in before.items():
            r = await api.get(f"/sms/{mid}")
            assert r.status_code == 200, f"acknowledged message {mid} lost: {r.text}"
            if RANK[r.json()["status"]] < RANK[status]:
                behind[mid] = (status, r.json()["status"])
        assert behind == {}
        # And the restored hub works: it takes and stores a new message.
        r = await api.post("/sms/dispatch", json={"to": "+12025559999", "message": "after"})
        assert r.status_code in {200, 202}, r.text


def replaced(db: Path, kept: Path, first: str) -> None:
    """The backup's one message in place; the database it replaced, with both of its
    messages (its WAL kept with it), beside it; no WAL or index left from it."""
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM messages")] == [first]
    assert kept.exists()
    with sqlite3.connect(kept) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def test_a_sqlite_backup_under_load_restores_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    db, copy, fresh = tmp_path / "hub.db", tmp_path / "backup.db", tmp_path / "restored.db"
    hub = await HubProcess(db, tmp_path / "hub.log", database_url=f"sqlite:///{db}", **LOAD).start()
    try:
        before = await backup_under_load(hub, f"sqlite:///{db}", copy)
    finally:
        await hub.stop()
    assert integrity(copy) == "ok"
    with sqlite3.connect(copy) as conn:  # one self-contained file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    code, out = await smsgw(f"sqlite:///{fresh}", "restore", str(copy))
    assert code == 0 and "integrity ok" in out, out
    assert integrity(fresh) == "ok"
    restored = await HubProcess(fresh, database_url=f"sqlite:///{fresh}", **LOAD).start()
    try:
        await check_restored(restored, before)
    finally:
        await restored.stop()


async def test_restore_refuses_a_running_hub_and_bad_backups_and_keeps_what_it_replaced(
    tmp_path: Path,
) -> None:
    db, copy = tmp_path / "hub.db", tmp_path / "backup.db"
    url = f"sqlite:///{db}"
    hub = await HubProcess(db, database_url=url).start()
    try:
        async with hub.client() as api:
            r = await api.post("/sms/dispatch", json={"to": "+12025550100", "message": "one"})
            first = r.json()["message_id"]
        assert (await smsgw(url, "backup", str(copy)))[0] == 0
        async with hub.client() as api:
            await api.post("/sms/dispatch", json={"to": "+12025550100", "message": "two"})
        code, out = await smsgw(url, "restore", str(copy))
        assert code == 1 and "in use" in out, out
        code, out = await smsgw(url, "backup", str(db))
        assert code == 1 and "the database itself" in out, out
    finally:
        await hub.stop()

    # Stopped: the restore goes ahead, and the database it replaces is kept.
    code, out = await smsgw(url, "restore", str(copy))
    assert code == 0, out
    kept = re.search(r"kept as (\S+)", out)
    assert kept
    replaced(db, Path(kept.group(1)), first)
    code, out = await smsgw(url, "restore", str(copy))  # again: a second file kept
    again = re.search(r"kept as (\S+)", out)
    assert code == 0 and again and again.group(1) != kept.group(1), out

    # A damaged backup, a file that is not a database, and one from a newer smsgw.
    damaged = tmp_path / "damaged.db"
    data = bytearray(copy.read_bytes())
    page = 4096
    data[page * 2 : page * 3] = os.urandom(page)  # a b-tree page of garbage
    damaged.write_bytes(bytes(data))
    code, out = await smsgw(url, "restore", str(damaged))
    assert code == 1 and ("integrity" in out or "not a usable" in out), out
    (tmp_path / "text.db").write_text("not a database")
    code, out = await smsgw(url, "restore", str(tmp_path / "text.db"))
    assert code == 1 and "not a usable SQLite database" in out, out
    newer = tmp_path / "newer.db"
    shutil.copy(copy, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('9999_future', ?)", (iso(utcnow()),))
    code, out = await smsgw(url, "restore", str(newer))
    assert code == 1 and "newer smsgw" in out and "9999_future" in out, out
    with sqlite3.connect(db) as conn:  # none of them touched the database
        assert [r[0] for r in conn.execute("SELECT id FROM messages")] == [first]
    code, out = await smsgw("memory://", "backup", str(tmp_path / "m.db"))
    assert code == 1 and "nothing to back up" in out, out


# -- PostgreSQL ----------------------------------------------------------------------------


def _in_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def test_a_postgres_backup_under_load_restores_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    missing = [tool for tool in ("pg_dump", "pg_restore") if shutil.which(tool) is None]
    if missing:
        # Even under CI=true: the PostgreSQL server is required there, its client tools
        # are not (docs/deploy.md, "Backups").
        pytest.skip(f"{' and '.join(missing)} not on PATH")
    base = await require_postgres()
    schema = fresh_schema_name()
    url = with_schema(base, schema)
    database = f"smsgw_restore_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{database}"')
    target = with_schema(_in_database(base, database), schema)
    copy = tmp_path / "backup.dump"
    try:
        hub = await HubProcess(tmp_path / "unused.db", tmp_path / "hub.log", database_url=url,
                               **LOAD).start()  # fmt: skip
        try:
            before = await backup_under_load(hub, url, copy)
        finally:
            await hub.stop()
        code, out = await smsgw(url, "restore", str(copy))
        assert code == 1 and "already holds smsgw's tables" in out, out  # never over a hub's
        code, out = await smsgw(with_schema(target, "elsewhere"), "restore", str(copy))
        assert code == 1 and f"?schema={schema}" in out, out
        code, out = await smsgw(target, "restore", str(copy))
        assert code == 0 and "migrations up to" in out, out
        restored = await HubProcess(tmp_path / "unused.db", database_url=target, **LOAD).start()
        try:
            await check_restored(restored, before)
        finally:
            await restored.stop()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await drop_schema(base, schema)
