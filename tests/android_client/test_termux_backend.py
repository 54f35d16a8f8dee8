"""TermuxBackend against fake termux-* executables (tests/android_client/faketermux.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from faketermux import FakeTermux

from android_client.backend import BackendError, DeviceStatus, InboundSms, SimInfo
from android_client.outbox import HeldCommand
from android_client.state import SqlitePhoneStore
from android_client.termux import INBOX_MARK_KEY, TermuxBackend, TermuxConfig

Make = Callable[..., TermuxBackend]


@pytest.fixture
def termux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTermux:
    return FakeTermux(tmp_path / "termux").install(monkeypatch)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Backends on a SQLite store in tmp_path; all closed at the end."""
    made: list[tuple[TermuxBackend, SqlitePhoneStore]] = []

    def factory(**config: object) -> TermuxBackend:
        store = SqlitePhoneStore(tmp_path / "state.db")
        backend = TermuxBackend(TermuxConfig(**config), store)  # type: ignore[arg-type]
        made.append((backend, store))
        return backend

    yield factory
    for backend, store in made:
        await backend.aclose()
        store.close()


class Inbox:
    """An inbound callback that records SMS and lets a test wait for them."""

    def __init__(self) -> None:
        self.sms: list[InboundSms] = []
        self.changed = asyncio.Event()

    async def __call__(self, sms: InboundSms) -> None:
        self.sms.append(sms)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.sms) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)

    @property
    def ids(self) -> list[str]:
        return [s.local_id for s in self.sms]


async def test_start_locks_reads_status_and_close_unlocks(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60)
    await backend.start()
    assert termux.calls()[0]["tool"] == "termux-wake-lock"
    assert await backend.status() == DeviceStatus(
        battery=85, charging=False, signal=3, network="LTE"
    )  # the registered cell's level, not the strongest neighbour
    assert backend.sims() == [SimInfo(slot=0, carrier="Acme")]
    assert termux.calls("termux-wake-unlock") == []
    await backend.aclose()
    assert len(termux.calls("termux-wake-unlock")) == 1
    await backend.aclose()  # idempotent: no second unlock
    assert len(termux.calls("termux-wake-unlock")) == 1


async def test_charging_and_signal_from_dbm(termux: FakeTermux, make: Make) -> None:
    termux.answer_json(
        "termux-battery-status",
        {"health": "GOOD", "percentage": 40, "plugged": "PLUGGED_USB", "status": "CHARGING"},
    )
    termux.answer_json(
        "termux-telephony-cellinfo", [{"type": "nr", "registered": True, "dbm": -100}]
    )
    termux.answer_json("termux-telephony-deviceinfo", {"network_type": "nr", "sim_state": "ready"})
    backend = make(poll_interval=60)
    await backend.start()
    assert await backend.status() == DeviceStatus(battery=40, charging=True, signal=2, network="5G")


async def test_send_puts_number_and_slot_in_args_and_text_on_stdin(
    termux: FakeTermux, make: Make
) -> None:
    backend = make(poll_interval=60, sim_slots=(0, 1))
    await backend.start()
    text = "-n looks like an option\nsecond line"
    result = await backend.send_sms("m1", "+15550001", text, 1)
    assert result.ok and result.parts == 1
    long = await backend.send_sms("m2", "+15550002", "x" * 200, None)
    assert long.ok and long.parts == 2  # termux-sms-send sends it as multipart itself
    sends = termux.calls("termux-sms-send")
    assert [c["args"] for c in sends] == [["-n", "+15550001", "-s", "1"], ["-n", "+15550002"]]
    assert [c["stdin"] for c in sends] == [text, "x" * 200]


async def test_send_failure_is_retryable_with_the_tools_error(
    termux: FakeTermux, make: Make
) -> None:
    backend = make(poll_interval=60)
    await backend.start()
    termux.answer(
        "termux-sms-send", stderr="java.lang.SecurityException: Sending SMS message", exit=1
    )
    result = await backend.send_sms("m1", "+15550001", "hi", None)
    assert (result.ok, result.retryable, result.error_code) == (False, True, "termux_send_failed")
    assert "SecurityException" in (result.error or "")
    # Error output with exit status 0 is a failure too.
    termux.answer("termux-sms-send", stderr="Sim slot 3 not found")
    result = await backend.send_sms("m2", "+15550001", "hi", 3)
    assert (result.ok, result.retryable, result.error) == (False, True, "Sim slot 3 not found")


async def test_send_refuses_a_number_that_would_become_two(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60)
    result = await backend.send_sms("m1", "+1555,+1666", "hi", None)
    assert (result.ok, result.retryable, result.error_code) == (False, False, "invalid_number")
    assert termux.calls("termux-sms-send") == []


async def test_missing_termux_api_is_a_clear_error_and_keeps_state(
    termux: FakeTermux, make: Make, tmp_path: Path
) -> None:
    with SqlitePhoneStore(tmp_path / "state.db") as store:
        store.put_held(HeldCommand("m1", 1, "+1555", "queued", None, "owned"))
        store.set_meta(INBOX_MARK_KEY, "41")
    termux.remove()
    backend = make()
    with pytest.raises(BackendError, match="pkg install termux-api") as info:
        await backend.start()
    assert "termux-sms-send" in str(info.value)
    with SqlitePhoneStore(tmp_path / "state.db") as store:
        assert [c.message_id for c in store.held()] == ["m1"]
        assert store.get_meta(INBOX_MARK_KEY) == "41"
    # Uninstalled while running: a retryable failure the hub fails over from.
    result = await backend.send_sms("m1", "+1555", "hi", None)
    assert (result.ok, result.retryable, result.error_code) == (False, True, "termux_missing")


async def test_unresponsive_termux_api_app_fails_start(termux: FakeTermux, make: Make) -> None:
    termux.answer("termux-battery-status", sleep=30)
    backend = make(tool_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"did not finish within 0\.3s.*Termux:API app"):
        await backend.start()
    assert time.monotonic() - t0 < 5


async def test_garbage_at_start_is_reported(termux: FakeTermux, make: Make) -> None:
    termux.answer("termux-sms-list", stdout="Please grant the following permissions: READ_SMS")
    backend = make()
    with pytest.raises(BackendError, match="SMS permission") as info:
        await backend.start()
    assert "READ_SMS" in str(info.value)


async def test_no_sim_fails_start(termux: FakeTermux, make: Make) -> None:
    termux.answer_json("termux-telephony-deviceinfo", {"sim_state": "absent"})
    with pytest.raises(BackendError, match="no SIM"):
        await make().start()


async def test_hanging_send_times_out_as_retryable(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60, tool_timeout=0.3)
    await backend.start()
    termux.answer("termux-sms-send", sleep=30)
    t0 = time.monotonic()
    result = await backend.send_sms("m1", "+1555", "hi", None)
    assert time.monotonic() - t0 < 5
    assert (result.ok, result.retryable, result.error_code) == (False, True, "termux_timeout")


async def test_inbound_is_forwarded_once_even_across_a_restart(
    termux: FakeTermux, make: Make
) -> None:
    termux.add_sms(1, "old history", received="2023-12-31 09:00:00")
    first = make(poll_interval=0.05)
    inbox = Inbox()
    first.set_inbound_callback(inbox)
    await first.start()  # the inbox's existing SMS are history: not forwarded
    termux.add_sms(2, "hello", number="+15550111", received="2024-01-01 12:00:00")
    termux.add_sms(3, "again", received="2024-01-01 12:00:05")
    await inbox.wait_for(2)  # picked up by the background poll
    assert inbox.ids == ["termux-2", "termux-3"]
    sms = inbox.sms[0]
    assert (sms.sender, sms.body) == ("+15550111", "hello")
    assert sms.received_at.tzinfo is not None
    assert sms.received_at.replace(tzinfo=None).isoformat() == "2024-01-01T12:00:00"
    assert await first.poll_inbox() == 0
    await first.aclose()

    termux.add_sms(4, "after restart", received="2024-01-01 12:01:00")
    second = make(poll_interval=60)
    second.set_inbound_callback(inbox)
    await second.start()  # what arrived while the agent was down goes out at once
    assert inbox.ids == ["termux-2", "termux-3", "termux-4"]
    assert await second.poll_inbox() == 0


async def test_many_new_sms_are_paged(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60, page_size=50)
    inbox = Inbox()
    backend.set_inbound_callback(inbox)
    await backend.start()
    for i in range(1, 121):
        termux.add_sms(i, f"n{i}", received=f"2024-01-01 12:{i // 60:02d}:{i % 60:02d}")
    assert await backend.poll_inbox() == 120
    assert inbox.ids == [f"termux-{i}" for i in range(1, 121)]
    offsets = [c["args"][-1] for c in termux.calls("termux-sms-list")[1:]]
    assert offsets == ["0", "50", "100"]


async def test_garbage_inbox_output_keeps_the_mark(
    termux: FakeTermux, make: Make, tmp_path: Path
) -> None:
    backend = make(poll_interval=60)
    inbox = Inbox()
    backend.set_inbound_callback(inbox)
    await backend.start()
    termux.add_sms(5, "wait for me")
    termux.answer("termux-sms-list", stdout='[{"_id": 5, "body": ')  # cut off mid-output
    with pytest.raises(Exception, match="not JSON"):
        await backend.poll_inbox()
    assert backend.store.get_meta(INBOX_MARK_KEY) == "0" and inbox.sms == []
    termux.reset("termux-sms-list")
    assert await backend.poll_inbox() == 1
    assert backend.store.get_meta(INBOX_MARK_KEY) == "5"


async def test_unusable_entries_are_skipped_past(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60)
    inbox = Inbox()
    backend.set_inbound_callback(inbox)
    await backend.start()
    termux.add_sms(1, "no number", number="")
    termux.add_sms(2, "fine", received="2024-01-01 12:00:01")
    termux.answer_json(
        "termux-sms-list",
        [{"body": "no id"}, *json.loads((termux.data / "inbox.json").read_text())],
    )
    assert await backend.poll_inbox() == 1
    assert inbox.ids == ["termux-2"]
    assert backend.store.get_meta(INBOX_MARK_KEY) == "2"


async def test_failing_status_tools_keep_the_last_values(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60)
    await backend.start()
    before = await backend.status()
    termux.answer("termux-telephony-cellinfo", stdout="garbage")
    termux.answer("termux-telephony-deviceinfo", stderr="no permission", exit=1)
    termux.answer_json("termux-battery-status", {"percentage": 12, "plugged": "UNPLUGGED"})
    after = await backend.refresh_status()
    assert after == DeviceStatus(
        battery=12, charging=False, signal=before.signal, network=before.network
    )
    termux.answer("termux-battery-status", stdout="{}{}")
    assert await backend.refresh_status() == after  # never raises once started


async def test_no_polling_without_a_listener(termux: FakeTermux, make: Make) -> None:
    backend = make(poll_interval=60)
    await backend.start()
    termux.add_sms(1, "nobody listens")
    assert await backend.poll_inbox() == 0
    assert backend.store.get_meta(INBOX_MARK_KEY) == "0"  # still there for later
