"""PhoneStore durability and the reconnect backoff."""

from __future__ import annotations

import math
import os
import random
import stat
from pathlib import Path

import pytest

from android_client.client import Backoff, ws_url_for
from android_client.outbox import HeldCommand, JsonPhoneStore, MemoryPhoneStore

# --- store ---------------------------------------------------------------------------


def fill(store: MemoryPhoneStore) -> None:
    store.put_held(HeldCommand("m1", 1, "+1555", "héllo ✓", None))
    store.put_held(HeldCommand("m2", 3, "+1666", "b", 1, "transmitted"))
    store.put_report({"type": "sent", "id": "r1", "message_id": "m2", "attempt": 3})
    store.put_inbound({"type": "inbound", "id": "i1", "local_id": "l1", "from": "+1", "body": "x"})


def test_json_store_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "phone.json"
    store = JsonPhoneStore(path)
    fill(store)
    reopened = JsonPhoneStore(path)
    assert reopened.held() == store.held()
    assert reopened.get_held("m2") == HeldCommand("m2", 3, "+1666", "b", 1, "transmitted")
    assert reopened.reports() == store.reports()
    assert reopened.inbound() == store.inbound()

    reopened.drop_held("m1")
    reopened.drop_report("r1")
    reopened.drop_inbound("i1")
    again = JsonPhoneStore(path)
    assert [c.message_id for c in again.held()] == ["m2"]
    assert again.reports() == [] and again.inbound() == []


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


def test_json_store_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "phone.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read phone store"):
        JsonPhoneStore(path)


def test_memory_store_hands_out_copies() -> None:
    store = MemoryPhoneStore()
    fill(store)
    store.reports()[0]["id"] = "changed"
    assert store.reports()[0]["id"] == "r1"


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
