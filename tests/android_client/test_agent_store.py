"""SqlitePhoneStore specifics: WAL, transactions, schema version, same rules as memory."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from android_client.backend import DeviceStatus, InboundSms, SendResult
from android_client.outbox import HeldCommand, MemoryPhoneStore, PhoneStore
from android_client.protocol import Emit, PhoneProtocol
from android_client.state import SqlitePhoneStore

STATUS = DeviceStatus(battery=50, charging=False, signal=2)


def test_wal_mode_and_a_reader_sees_committed_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqlitePhoneStore(path) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.put_held(HeldCommand("m1", 1, "+1", "b", None))
        with SqlitePhoneStore(path) as reader:  # e.g. `smsgw-agent status` while running
            assert [c.message_id for c in reader.held()] == ["m1"]


def test_batch_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqlitePhoneStore(path) as store, SqlitePhoneStore(path) as reader:
        with store.batch():
            store.put_held(HeldCommand("m1", 1, "+1", "b", None, "transmitted"))
            with store.batch():  # nested: joins the outer transaction
                store.put_report({"type": "sent", "id": "r1", "message_id": "m1", "attempt": 1})
            assert reader.held() == [] and reader.reports() == []  # nothing half-written
        assert len(reader.held()) == 1 and len(reader.reports()) == 1


def test_batch_keeps_writes_made_before_an_error(tmp_path: Path) -> None:
    with SqlitePhoneStore(tmp_path / "state.db") as store:
        with pytest.raises(RuntimeError), store.batch():
            store.set_meta("k", "v")
            raise RuntimeError("boom")
        assert store.get_meta("k") == "v"  # like the memory store: what was done stays
        store.set_meta("k", "w")  # and the connection is usable (no open transaction)
    with SqlitePhoneStore(tmp_path / "state.db") as store:
        assert store.get_meta("k") == "w"


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqlitePhoneStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ValueError, match=r"schema version 99.*upgrade the agent"):
        SqlitePhoneStore(path)


def test_refuses_an_unknown_held_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqlitePhoneStore(path) as store:
        store.put_held(HeldCommand("m1", 1, "+1", "b", None))
        store._db.execute("UPDATE held SET state = 'lost'")
        with pytest.raises(ValueError, match="unknown state 'lost'"):
            store.held()


def scenario(store: PhoneStore) -> list[object]:
    """A protocol run touching every kind of state; returns what the store holds after."""
    p = PhoneProtocol(store, id_prefix="t")
    p.hello(STATUS, [])
    p.receive({"type": "welcome", "id": "w", "device_id": "d", "heartbeat_interval": 30})
    for mid in ("m1", "m2", "m3"):
        p.receive(
            {
                "type": "send",
                "id": f"s{mid}",
                "message_id": mid,
                "attempt": 1,
                "to": "+1555",
                "body": f"body {mid}",
            }
        )
        p.accept(mid, 1)
    p.receive({"type": "ownership", "id": "o1", "message_id": "m1", "attempt": 1, "owner": True})
    p.receive({"type": "ownership", "id": "o2", "message_id": "m2", "attempt": 1, "owner": False})
    [sent] = p.transmitted("m1", 1, SendResult(ok=True, parts=2))
    assert isinstance(sent, Emit)
    p.receive({"type": "ownership", "id": "o3", "message_id": "m3", "attempt": 2, "owner": True})
    [inbound] = p.inbound(InboundSms("l1", "+1666", "hi", datetime(2024, 1, 1, tzinfo=UTC)))
    assert isinstance(inbound, Emit)
    p.receive({"type": "ack", "id": "a1", "ref": inbound.frame["id"]})
    return [store.held(), store.reports(), store.inbound()]


def test_same_protocol_outcome_as_the_memory_store(tmp_path: Path) -> None:
    with SqlitePhoneStore(tmp_path / "state.db") as sqlite_store:
        assert scenario(sqlite_store) == scenario(MemoryPhoneStore())
        held = sqlite_store.held()
    assert [(c.message_id, c.attempt, c.state) for c in held] == [
        ("m1", 1, "transmitted"),
        ("m3", 2, "owned"),
    ]


def test_sent_messages_are_kept_for_their_report_until_they_age_out(tmp_path: Path) -> None:
    with SqlitePhoneStore(tmp_path / "s.db") as store:
        store.put_sent("old", 1, 1_000_000.0)
        store.put_sent("m", 2, 1_000_000.0 + 3600)
        assert (store.sent_attempt("old"), store.sent_attempt("m")) == (1, 2)
        store.put_sent("new", 4, 1_000_000.0 + 6 * 86400)  # 6 days on: "old" is too old
        assert store.sent_attempt("old") is None and store.sent_attempt("m") is None
        assert store.sent_attempt("new") == 4
        store.drop_sent("new")
        assert store.sent_attempt("new") is None
