"""The store contract (the compare-and-set rules that keep one owner per message), on a
SQLite file, on SQLite's shared in-memory database (``memory://``) and on PostgreSQL; and
SQLite migrations and group commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smsgw.clock import new_id, utcnow
from smsgw.store import Inbound, Message, MessageFilter, OptOut, Status, Store
from smsgw.store.migrations import load_migrations
from smsgw.store.postgres import PostgresStore
from smsgw.store.sql import Op, execute, fetch
from smsgw.store.sqlite import MEMORY, SqliteStore
from tests.builders import new_message
from tests.pgtest import (
    drop_schema,
    fresh_schema_name,
    harness_store,
    require_postgres,
    with_schema,
)


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every contract test runs against every implementation (PostgreSQL: in a schema of
    its own, dropped afterwards; skipped without a server, failed under CI)."""
    if request.param != "postgres" and harness_store() == "postgres":
        pytest.skip("the SMSGW_TEST_STORE=postgres pass runs only the PostgreSQL store")
    if request.param == "postgres":
        base = await require_postgres()
        schema = fresh_schema_name()
        pg = PostgresStore(with_schema(base, schema), max_size=4)
        await pg.open()
        yield pg
        await pg.close()
        await drop_schema(base, schema)
        return
    s: Store = SqliteStore(tmp_path / "hub.db" if request.param == "sqlite" else MEMORY)
    await s.open()
    yield s
    await s.close()


def select(sql: str, *args: object) -> Op[list[sqlite3.Row]]:
    found: list[sqlite3.Row] = yield fetch(sql, *args)
    return found


async def add_message(store: Store, **kw: object) -> Message:
    msg = new_message(**kw)
    await store.create_message(msg)
    return msg


async def add_device(store: Store, hw: str) -> str:
    result = await store.register_device(
        device_id=new_id(),
        name=hw,
        hardware_id=hw,
        sims=[],
        fcm_token=None,
        token_prefix="dev_" + hw,
        token_hash="h" + hw,
        now=utcnow(),
        enrollment_code_hash=None,
    )
    assert result is not None
    return result[0].id


async def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "m.db")
    await s.open()
    assert await s.migrate() == []
    rows = await s.driver.read(lambda: select("SELECT version FROM schema_migrations"))
    expected = [m.version for m in load_migrations("sqlite")]
    assert [r[0] for r in rows] == expected and expected[0] == "0001_init"
    await s.close()
    again = SqliteStore(tmp_path / "m.db")
    await again.open()  # reopening applies nothing twice
    await again.close()


async def test_offer_accept_is_a_compare_and_set(store: Store) -> None:
    a, b = await add_device(store, "a"), await add_device(store, "b")
    msg = await add_message(store)
    now = utcnow()
    lease = now + timedelta(seconds=5)
    assert await store.offer(msg.id, a, 0, now, lease)
    # A second offer while the lease is live fails, whoever asks.
    assert not await store.offer(msg.id, b, 0, now, lease)
    assert not await store.offer(msg.id, b, 1, now, lease)
    # A times out; the offer is released and moves on to B under attempt 2.
    assert await store.release_offer(msg.id, a, 1, "timeout", now, now, 10) is Status.PENDING
    assert await store.offer(msg.id, b, 1, now, lease)
    # A's late accept of attempt 1 loses; B's accept of attempt 2 wins, and is idempotent.
    assert not await store.accept(msg.id, a, 1, now)
    assert await store.accept(msg.id, b, 2, now)
    assert await store.accept(msg.id, b, 2, now)
    got = await store.get_message(msg.id, with_attempts=True)
    assert got is not None and got.status is Status.QUEUED and got.device_id == b
    assert [(x.device_id, x.outcome) for x in got.attempts] == [(a, "timeout"), (b, None)]
    # Reports from a phone that does not own it change nothing.
    assert await store.mark_sent(msg.id, a, now) is None
    assert await store.mark_sent(msg.id, b, now) == "+12025551111"
    assert await store.mark_delivered(msg.id, b, now)
    assert not await store.mark_sent(msg.id, b, now)  # never backwards
    assert await store.recent_affinities(10) == [("+12025551111", b)]


async def test_a_send_ends_its_attempt_and_counts_for_its_phone_on_its_utc_day(
    store: Store,
) -> None:
    a, b = await add_device(store, "a"), await add_device(store, "b")
    day = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    sends = [
        (day, "2026-03-01", 1),
        (day + timedelta(seconds=2), "2026-03-02", 1),  # a new UTC day starts again at 1
        (day + timedelta(seconds=3), "2026-03-02", 2),
    ]
    for at, sent_day, count in sends:
        msg = await add_message(store)
        assert await store.offer(msg.id, a, 0, at, at + timedelta(seconds=5))
        assert await store.accept(msg.id, a, 1, at)
        assert await store.mark_sent(msg.id, b, at) is None  # not b's: counts for nobody
        assert await store.mark_sent(msg.id, a, at) == msg.recipient
        assert await store.mark_sent(msg.id, a, at) is None  # a repeat counts once
        device = await store.get_device(a)
        assert device is not None and (device.sent_day, device.sent_today) == (sent_day, count)
        got = await store.get_message(msg.id, with_attempts=True)
        assert got is not None and got.status is Status.SENT and got.sent_at == at
        [attempt] = got.attempts
        assert (attempt.device_id, attempt.outcome, attempt.ended_at) == (a, "sent", at)
    other = await store.get_device(b)
    assert other is not None and other.sent_today == 0


async def test_release_that_loses_to_accept_returns_none(store: Store) -> None:
    a = await add_device(store, "a")
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, a, 0, now, now + timedelta(seconds=5))
    assert await store.accept(msg.id, a, 1, now)
    assert await store.release_offer(msg.id, a, 1, "timeout", now, now, 10) is None


async def test_concurrent_offers_have_exactly_one_winner(store: Store) -> None:
    devices = [await add_device(store, f"d{i}") for i in range(8)]
    msg = await add_message(store)
    now = utcnow()
    results = await asyncio.gather(
        *(store.offer(msg.id, d, 0, now, now + timedelta(seconds=5)) for d in devices)
    )
    assert sum(results) == 1


async def test_failures_retryable_then_final(store: Store) -> None:
    a = await add_device(store, "a")
    msg = await add_message(store)
    now = utcnow()
    await store.offer(msg.id, a, 0, now, now + timedelta(seconds=5))
    await store.accept(msg.id, a, 1, now)
    st = await store.mark_failed(
        msg.id,
        a,
        1,
        error_code="radio_off",
        error="x",
        retryable=True,
        now=now,
        retry_at=now,
        max_attempts=2,
    )
    assert st is Status.PENDING
    got = await store.get_message(msg.id)
    assert got is not None and got.device_id is None and got.error_code == "radio_off"
    await store.offer(msg.id, a, 1, now, now + timedelta(seconds=5))
    await store.accept(msg.id, a, 2, now)
    # Out of attempts: even a retryable failure is final.
    st = await store.mark_failed(
        msg.id,
        a,
        2,
        error_code="radio_off",
        error="x",
        retryable=True,
        now=now,
        retry_at=now,
        max_attempts=2,
    )
    assert st is Status.FAILED
    assert (
        await store.mark_failed(
            msg.id,
            a,
            2,
            error_code="e",
            error="",
            retryable=False,
            now=now,
            retry_at=None,
            max_attempts=2,
        )
        is None
    )


async def test_expiry_and_due_messages(store: Store) -> None:
    now = utcnow()
    old = await add_message(store, expires_at=now - timedelta(seconds=1))
    later = await add_message(store, next_attempt_at=now + timedelta(minutes=5))
    due = await add_message(store)
    assert await store.expire_messages(now) == [old.id]
    assert [m.id for m in await store.due_messages(now, 10)] == [due.id]
    got = await store.get_message(old.id)
    assert got is not None and got.status is Status.FAILED and got.error_code == "expired"
    assert later.id not in [m.id for m in await store.due_messages(now, 10)]


async def test_enrollment_code_is_single_use_and_reregistration_keeps_the_id(
    store: Store,
) -> None:
    now = utcnow()
    await store.create_enrollment_code("c1", now, now + timedelta(minutes=1))
    await store.create_enrollment_code("old", now, now - timedelta(seconds=1))
    kw = dict(name="p", sims=[], fcm_token=None, now=now)
    first = await store.register_device(
        device_id="id1",
        hardware_id="hw",
        token_prefix="p1",
        token_hash="t1",
        enrollment_code_hash="c1",
        **kw,
    )
    assert first is not None and first[1] is True
    reused = await store.register_device(
        device_id="id2",
        hardware_id="hw2",
        token_prefix="p2",
        token_hash="t2",
        enrollment_code_hash="c1",
        **kw,
    )
    expired = await store.register_device(
        device_id="id3",
        hardware_id="hw3",
        token_prefix="p3",
        token_hash="t3",
        enrollment_code_hash="old",
        **kw,
    )
    assert reused is None and expired is None
    assert [d.hardware_id for d in await store.list_devices()] == ["hw"]  # nothing half-written
    again = await store.register_device(
        device_id="id4",
        hardware_id="hw",
        token_prefix="p4",
        token_hash="t4",
        enrollment_code_hash=None,
        **kw,
    )
    assert again is not None and again[0].id == "id1" and again[1] is False
    assert await store.device_by_token_prefix("p1") is None  # the old token is dead
    assert await store.device_by_token_prefix("p4") is not None


async def test_deleting_a_device_returns_its_messages_to_the_outbox(store: Store) -> None:
    a = await add_device(store, "a")
    msg = await add_message(store)
    pinned = await add_message(store, pinned_device_id=a)
    now = utcnow()
    await store.offer(msg.id, a, 0, now, now + timedelta(seconds=5))
    await store.accept(msg.id, a, 1, now)
    assert await store.delete_device(a, now)
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.PENDING and got.device_id is None
    got = await store.get_message(pinned.id)
    assert got is not None and got.status is Status.FAILED and got.error_code == "device_removed"
    assert not await store.delete_device(a, now)


async def test_inbound_is_stored_once_and_lists_paginate(store: Store) -> None:
    now = utcnow()
    item = Inbound(
        id=new_id(),
        device_id="d",
        local_id="L1",
        sender="+1555",
        body="b",
        sim_slot=None,
        received_at=now,
        created_at=now,
    )
    assert await store.store_inbound(item)
    item.id = new_id()
    assert not await store.store_inbound(item)
    for _ in range(5):
        await add_message(store)
    page1 = await store.list_messages(MessageFilter(limit=3))
    page2 = await store.list_messages(
        MessageFilter(limit=3, after=(page1[-1].created_at, page1[-1].id))
    )
    assert len(page1) == 3 and len(page2) == 2
    assert not {m.id for m in page1} & {m.id for m in page2}


async def test_cancel_only_while_no_phone_owns_it(store: Store) -> None:
    a = await add_device(store, "a")
    now = utcnow()
    pending = await add_message(store)
    on_offer = await add_message(store)
    owned = await add_message(store)
    await store.offer(on_offer.id, a, 0, now, now + timedelta(seconds=5))
    await store.offer(owned.id, a, 0, now, now + timedelta(seconds=5))
    await store.accept(owned.id, a, 1, now)
    got = await store.cancel_message(pending.id, now)
    assert got is not None and got.status is Status.CANCELLED and got.cancelled_at == now
    got = await store.cancel_message(on_offer.id, now)
    assert got is not None and got.status is Status.CANCELLED
    assert not await store.accept(on_offer.id, a, 1, now)  # the phone's late accept loses
    got = await store.cancel_message(owned.id, now)
    assert got is not None and got.status is Status.QUEUED  # owned: not cancelled
    assert await store.cancel_message("nope", now) is None
    assert [m.id for m in await store.due_messages(now, 10)] == []


async def test_due_messages_by_priority_then_age_and_custom_id_filter(store: Store) -> None:
    now = utcnow()
    old_low = await add_message(store, created_at=now - timedelta(seconds=3))
    high = await add_message(store, priority=5, custom_id="order-7", metadata={"k": [1, 2]})
    new_low = await add_message(store)
    due = [m.id for m in await store.due_messages(now, 10)]
    assert due == [high.id, old_low.id, new_low.id]
    found = await store.list_messages(MessageFilter(custom_id="order-7"))
    assert [m.id for m in found] == [high.id] and found[0].metadata == {"k": [1, 2]}
    assert found[0].priority == 5


async def test_idempotency_claim_complete_release_purge(store: Store) -> None:
    now = utcnow()
    long_ago = now - timedelta(hours=1)
    assert await store.idempotency_claim("k1", "abc", "h1", now, long_ago) is None
    running = await store.idempotency_claim("k1", "abc", "h1", now, long_ago)
    assert running is not None and running.status_code is None and running.request_hash == "h1"
    assert await store.idempotency_claim("k2", "abc", "h1", now, long_ago) is None  # per API key
    await store.idempotency_complete("k1", "abc", 202, '{"ok":1}')
    done = await store.idempotency_claim("k1", "abc", "other", now, long_ago)
    assert done is not None and (done.status_code, done.response) == (202, '{"ok":1}')
    await store.idempotency_release("k1", "abc")  # a finished key is not released
    assert await store.idempotency_claim("k1", "abc", "h1", now, long_ago) is not None
    await store.idempotency_release("k2", "abc")
    assert await store.idempotency_claim("k2", "abc", "h1", now, long_ago) is None
    assert await store.purge_idempotency(now + timedelta(seconds=1)) == 2
    assert await store.idempotency_claim("k1", "abc", "h1", now, long_ago) is None


async def test_a_failure_after_sent_is_final(store: Store) -> None:
    a = await add_device(store, "a")
    msg = await add_message(store)
    now = utcnow()
    await store.offer(msg.id, a, 0, now, now + timedelta(seconds=5))
    await store.accept(msg.id, a, 1, now)
    await store.mark_sent(msg.id, a, now)
    st = await store.mark_failed(
        msg.id,
        a,
        1,
        error_code="delivery_failed_0x46",
        error="x",
        retryable=True,
        now=now,
        retry_at=now,
        max_attempts=10,
    )
    assert st is Status.FAILED  # transmitted: never handed to another phone
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.FAILED and got.sent_at is not None


async def test_an_abandoned_idempotency_claim_is_taken_over(store: Store) -> None:
    then = utcnow() - timedelta(minutes=10)
    assert await store.idempotency_claim("k", "x", "h", then, then - timedelta(minutes=5)) is None
    now = utcnow()
    # Still running as far as a recent cut-off knows...
    assert await store.idempotency_claim("k", "x", "h", now, then - timedelta(seconds=1))
    # ...but older than the abandon cut-off: claimed afresh.
    assert await store.idempotency_claim("k", "x", "h", now, now - timedelta(minutes=5)) is None
    await store.idempotency_complete("k", "x", 200, "{}")
    done = await store.idempotency_claim("k", "x", "h", now + timedelta(hours=1), now)
    assert done is not None and done.status_code == 200  # a finished one is never taken over


async def test_an_expired_offer_forgets_its_phone(store: Store) -> None:
    a = await add_device(store, "a")
    now = utcnow()
    msg = await add_message(store, expires_at=now - timedelta(seconds=1))
    # Offered under a lease that ran out without a release (the hub died mid-offer).
    assert await store.offer(msg.id, a, 0, now - timedelta(seconds=10), now - timedelta(seconds=5))
    assert await store.expire_messages(now) == [msg.id]
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.FAILED and got.device_id is None


async def test_opt_out_list(store: Store) -> None:
    now = utcnow()
    assert await store.add_opt_out(OptOut("+12025550002", "inbound", "STOP", now))
    assert await store.add_opt_out(OptOut("+12025550001", "api", None, now))
    assert not await store.add_opt_out(OptOut("+12025550001", "api", "again", now))
    page = await store.list_opt_outs(after=None, limit=1)
    assert [o.number for o in page] == ["+12025550001"]
    rest = await store.list_opt_outs(after=page[-1].number, limit=10)
    assert [(o.number, o.source) for o in rest] == [("+12025550002", "inbound")]
    assert await store.remove_opt_out("+12025550001")
    assert not await store.remove_opt_out("+12025550001")


async def test_a_replayed_failure_of_an_older_attempt_changes_nothing(store: Store) -> None:
    """The phone declined offer 1 (retryable), then accepted offer 2 and owns the message;
    its old failure report, replayed after a reconnect, must not put the message back in
    the outbox while the phone is sending it (another phone would get it too)."""
    phone = await add_device(store, "a")
    msg = await add_message(store)
    now = utcnow()
    lease = now + timedelta(seconds=5)
    assert await store.offer(msg.id, phone, 0, now, lease)
    kw = {"error_code": "busy", "error": "radio busy", "now": now, "max_attempts": 10}
    declined = await store.mark_failed(msg.id, phone, 1, retryable=True, retry_at=now, **kw)
    assert declined is Status.PENDING
    assert await store.offer(msg.id, phone, 1, utcnow(), lease)
    assert await store.accept(msg.id, phone, 2, utcnow())
    replayed = await store.mark_failed(msg.id, phone, 1, retryable=True, retry_at=now, **kw)
    assert replayed is None
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.QUEUED and got.device_id == phone


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    if harness_store() == "postgres":
        pytest.skip("the SMSGW_TEST_STORE=postgres pass runs only the PostgreSQL store")
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    yield store
    await store.close()


def hold(gate: threading.Event) -> Op[None]:
    """A write that keeps the writer thread busy until ``gate`` opens."""
    gate.wait(10)
    yield execute("SELECT 1")


def half_then_fail(message_id: str) -> Op[None]:
    yield execute("UPDATE messages SET body = 'half-written' WHERE id = $1", message_id)
    raise RuntimeError("this write fails after changing a row")


async def test_sqlite_a_failing_write_fails_alone_in_its_batch(sqlite_store: SqliteStore) -> None:
    """Group commit: writes queued together share a transaction, and one that raises
    leaves no trace while the others commit."""
    store = sqlite_store
    existing = await add_message(store)
    # Hold the writer so the next writes queue up and go into one batch.
    gate = threading.Event()
    held = asyncio.ensure_future(store.driver.write(lambda: hold(gate)))
    await asyncio.sleep(0.05)
    writer = store.sqlite.writer
    assert writer is not None
    batches = writer.batches
    first, second = new_id(), new_id()
    writes = [
        asyncio.ensure_future(store.create_message(new_message(id=first, body="batch"))),
        asyncio.ensure_future(store.driver.write(lambda: half_then_fail(existing.id))),
        asyncio.ensure_future(store.create_message(new_message(id=existing.id))),  # duplicate
        asyncio.ensure_future(store.create_message(new_message(id=second, body="batch"))),
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await held
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert writer.batches == batches + 2  # the held write, then the four together
    assert results[0] is True and results[3] is True
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], Exception)
    for id_ in (first, second):
        got = await store.get_message(id_)
        assert got is not None and got.body == "batch"
    kept = await store.get_message(existing.id)
    assert kept is not None and kept.body == "hi"  # nothing of the failed writes


async def test_sqlite_a_lone_failing_write_leaves_no_trace(sqlite_store: SqliteStore) -> None:
    msg = await add_message(sqlite_store)
    with pytest.raises(RuntimeError):
        await sqlite_store.driver.write(lambda: half_then_fail(msg.id))
    got = await sqlite_store.get_message(msg.id)
    assert got is not None and got.body == "hi"
    await add_message(sqlite_store)  # the writer goes on


async def test_a_new_message_on_offer_to_a_removed_phone_is_not_its_own(store: Store) -> None:
    """create_message(offer_to=) checks the phone in its transaction: the accept of a
    removed phone writes nothing, and an ended offer is stored on offer to nobody."""
    removed, live = await add_device(store, "a"), await add_device(store, "b")
    assert await store.delete_device(removed, utcnow())
    now = utcnow()
    lease = now + timedelta(seconds=5)
    accepted = new_message()
    assert not await store.create_message(
        accepted, offer_to=removed, lease_until=lease, accepted_at=now
    )
    assert await store.get_message(accepted.id) is None
    assert (accepted.status, accepted.device_id, accepted.attempt) == (Status.PENDING, None, 0)
    offered = new_message()
    assert not await store.create_message(offered, offer_to=removed, lease_until=lease)
    got = await store.get_message(offered.id, with_attempts=True)
    assert got is not None and (got.status, got.device_id, got.attempt) == (Status.PENDING, None, 0)
    assert got.attempts == [] and offered.device_id is None
    assert offered.id in [m.id for m in await store.due_messages(now, 10)]
    pinned = new_message(pinned_device_id=removed)  # fails, as the removal fails them
    assert not await store.create_message(pinned, offer_to=removed, lease_until=lease)
    got = await store.get_message(pinned.id)
    assert got is not None and (got.status, got.error_code) == (Status.FAILED, "device_removed")
    assert pinned.status is Status.FAILED and pinned.failed_at is not None
    owned = new_message()
    assert await store.create_message(owned, offer_to=live, lease_until=lease, accepted_at=now)
    assert (owned.status, owned.device_id) == (Status.QUEUED, live)


def sqlite_plan(store: SqliteStore, op: Op[object]) -> list[str]:
    """How SQLite would run the first statement of an operation (not run)."""
    _, sql, args = next(op)
    db = sqlite3.connect(store.sqlite.path)
    try:
        return [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + store.d.sql(sql), args)]
    finally:
        db.close()


async def test_sqlite_the_periodic_and_hot_queries_use_their_indexes(
    sqlite_store: SqliteStore,
) -> None:
    """A query that walks every message is fine in a test and a stall in production (the
    expiry sweep once did, every outbox round, ordered by id for PostgreSQL's locks)."""
    store, now = sqlite_store, utcnow()
    plans = {
        "expire": sqlite_plan(store, Store.expire_messages.__wrapped__(store, now)),  # type: ignore[attr-defined]
        "due": sqlite_plan(store, Store.due_messages.__wrapped__(store, now, 10)),  # type: ignore[attr-defined]
        "owned": sqlite_plan(store, store._owned("d")),
    }
    assert any("messages_outbox" in p for p in plans["expire"]), plans
    assert any("messages_outbox" in p for p in plans["due"]), plans
    assert any("messages_owned" in p for p in plans["owned"]), plans
    for name, plan in plans.items():
        assert not [p for p in plan if p.startswith("SCAN messages") and "outbox" not in p], name
