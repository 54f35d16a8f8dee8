"""A draining hub node (close 4005) sends the phone elsewhere after the delay it chose."""

from __future__ import annotations

import asyncio
import random
import time

from fakehub import TIMEOUT, FakeHub, wait_task

from android_client.client import PhoneClient, drain_delay
from android_client.outbox import MemoryPhoneStore
from android_client.simulated import SimulatedBackend


def test_the_delay_comes_from_the_close_reason() -> None:
    assert drain_delay("draining; reconnect_in=2.50", 30) == 2.5
    assert drain_delay("draining; reconnect_in=99", 30) == 30  # capped by the phone
    rng = random.Random(1)
    for reason in ("draining", "draining; reconnect_in=nan", "reconnect_in=-1", ""):
        assert 0 <= drain_delay(reason, 3, rng) <= 3  # none given: a random one


async def test_a_4005_close_reconnects_after_the_suggested_delay(hub: FakeHub) -> None:
    client = PhoneClient(
        hub.url, "dev_ok", SimulatedBackend(), MemoryPhoneStore(), backoff_base=0.01, backoff_max=5
    )
    task = asyncio.create_task(client.run())
    try:
        s1 = await hub.next_session()
        await s1.welcome(await s1.recv_type("hello"))
        await asyncio.wait_for(client.connected.wait(), TIMEOUT)
        closed_at = time.monotonic()
        await s1.close(4005, "draining; reconnect_in=0.40")
        s2 = await hub.next_session()
        assert time.monotonic() - closed_at >= 0.35
        await s2.welcome(await s2.recv_type("hello"))
        await asyncio.wait_for(client.connected.wait(), TIMEOUT)
        assert client.close_code == 4005 and client.stopped_reason is None
    finally:
        await client.stop()
        await wait_task(task)
        await client.backend.aclose()
