"""PhoneStore durability (JSON and SQLite stores) and the reconnect backoff."""

from __future__ import annotations

import math
import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from android_client.client import Backoff, ws_url_for
from android_client.outbox import HeldCommand, JsonPhoneStore, MemoryPhoneStore, PhoneStore
from android_client.state import SqlitePhoneStore

# --- store ---------------------------------------------------------------------------


Opener = Callable[[Path], PhoneStore]


@pytest.fixture(params=["json", "sqlite"])
def open_store(request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens a durable store of one kind at a path; everything opened is closed after."""
    opened: list[PhoneStore] = []

    def opener(path: Path) -> PhoneStore:
        file = path.with_suffix(f".{request.param}")
        store: PhoneStore = (
            JsonPhoneStore(file) if request.param == "json" else SqlitePhoneStore(file)
        )
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def fill(store: PhoneStore) -> None:
    store.put_held(HeldCommand("m1", 1, "+1555", "héllo ✓", None))
    store.put_held(HeldCommand("m2", 3, "+1666", "b", 1, "transmitted"))
    store.put_report({"type": "sent", "id": "r1", "message_id": "m2", "attempt": 3})
    store.put_inbound({"type": "inbound", "id": "i1", "local_id": "l1", "from": "+1", "body": "x"})
    store.set_meta("termux_inbox_mark", "17")


def test_store_survives_reopen(tmp_path: Path, open_store: Opener) -> None:
    path = tmp_path / "state" / "phone"
    store = open_store(path)
    fill(store)
    reopened = open_store(path)
    assert reopened.held() == store.held()
    assert reopened.get_held("m2") == HeldCommand("m2", 3, "+1666", "b", 1, "transmitted")
    assert reopened.reports() == store.reports()
    assert reopened.inbound() == store.inbound()
    assert reopened.get_meta("termux_inbox_mark") == "17"

    reopened.drop_held("m1")
    reopened.drop_report("r1")
    reopened.drop_inbound("i1")
    reopened.set_meta("termux_inbox_mark", None)
    again = open_store(path)
    assert [c.message_id for c in again.held()] == ["m2"]
    assert again.reports() == [] and again.inbound() == []
    assert again.get_meta("termux_inbox_mark") is None


def test_store_keeps_order_and_upserts_in_place(tmp_path: Path, open_store: Opener) -> None:
    store = open_store(tmp_path / "phone")
    fill(store)
    store.put_held(HeldCommand("m0", 1, "+1", "c", None))
    store.put_held(HeldCommand("m1", 2, "+1555", "héllo ✓", None, "owned"))  # update, same place
    assert [(c.message_id, c.attempt) for c in store.held()] == [("m1", 2), ("m2", 3), ("m0", 1)]
    store.put_report({"type": "failed", "id": "r0", "message_id": "m0", "attempt": 1})
    store.put_report({"type": "sent", "id": "r1", "message_id": "m2", "attempt": 3, "parts": 2})
    assert [(f["id"], f.get("parts")) for f in store.reports()] == [("r1", 2), ("r0", None)]
    assert store.drop_report("nope") is None and store.drop_inbound("nope") is None
    assert store.drop_report("r0") == {
        "type": "failed",
        "id": "r0",
        "message_id": "m0",
        "attempt": 1,
    }
    store.drop_held("never-held")  # no error


def test_json_store_is_private_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "phone.json"
    fill(JsonPhoneStore(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["phone.json"]


def test_batch_writes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JsonPhoneStore(tmp_path / "phone.json")
    writes: list[int] = []
    original = store._persist

    def counting_persist() -> None:
        writes.append(1)
        original()

    monkeypatch.setattr(store, "_persist", counting_persist)
    with store.batch():
        fill(store)
        with store.batch():
            store.drop_held("m1")
        assert writes == []
    assert writes == [1]
    assert [c.message_id for c in JsonPhoneStore(tmp_path / "phone.json").held()] == ["m2"]


def test_store_refuses_a_corrupt_file(tmp_path: Path, open_store: Opener) -> None:
    path = tmp_path / "phone"
    for suffix in (".json", ".sqlite"):
        path.with_suffix(suffix).write_text("{not json, not sqlite either" * 100)
    with pytest.raises(ValueError, match="phone store"):
        open_store(path)


def test_stores_are_private(tmp_path: Path, open_store: Opener) -> None:
    fill(open_store(tmp_path / "phone"))
    for name in os.listdir(tmp_path):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_hands_out_copies(tmp_path: Path, kind: str) -> None:
    store = MemoryPhoneStore() if kind == "memory" else SqlitePhoneStore(tmp_path / "s.db")
    fill(store)
    store.reports()[0]["id"] = "changed"
    store.inbound()[0]["body"] = "changed"
    assert store.reports()[0]["id"] == "r1"
    assert store.inbound()[0]["body"] == "x"
    store.close()


# --- backoff -------------------------------------------------------------------------


class RecordingRng(random.Random):
    def __init__(self) -> None:
        super().__init__(0)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return super().uniform(a, b)


def test_backoff_is_full_jitter_over_a_capped_exponential() -> None:
    rng = RecordingRng()
    backoff = Backoff(0.5, 30.0, rng)
    for _ in range(10):
        backoff.next_delay()
    assert rng.calls == [(0, c) for c in [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]]


def test_backoff_delays_stay_within_bounds_and_use_the_whole_range() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(42))
    delays = []
    for n in range(2000):
        ceiling = min(30.0, 0.5 * 2**n) if n < 100 else 30.0
        delay = backoff.next_delay()
        assert 0 <= delay <= ceiling
        delays.append(delay)
    tail = delays[10:]
    # Full jitter, not "half + jitter": short and long sleeps both happen.
    assert min(tail) < 3 and max(tail) > 27


def test_backoff_reset_and_huge_failure_counts() -> None:
    rng = RecordingRng()
    backoff = Backoff(1.0, 8.0, rng)
    backoff.failures = 10_000  # no overflow
    assert math.isclose(backoff.ceiling(), 8.0)
    backoff.reset()
    backoff.next_delay()
    assert rng.calls[-1] == (0, 1.0)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("http://hub:9000", "ws://hub:9000/ws/device"),
        ("https://hub.example/", "wss://hub.example/ws/device"),
        ("https://hub.example/smsgw", "wss://hub.example/smsgw/ws/device"),
        ("ws://hub:9000/ws/device", "ws://hub:9000/ws/device"),
    ],
)
def test_ws_url_for(server: str, expected: str) -> None:
    assert ws_url_for(server) == expected


def test_ws_url_for_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        ws_url_for("ftp://hub")
