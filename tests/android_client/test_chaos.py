"""Chaos phones (android_client/chaos.py) against a real hub: drops, slow accepts,
duplicate and out-of-order reports and silences, all at once and often. Every message
still ends SENT or DELIVERED, none leaves two phones or one phone twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from android_client.chaos import ChaosClient, ChaosConfig
from android_client.enroll import enroll
from android_client.outbox import MemoryPhoneStore
from android_client.simulated import SimulatedBackend, SimulatedConfig
from tests.harness import ADMIN_KEY, HubServer, wait_for


@pytest.fixture
async def real_hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    # tests/android_client's ``hub`` is a fake; chaos is tested against the real one.
    server = HubServer(tmp_path / "hub.db", heartbeat_interval=1.0, accept_timeout=0.8)
    yield await server.start()
    await server.stop()


async def test_chaos_phones_lose_nothing_and_send_nothing_twice(real_hub: HubServer) -> None:
    hub = real_hub
    api = hub.client()
    phones: list[tuple[ChaosClient, SimulatedBackend]] = []
    for i in range(4):
        enrolled = await enroll(hub.url, name=f"c{i}", hardware_id=f"chaos-{i}", api_key=ADMIN_KEY)
        backend = SimulatedBackend(SimulatedConfig(delivery_delay=0.05, seed=i))
        chaos = ChaosConfig(
            drop_every=1.5, silence_every=3.0, silence_seconds=3.0, slow_accept_rate=0.3,
            duplicate_rate=0.3, reorder_rate=0.3, seed=i,
        )  # fmt: skip
        client = ChaosClient(
            hub.url, enrolled.device_token, backend, MemoryPhoneStore(),
            backoff_base=0.05, backoff_max=0.3, chaos=chaos,
        )  # fmt: skip
        phones.append((client, backend))
    tasks = [asyncio.create_task(c.run()) for c, _ in phones]
    try:
        ids = []
        for i in range(60):
            body = {"to": f"+120255501{i:02d}", "message": f"m{i}", "wait": False}
            r = await api.post("/sms/dispatch", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["message_id"])
            await asyncio.sleep(0.1)
        for client, _ in phones:  # calm down so the farm drains
            client.chaos.drop_every = client.chaos.silence_every = 0
            client.chaos.slow_accept_rate = 0

        async def settled() -> bool:
            page = (await api.get("/sms/", params={"limit": 100})).json()["items"]
            return all(m["status"] in ("SENT", "DELIVERED") for m in page)

        await wait_for(settled, timeout=60, what="every message sent")
        sends = Counter(m for _, b in phones for m, _, _ in b.transmitted)
        assert sorted(sends) == sorted(ids)
        assert max(sends.values()) == 1  # no message left two phones, or one phone twice
        did = Counter[str]()
        for client, _ in phones:
            did.update({k: v for k, v in vars(client.counts).items() if v})
        # The chaos happened: every kind of misbehaviour at least once.
        assert set(did) == {"drops", "slow_accepts", "duplicates", "reorders", "silences"}, did
    finally:
        await api.aclose()
        for client, backend in phones:
            await client.stop()
            await backend.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
