"""Pacing: the minimum interval between SMS and the daily cap, alone and in the client."""

from __future__ import annotations

import asyncio
import itertools
from datetime import date
from typing import Any

import pytest
from fakehub import TIMEOUT, FakeHub, wait_task

from android_client.backend import SendResult
from android_client.client import PhoneClient
from android_client.outbox import HeldCommand, MemoryPhoneStore
from android_client.pacing import DAILY_COUNT_KEY, Pacer
from android_client.protocol import PhoneProtocol, Refusal
from android_client.simulated import SimulatedBackend, SimulatedConfig


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.day = date(2024, 1, 1)
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    def pacer(self, store: MemoryPhoneStore, **kw: Any) -> Pacer:
        return Pacer(store, clock=self.clock, today=lambda: self.day, sleep=self.sleep, **kw)


async def test_minimum_interval_between_sends() -> None:
    t = FakeTime()
    pacer = t.pacer(MemoryPhoneStore(), min_interval=2.0, daily_cap=None)
    assert await pacer.turn("m1") is None
    assert t.sleeps == []  # the first one goes at once
    t.now += 0.5
    assert await pacer.turn("m2") is None
    assert t.sleeps == [1.5]
    t.now += 10
    await pacer.turn("m3")
    assert t.sleeps == [1.5]  # long enough since the last one
    await pacer.turn("m4", floor=5.0)  # the backend needs more than the agent's setting
    assert t.sleeps == [1.5, 5.0]


async def test_concurrent_turns_are_spaced() -> None:
    store = MemoryPhoneStore()
    pacer = Pacer(store, min_interval=0.05, daily_cap=None)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def one(mid: str) -> None:
        await pacer.turn(mid)
        starts.append(loop.time())

    await asyncio.gather(*(one(f"m{i}") for i in range(3)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.045 for gap in gaps), gaps


async def test_daily_cap_counts_durably_and_resets_next_day() -> None:
    t = FakeTime()
    store = MemoryPhoneStore()
    pacer = t.pacer(store, min_interval=0, daily_cap=2)
    assert await pacer.turn("m1") is None
    assert await pacer.turn("m2") is None
    refusal = await pacer.turn("m3")
    assert refusal == Refusal("daily_cap", "daily cap of 2 SMS reached on this device")
    assert pacer.sent_today() == 2
    assert t.pacer(store, daily_cap=2).sent_today() == 2  # e.g. after a restart
    t.day = date(2024, 1, 2)
    assert pacer.sent_today() == 0
    assert await pacer.turn("m3") is None


def test_offers_are_refused_counting_held_unsent_messages() -> None:
    t = FakeTime()
    store = MemoryPhoneStore()
    pacer = t.pacer(store, daily_cap=3)
    store.set_meta(DAILY_COUNT_KEY, '{"day": "2024-01-01", "count": 1}')
    store.put_held(HeldCommand("a", 1, "+1", "b", None, "accepted"))
    store.put_held(HeldCommand("t", 1, "+1", "b", None, "transmitted"))  # already counted
    assert pacer.refusal() is None  # 1 sent + 1 waiting < 3
    store.put_held(HeldCommand("o", 1, "+1", "b", None, "owned"))
    assert pacer.refusal() is not None  # 1 + 2 waiting = 3
    assert t.pacer(store, daily_cap=None).refusal() is None


async def test_a_message_being_sent_is_not_counted_twice() -> None:
    t = FakeTime()
    store = MemoryPhoneStore()
    pacer = t.pacer(store, daily_cap=2)
    store.put_held(HeldCommand("m1", 1, "+1", "b", None, "owned"))
    await pacer.turn("m1")  # counted now, still "owned" while the radio works
    assert pacer.refusal() is None  # 1 sent, nothing else waiting
    pacer.finished("m1")


def test_unreadable_counter_counts_as_zero() -> None:
    store = MemoryPhoneStore()
    store.set_meta(DAILY_COUNT_KEY, "garbage")
    assert Pacer(store).sent_today() == 0


def test_pacer_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Pacer(MemoryPhoneStore(), min_interval=-1)
    with pytest.raises(ValueError):
        Pacer(MemoryPhoneStore(), daily_cap=-1)


def test_protocol_answers_a_refused_offer_with_retryable_failed() -> None:
    store = MemoryPhoneStore()
    p = PhoneProtocol(store, id_prefix="t", refuse=lambda: Refusal("daily_cap", "cap of 1"))
    [action] = p.receive(
        {"type": "send", "id": "s", "message_id": "m1", "attempt": 4, "to": "+1", "body": "b"}
    )
    frame = action.frame  # type: ignore[union-attr]
    assert {k: frame[k] for k in ("type", "message_id", "attempt", "error_code", "retryable")} == {
        "type": "failed",
        "message_id": "m1",
        "attempt": 4,
        "error_code": "daily_cap",
        "retryable": True,
    }
    assert store.held() == [] and store.reports() == [frame]


class TimedBackend(SimulatedBackend):
    """Records when each transmission started."""

    def __init__(self) -> None:
        super().__init__(SimulatedConfig(deliver=False))
        self.starts: list[float] = []

    async def send_sms(
        self, message_id: str, to: str, body: str, sim_slot: int | None
    ) -> SendResult:
        self.starts.append(asyncio.get_running_loop().time())
        return await super().send_sms(message_id, to, body, sim_slot)


async def test_client_paces_sends_and_refuses_offers_over_the_cap(hub: FakeHub) -> None:
    store = MemoryPhoneStore()
    backend = TimedBackend()
    client = PhoneClient(
        hub.url,
        "dev_ok",
        backend,
        store,
        backoff_base=0.01,
        backoff_max=0.05,
        pacer=Pacer(store, min_interval=0.2, daily_cap=2),
    )
    task = asyncio.create_task(client.run())
    try:
        s = await hub.next_session()
        await s.welcome(await s.recv_type("hello"))
        await asyncio.wait_for(client.connected.wait(), TIMEOUT)
        for mid in ("m1", "m2"):
            await s.offer(mid)
            accepted = await s.recv_type("accepted")
            await s.send("ownership", ref=accepted["id"], message_id=mid, attempt=1, owner=True)
        # m1 sent and m2 waiting for its slot (or sent): a third offer is over the cap of 2.
        await s.offer("m3")
        reports: list[dict[str, Any]] = []
        while len(reports) < 3:
            frame = await s.recv()
            if frame["type"] in ("sent", "failed"):
                reports.append(frame)
        [refused] = [f for f in reports if f["type"] == "failed"]
        assert (refused["message_id"], refused["error_code"], refused["retryable"]) == (
            "m3",
            "daily_cap",
            True,
        )
        assert sorted(f["message_id"] for f in reports if f["type"] == "sent") == ["m1", "m2"]
        assert backend.starts[1] - backend.starts[0] >= 0.19
        assert store.get_held("m3") is None
    finally:
        await client.stop()
        await wait_task(task)
