"""PostgreSQL only: several hub nodes (one store, one pool each) on one database.

Migrations under the advisory lock, compare-and-set races between nodes, the schema URL
parameter, ``smsgw migrate``, a 10,000-message batch, and webhook subscriptions that
follow changes made on another node. Skipped without a server, failed under ``CI=true``
(see tests/pgtest.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import pytest

from smsgw.clock import new_id, utcnow
from smsgw.config import Settings
from smsgw.events import EventType
from smsgw.store import Batch, Message, Status, Webhook, create_store
from smsgw.store.migrations import load_migrations
from smsgw.store.postgres import PostgresStore, _Tx, split_url
from smsgw.store.sql import Stmt, UniqueViolation
from tests.builders import new_message
from tests.pgtest import drop_schema, fresh_schema_name, require_postgres, with_schema
from tests.smsgw.store.test_events_contract import add_hook
from tests.smsgw.store.test_store_contract import add_device, add_message

NODES = 3
T = TypeVar("T")


@pytest.fixture
async def schema_url() -> AsyncIterator[str]:
    """A URL naming a schema that does not exist yet (dropped afterwards)."""
    base = await require_postgres()
    schema = fresh_schema_name()
    yield with_schema(base, schema)
    await drop_schema(base, schema)


@pytest.fixture
async def nodes(schema_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Several stores on one schema: what several hub nodes are to the database."""
    stores = [PostgresStore(schema_url, max_size=3) for _ in range(NODES)]
    await asyncio.gather(*(s.open() for s in stores))
    yield stores
    await asyncio.gather(*(s.close() for s in stores))


async def versions(url: str) -> list[str]:
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations ORDER BY 1')
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_url_schema_parameter_is_taken_out_of_the_dsn() -> None:
    dsn, schema = split_url("postgresql://u:p@h:5432/db?sslmode=disable&schema=tenant_a")
    assert schema == "tenant_a" and dsn == "postgresql://u:p@h:5432/db?sslmode=disable"
    assert split_url("postgres://h/db") == ("postgres://h/db", None)


def test_create_store_picks_postgres_by_scheme() -> None:
    for url in ("postgresql://h/db", "postgres://h/db?schema=x"):
        store = create_store(Settings(database_url=url, db_pool_size=7))
        assert isinstance(store, PostgresStore) and store.postgres.max_size == 7


async def test_nodes_starting_together_migrate_once(schema_url: str) -> None:
    stores = [PostgresStore(schema_url, max_size=1) for _ in range(6)]
    applied = await asyncio.gather(*(s.migrate() for s in stores))
    expected = [m.version for m in load_migrations("postgres")]
    # Exactly one node applied everything; the others waited on the lock and found it done.
    assert sorted(len(a) for a in applied) == [0] * 5 + [len(expected)]
    assert await versions(schema_url) == expected
    await asyncio.gather(*(s.open() for s in stores))  # opening migrates: nothing left
    try:
        assert await versions(schema_url) == expected
        assert all(v.startswith(f"{i + 1:04d}_") for i, v in enumerate(expected))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_every_migration_has_a_postgres_variant() -> None:
    # A plain .sql would be applied to PostgreSQL as it is; every version so far is
    # SQLite-flavoured (TEXT timestamps, AUTOINCREMENT), so each needs its own file.
    for mig in load_migrations("postgres"):
        assert mig.path.name.endswith(".postgres.sql"), mig.path.name


async def test_racing_offers_from_several_nodes_have_one_winner(
    nodes: list[PostgresStore],
) -> None:
    devices = [await add_device(nodes[0], f"race-{i}") for i in range(NODES)]
    for _ in range(40):
        msg = await add_message(nodes[0])
        now = utcnow()
        lease = now + timedelta(seconds=5)
        won = await asyncio.gather(
            *(
                jittered(n.offer(msg.id, d, 0, now, lease))
                for n, d in zip(nodes, devices, strict=True)
            )
        )
        assert sum(won) == 1
        winner = devices[won.index(True)]
        # Every node's phone answers "accept" at once: only the one offered to owns it.
        accepted = await asyncio.gather(
            *(n.accept(msg.id, d, 1, now) for n, d in zip(nodes, devices, strict=True))
        )
        assert [d for d, ok in zip(devices, accepted, strict=True) if ok] == [winner]
        got = await nodes[1].get_message(msg.id, with_attempts=True)
        assert got is not None and got.status is Status.QUEUED and got.device_id == winner
        assert [a.device_id for a in got.attempts] == [winner]


async def test_accept_racing_release_and_cancel_on_other_nodes(
    nodes: list[PostgresStore],
) -> None:
    a, b = nodes[0], nodes[1]
    phone = await add_device(a, "racer")
    outcomes: dict[str, int] = {"accepted": 0, "released": 0, "cancelled": 0}
    for i in range(60):
        msg = await add_message(a)
        now = utcnow()
        assert await a.offer(msg.id, phone, 0, now, now + timedelta(seconds=5))
        other: Awaitable[object] = jittered(
            b.release_offer(msg.id, phone, 1, "timeout", now, now, 10)
            if i % 2
            else b.cancel_message(msg.id, now)
        )
        accepted, result = await asyncio.gather(jittered(a.accept(msg.id, phone, 1, now)), other)
        got = await nodes[2].get_message(msg.id)
        assert got is not None
        if accepted:
            outcomes["accepted"] += 1
            assert got.status is Status.QUEUED and got.device_id == phone
            # The loser saw the winner's row: no release; a cancel that found it owned.
            if i % 2:
                assert result is None
            else:
                assert isinstance(result, Message) and result.status is Status.QUEUED
            assert got.cancelled_at is None
        elif i % 2:
            outcomes["released"] += 1
            assert result is Status.PENDING and got.status is Status.PENDING
            assert got.device_id is None
        else:
            outcomes["cancelled"] += 1
            assert got.status is Status.CANCELLED
    assert sum(outcomes.values()) == 60
    assert outcomes["accepted"] and outcomes["released"] + outcomes["cancelled"], outcomes


async def jittered(aw: Awaitable[T]) -> T:
    """Start after a random sub-millisecond delay, so either racer may come first."""
    await asyncio.sleep(random.random() / 1000)
    return await aw


async def test_reports_from_two_nodes_count_once(nodes: list[PostgresStore]) -> None:
    """A phone reconnected to another node may report twice: one transition, one count."""
    phone = await add_device(nodes[0], "twice")
    for _ in range(20):
        msg = await add_message(nodes[0])
        now = utcnow()
        await nodes[0].offer(msg.id, phone, 0, now, now + timedelta(seconds=5))
        await nodes[0].accept(msg.id, phone, 1, now)
        sent = await asyncio.gather(*(n.mark_sent(msg.id, phone, now) for n in nodes))
        assert sent.count("+12025551111") == 1
        delivered = await asyncio.gather(*(n.mark_delivered(msg.id, phone, now) for n in nodes))
        assert delivered.count(True) == 1
    device = await nodes[2].get_device(phone)
    assert device is not None and device.sent_today == 20


async def test_otp_guesses_from_several_nodes_stop_at_max_attempts(
    nodes: list[PostgresStore],
) -> None:
    from smsgw.store import Otp

    now = utcnow()
    msg = new_message(
        recipient="+12025550000",
        body="code",
        expires_at=now + timedelta(minutes=5),
        sensitive=True,
    )
    otp = Otp(
        id=new_id(),
        recipient=msg.recipient,
        code_hash="x",
        message_id=msg.id,
        attempts=0,
        max_attempts=5,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    await nodes[0].create_otp(otp, msg)
    guesses = [nodes[i % NODES].record_otp_attempt(otp.id, False, now) for i in range(12)]
    counted = [r for r in await asyncio.gather(*guesses) if r is not None]
    assert sorted(o.attempts for o in counted) == [1, 2, 3, 4, 5]


async def test_idempotency_claims_from_several_nodes_have_one_winner(
    nodes: list[PostgresStore],
) -> None:
    now = utcnow()
    for i in range(20):
        claims = await asyncio.gather(
            *(
                n.idempotency_claim("key", f"k{i}", "h", now, now - timedelta(minutes=5))
                for n in nodes
            )
        )
        assert claims.count(None) == 1
        assert all(c is None or c.request_hash == "h" for c in claims)


async def test_schemas_are_isolated(schema_url: str) -> None:
    base = await require_postgres()
    other = fresh_schema_name()
    first, second = PostgresStore(schema_url), PostgresStore(with_schema(base, other))
    await first.open()
    await second.open()
    try:
        msg = await add_message(first)
        assert await second.get_message(msg.id) is None
        assert (await first.get_message(msg.id)) is not None
    finally:
        await first.close()
        await second.close()
        await drop_schema(base, other)


async def test_a_batch_of_10000_is_one_transaction(nodes: list[PostgresStore]) -> None:
    now = utcnow()
    batch = Batch(id=new_id(), name="big", total=10_000, rejected=0, created_at=now)
    messages = [
        Message(
            id=new_id(),
            recipient=f"+1202555{i:04d}",
            body="launch",
            status=Status.PENDING,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(hours=1),
            batch_id=batch.id,
            metadata={"row": i},
        )
        for i in range(10_000)
    ]
    started = time.monotonic()
    await nodes[0].create_batch(batch, messages)
    elapsed = time.monotonic() - started
    got = await nodes[1].get_batch(batch.id)
    assert got is not None and got.by_status == {"PENDING": 10_000}
    one = await nodes[2].get_message(messages[1234].id)
    assert one is not None and one.metadata == {"row": 1234}
    assert elapsed < 10, f"10,000 messages took {elapsed:.1f}s"
    # A batch that fails part-way leaves nothing behind (duplicate id -> the whole COPY).
    dup = Batch(id=new_id(), name="dup", total=2, rejected=0, created_at=now)
    with pytest.raises(UniqueViolation):  # the store's own error, whichever engine
        await nodes[0].create_batch(dup, [messages[0], messages[1]])
    assert await nodes[0].get_batch(dup.id) is None


async def test_webhook_changes_reach_the_other_nodes(nodes: list[PostgresStore]) -> None:
    a, b = nodes[0], nodes[1]
    now = utcnow()
    hook = Webhook(
        id=new_id(),
        url="http://127.0.0.1:9/hook",
        events=frozenset({EventType.MESSAGE_CANCELLED.value}),
        description=None,
        enabled=True,
        secret="s",
        created_at=now,
        updated_at=now,
    )
    await a.create_webhook(hook)  # on node A ...

    async def cancelled_event_on_b() -> bool:
        msg = await add_message(b)
        await b.cancel_message(msg.id, utcnow())  # ... a transition on node B
        claimed = await b.claim_deliveries(utcnow(), utcnow() + timedelta(minutes=1), 10)
        return any(d.webhook_id == hook.id for d in claimed)

    await _eventually(cancelled_event_on_b, "node B to learn of node A's webhook")
    assert await a.delete_webhook(hook.id)

    async def forgotten_on_b() -> bool:
        return not b._subs.wanted(EventType.MESSAGE_CANCELLED)

    await _eventually(forgotten_on_b, "node B to forget the deleted webhook")


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 5  # NOTIFY arrives in milliseconds; 5 s is generous
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_cancelled_caller_does_not_cut_a_write_short(nodes: list[PostgresStore]) -> None:
    phone = await add_device(nodes[0], "cancelled-caller")
    msg = await add_message(nodes[0])
    now = utcnow()
    task = asyncio.create_task(nodes[0].offer(msg.id, phone, 0, now, now + timedelta(seconds=5)))
    await asyncio.sleep(0)  # the write is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await nodes[0].close()  # waits for writes in flight
    await nodes[0].open()
    got = await nodes[1].get_message(msg.id, with_attempts=True)
    # Either it committed whole (the offer and its attempt row) or not at all.
    assert got is not None
    assert (got.attempt, len(got.attempts)) in {(0, 0), (1, 1)}


async def test_smsgw_migrate_on_postgres(schema_url: str) -> None:
    env = {**os.environ, "SMSGW_DATABASE_URL": schema_url}
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "smsgw", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
    assert await versions(schema_url) == [m.version for m in load_migrations("postgres")]


@pytest.mark.parametrize("pinned", [False, True])
async def test_a_removal_in_flight_orders_the_insert_of_a_new_message_offered_to_the_phone(
    nodes: list[PostgresStore], pinned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delete_device on one node, paused between its sweep and the device update, while
    another node stores a new message accepted by (or on offer to) that phone: the insert
    waits for the removal, then is refused (nothing written) or stored for nobody (FAILED
    when pinned) — never QUEUED for the removed phone."""
    remover, other = nodes[0], nodes[1]
    phone = await add_device(remover, "p")
    swept, go = asyncio.Event(), asyncio.Event()
    run = _Tx.do

    async def paused_after_sweep(tx: _Tx, stmt: Stmt) -> Any:
        """delete_device's transaction stops after its sweep of the phone's messages,
        before the device row is marked removed."""
        result = await run(tx, stmt)
        if stmt[1].startswith("UPDATE messages SET status = 'PENDING'"):
            swept.set()
            await go.wait()
        return result

    monkeypatch.setattr(_Tx, "do", paused_after_sweep)
    removal = asyncio.create_task(remover.delete_device(phone, utcnow()))
    await asyncio.wait_for(swept.wait(), 5)
    now = utcnow()
    lease = now + timedelta(seconds=5)
    kw = {"pinned_device_id": phone} if pinned else {}
    accepted, offered = new_message(**kw), new_message(**kw)
    inserts = asyncio.gather(
        other.create_message(accepted, offer_to=phone, lease_until=lease, accepted_at=now),
        other.create_message(offered, offer_to=phone, lease_until=lease),
    )
    await asyncio.sleep(0.3)
    waited = not inserts.done()  # they wait for the removal...
    go.set()  # (before any assert: a failing test must not leave the removal hanging)
    assert waited
    assert await removal
    assert await inserts == [False, False]  # ...and then see it
    assert await other.get_message(accepted.id) is None
    got = await other.get_message(offered.id)
    assert got is not None and got.device_id is None
    if pinned:
        assert got.status is Status.FAILED and got.error_code == "device_removed"
    else:
        assert got.status is Status.PENDING


async def test_mark_sent_locks_message_attempt_device_then_affinity(
    nodes: list[PostgresStore],
) -> None:
    """mark_sent is one statement; its parts must still lock rows in the one order the
    other writes use (mark_delivered, delete_device), since two orders are how two
    transactions deadlock. Seen from outside: while another transaction holds a row,
    which rows has the waiting mark_sent locked?"""
    store = nodes[0]
    phone = await add_device(store, "order")
    msg = new_message()
    now = utcnow()
    assert await store.create_message(msg, offer_to=phone, lease_until=now, accepted_at=now)
    assert await store.mark_sent(msg.id, phone, now)  # the affinity row exists from now on
    dsn, schema = split_url(store.postgres.url)
    settings = {"search_path": f'"{schema}"'}
    holder = await asyncpg.connect(dsn, server_settings=settings)
    peek = await asyncpg.connect(dsn, server_settings=settings)
    rows = {
        "messages": ("SELECT 1 FROM messages WHERE id = $1", msg.id),
        "attempts": ("SELECT 1 FROM message_attempts WHERE message_id = $1", msg.id),
        "device": ("SELECT 1 FROM devices WHERE id = $1", phone),
        "affinity": ("SELECT 1 FROM recipient_affinity WHERE recipient = $1", msg.recipient),
    }

    async def locked(name: str) -> bool:
        sql, arg = rows[name]
        try:
            async with peek.transaction():
                await peek.execute(sql + " FOR UPDATE NOWAIT", arg)
        except asyncpg.LockNotAvailableError:
            return True
        return False

    try:
        order = list(rows)
        for i, blocked in enumerate(order[1:], start=1):
            # Sent again, as far as mark_sent can tell.
            await holder.execute("UPDATE messages SET status = 'QUEUED' WHERE id = $1", msg.id)
            await holder.execute(
                "UPDATE message_attempts SET ended_at = NULL WHERE message_id = $1", msg.id
            )
            async with holder.transaction():
                sql, arg = rows[blocked]
                await holder.execute(sql + " FOR UPDATE", arg)
                sending = asyncio.create_task(store.mark_sent(msg.id, phone, utcnow()))
                await asyncio.sleep(0.3)  # until it waits for the row held here
                assert not sending.done()
                held = {name: await locked(name) for name in order if name != blocked}
                assert held == {name: name in order[:i] for name in held}, blocked
            assert await sending == msg.recipient
    finally:
        await holder.close()
        await peek.close()


async def test_a_transition_racing_the_removal_of_its_webhook_stands(
    nodes: list[PostgresStore],
) -> None:
    """A webhook is being removed (its transaction not yet committed, so no node has
    heard) while a phone's accept on another node raises an event for it: the accept
    waits for the removal, then stands, with no delivery for the gone webhook. Without
    the key-share lock, the foreign key check failed the accept itself."""
    a, b = nodes[0], nodes[1]
    device = await add_device(a, "hook-race")
    hook = await add_hook(a, "message.queued")

    async def known_on_b() -> bool:
        return bool(b._subs.targets(EventType.MESSAGE_QUEUED))

    await _eventually(known_on_b, "node B to learn of the webhook")
    msg = await add_message(a)
    now = utcnow()
    assert await b.offer(msg.id, device, 0, now, now + timedelta(seconds=5))
    dsn, schema = split_url(a.postgres.url)
    holder = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        removal = holder.transaction()
        await removal.start()
        await holder.execute("DELETE FROM webhooks WHERE id = $1", hook.id)
        accept = asyncio.create_task(b.accept(msg.id, device, 1, utcnow()))
        await asyncio.sleep(0.3)
        waited = not accept.done()
        await removal.commit()
        assert waited  # it waited for the removal...
        assert await accept  # ...and then stood
    finally:
        await holder.close()
    got = await a.get_message(msg.id)
    assert got is not None and got.status is Status.QUEUED and got.device_id == device
    claimed = await b.claim_deliveries(utcnow(), utcnow() + timedelta(minutes=1), 10)
    assert claimed == []
