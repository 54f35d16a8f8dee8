"""The store's rules that need no SQL (smsgw/store/rules.py), and the machinery that runs
an operation written once on either engine (sql.py, dialect.py), without a database."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from smsgw.store import DeliveryStatus, Status
from smsgw.store.dialect import Dialect, SqliteDialect
from smsgw.store.rules import (
    DEVICE_REMOVED,
    after_failure,
    after_release,
    disabled_reason,
    first_offer,
    next_delivery_status,
    not_offered,
    offered_to_removed,
    settle_first_offer,
    should_disable,
    utc_day,
)
from smsgw.store.sql import Kind, Op, Rollback, Stmt, UniqueViolation, execute, run_sync
from tests.builders import new_message

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [(1, 3, Status.PENDING), (2, 3, Status.PENDING), (3, 3, Status.FAILED), (4, 3, Status.FAILED)],
)
def test_a_released_offer_fails_the_message_once_the_attempts_are_used_up(
    attempt: int, max_attempts: int, expected: Status
) -> None:
    assert after_release(attempt, max_attempts) is expected


@pytest.mark.parametrize(
    ("status", "attempt", "reported", "retryable", "expected"),
    [
        (Status.QUEUED, 1, 1, True, Status.PENDING),  # retryable, attempts left: next phone
        (Status.PENDING, 1, 1, True, Status.PENDING),  # a declined offer
        (Status.QUEUED, 1, 1, False, Status.FAILED),  # the phone says: do not retry
        (Status.QUEUED, 3, 3, True, Status.FAILED),  # out of attempts
        (Status.SENT, 1, 1, True, Status.FAILED),  # transmitted: a retry could send twice
        (Status.QUEUED, 2, 1, True, None),  # about an older attempt: stale
        (Status.DELIVERED, 1, 1, False, None),  # final: never backwards
        (Status.FAILED, 1, 1, True, None),
        (Status.CANCELLED, 1, 1, True, None),
    ],
)
def test_a_failure_report_moves_the_message_forward_or_not_at_all(
    status: Status, attempt: int, reported: int, retryable: bool, expected: Status | None
) -> None:
    got = after_failure(status, attempt, reported, retryable=retryable, max_attempts=3)
    assert got is expected


def test_first_offer_and_its_undoing() -> None:
    msg = new_message(created_at=NOW)
    lease = NOW + timedelta(seconds=5)
    first_offer(msg, "p", lease, None)
    assert (msg.status, msg.device_id, msg.attempt, msg.lease_until) == (
        Status.PENDING,
        "p",
        1,
        lease,
    )
    first_offer(msg, "p", lease, NOW + timedelta(seconds=1))  # accepted at once
    assert (msg.status, msg.lease_until, msg.queued_at) == (
        Status.QUEUED,
        None,
        NOW + timedelta(seconds=1),
    )
    not_offered(msg)
    assert (msg.status, msg.device_id, msg.attempt, msg.queued_at) == (
        Status.PENDING,
        None,
        0,
        None,
    )
    assert msg.updated_at == msg.created_at


def test_an_offer_to_a_removed_phone_fails_only_a_message_pinned_to_it() -> None:
    free, pinned = new_message(created_at=NOW), new_message(created_at=NOW, pinned_device_id="p")
    for msg in (free, pinned):
        first_offer(msg, "p", NOW, None)
        offered_to_removed(msg, "p", NOW + timedelta(seconds=1))
    assert (free.status, free.device_id, free.error_code) == (Status.PENDING, None, None)
    assert (pinned.status, pinned.error_code) == (Status.FAILED, DEVICE_REMOVED)
    assert pinned.failed_at == NOW + timedelta(seconds=1)


async def test_settle_first_offer_leaves_the_message_as_stored() -> None:
    async def stored(ok: bool) -> bool:
        return ok

    async def broken() -> bool:
        raise OSError("disk I/O error")

    msg = new_message(created_at=NOW)
    first_offer(msg, "p", NOW, NOW)
    assert await settle_first_offer(msg, "p", NOW, NOW, stored(True))
    assert msg.status is Status.QUEUED
    refused = new_message(created_at=NOW)
    first_offer(refused, "p", NOW, NOW)
    assert not await settle_first_offer(refused, "p", NOW, NOW, stored(False))
    assert (refused.status, refused.device_id) == (Status.PENDING, None)
    failed = new_message(created_at=NOW)
    first_offer(failed, "p", NOW, None)
    with pytest.raises(OSError):
        await settle_first_offer(failed, "p", None, NOW, broken())
    assert (failed.device_id, failed.attempt) == (None, 0)


@pytest.mark.parametrize(
    ("succeeded", "retry", "attempts", "expected"),
    [
        (True, False, 5, DeliveryStatus.SUCCEEDED),
        (False, True, 1, DeliveryStatus.PENDING),
        (False, True, 5, DeliveryStatus.DEAD),  # the last attempt
        (False, False, 1, DeliveryStatus.DEAD),  # no retry time: give up now
    ],
)
def test_next_delivery_status(
    succeeded: bool, retry: bool, attempts: int, expected: DeliveryStatus
) -> None:
    retry_at = NOW if retry else None
    assert next_delivery_status(succeeded, retry_at, attempts, 5) is expected


def test_a_webhook_is_disabled_after_failing_for_the_whole_window() -> None:
    since = NOW - timedelta(hours=1)
    assert not should_disable(since, NOW - timedelta(seconds=1), 3600)
    assert should_disable(since, NOW, 3600)
    assert disabled_reason(since) == (
        "disabled by the hub: every delivery failed since 2026-12-07T11:00:00.000000Z"
    )


def test_a_send_counts_on_its_utc_day() -> None:
    late_in_new_york = datetime(2026, 3, 1, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_day(late_in_new_york) == "2026-03-02"


# -- running an operation -----------------------------------------------------------------


def test_sqlite_gets_its_placeholders_and_values() -> None:
    d = SqliteDialect()
    assert d.sql("SELECT $1::text, $12, $2::timestamptz WHERE x = ANY($3::text[])") == (
        "SELECT ?1, ?12, ?2 WHERE x = ANY(?3)"
    )
    db = sqlite3.connect(":memory:")
    stored = db.execute(d.sql("SELECT $1, $2"), (NOW, d.text_list(["a", "b"]))).fetchone()
    assert stored == ("2026-12-07T12:00:00.000000Z", '["a", "b"]')  # sorts as time does
    later = db.execute("SELECT ? > ?", (NOW + timedelta(microseconds=1), NOW)).fetchone()
    assert later == (1,)
    assert Dialect().text_list(["a"]) == ["a"]  # asyncpg takes the list itself


def test_unique_violations_are_the_stores_own_error_on_both_engines() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    db.execute("INSERT INTO t VALUES ('a', 'x')")
    with pytest.raises(sqlite3.IntegrityError) as dup:
        db.execute("INSERT INTO t VALUES ('a', 'y')")
    with pytest.raises(sqlite3.IntegrityError) as null:
        db.execute("INSERT INTO t VALUES ('b', NULL)")
    sqlite = SqliteDialect()
    assert isinstance(sqlite.error(dup.value), UniqueViolation)
    assert sqlite.error(null.value) is null.value  # not every constraint is a unique one
    pg_dup = asyncpg.UniqueViolationError("duplicate key")
    assert isinstance(Dialect().error(pg_dup), UniqueViolation)
    other = asyncpg.DeadlockDetectedError("deadlock")
    assert Dialect().error(other) is other


def test_an_operation_sees_results_and_errors_of_its_statements() -> None:
    seen: list[object] = []

    def op() -> Op[str]:
        n = yield execute("UPDATE t SET v = $1", "x")
        seen.append(n)
        try:
            yield execute("INSERT INTO t VALUES ($1)", "dup")
        except UniqueViolation:
            seen.append("caught")
        return "done"

    def do(stmt: Stmt) -> object:
        kind, sql, _ = stmt
        assert kind is Kind.EXECUTE
        if sql.startswith("INSERT"):
            raise UniqueViolation("t.k")
        return 3

    assert run_sync(op(), do) == "done"
    assert seen == [3, "caught"]


def test_an_error_the_operation_does_not_catch_reaches_the_driver() -> None:
    def op() -> Op[None]:
        yield execute("UPDATE t SET v = 1")
        raise Rollback(False)

    with pytest.raises(Rollback) as rolled_back:
        run_sync(op(), lambda stmt: 1)
    assert rolled_back.value.value is False

    def failing() -> Op[None]:
        yield execute("SELECT")

    def broken(stmt: Stmt) -> None:
        raise OSError("disk I/O error")

    with pytest.raises(OSError):
        run_sync(failing(), broken)
