"""Webhook races found in review, each pinned by a test: a worker whose lease ran out
cannot overwrite what the worker that took over recorded (store contract, every engine),
and one dead endpoint cannot starve the others (the worker, on the pass's engine)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx

from smsgw.clock import new_id, utcnow
from smsgw.config import Settings
from smsgw.store import DeliveryAttempt, DeliveryStatus, Inbound, Store
from smsgw.webhook_worker import WebhookWorker
from tests.smsgw.store.test_events_contract import add_hook
from tests.smsgw.store.test_store_contract import add_device, store

__all__ = ["store"]


async def inbound(store: Store, device: str) -> None:
    now = utcnow()
    await store.store_inbound(
        Inbound(
            id=new_id(),
            device_id=device,
            local_id=new_id(),
            sender="+12025550100",
            body="hello",
            sim_slot=None,
            received_at=now,
            created_at=now,
        )
    )


async def test_a_stale_worker_turns_a_delivered_delivery_back_to_pending(store: Store) -> None:
    """Worker X claims d; its lease runs out while the request is still queued behind the
    endpoint's concurrency limit or in flight (lease = 3*timeout+5, but a claim batch of
    64 for one endpoint with concurrency 4 waits 16 timeouts). Worker Y (another node)
    claims d and delivers it. X's attempt then fails, and finish_delivery, which checks
    neither the status nor who holds the lease, writes it back to 'pending': d is sent
    again later, it blocks every newer event of its subject meanwhile, and may even end
    'dead' (and count towards auto-disable) although it was delivered."""
    device = await add_device(store, "a")
    hook = await add_hook(store, "sms.received")
    await inbound(store, device)

    now = utcnow()
    x_lease = now + timedelta(milliseconds=50)
    x = await store.claim_deliveries(now, x_lease, 10)
    assert len(x) == 1
    await asyncio.sleep(0.1)  # X's lease ends while X still has d in hand
    now = utcnow()
    y_lease = now + timedelta(seconds=60)
    y = await store.claim_deliveries(now, y_lease, 10)
    assert [d.id for d in y] == [x[0].id]  # Y took it over (documented at-least-once)

    ok = DeliveryAttempt(1, utcnow(), 204, None, 3)
    done = await store.finish_delivery(
        y[0].id,
        ok,
        succeeded=True,
        retry_at=None,
        default_max_attempts=5,
        disable_after=3600,
        lease=y_lease,
    )
    assert done == (DeliveryStatus.SUCCEEDED, False)
    late = DeliveryAttempt(1, utcnow(), None, "timed out after 10 s", 10_000)
    stale = await store.finish_delivery(
        x[0].id,
        late,
        succeeded=False,
        retry_at=utcnow() + timedelta(seconds=30),
        default_max_attempts=5,
        disable_after=3600,
        lease=x_lease,
    )
    assert stale is None  # X's lease is not the current one: nothing recorded
    d = await store.get_delivery(x[0].id)
    assert d is not None
    assert d.attempts == 1 and [a.status_code for a in d.history] == [204]
    assert d.status is DeliveryStatus.SUCCEEDED, (
        f"a delivered delivery went back to {d.status.value} after a stale attempt "
        f"(attempts={d.attempts}); hook {hook.id}"
    )


async def test_one_dead_endpoint_starves_every_other_webhook(engine_store: Store) -> None:
    """The worker claims up to MAX_IN_FLIGHT (256) deliveries regardless of endpoint and
    then queues them behind the per-endpoint semaphore. A receiver that times out holds
    all 256 in-flight places (draining at concurrency/timeout per second), so a healthy
    endpoint's event waits for the dead one's backlog: minutes with the defaults (10 s
    timeout, concurrency 4 -> 0.4 deliveries/s)."""
    store = engine_store
    device = await add_device(store, "a")
    settings = Settings(admin_key="x" * 32, webhook_timeout=0.5, webhook_poll_interval=0.05)  # type: ignore[call-arg]
    await add_hook(store, "sms.received", url="http://dead.example/h")
    for _ in range(300):
        await inbound(store, device)
    # A second, healthy endpoint subscribes; the next event goes to both.
    await add_hook(store, "sms.received", url="http://ok.example/h")
    await inbound(store, device)

    got: list[float] = []
    start = time.monotonic()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead.example":
            await asyncio.sleep(60)
        got.append(time.monotonic() - start)
        return httpx.Response(204)

    worker = WebhookWorker(store, settings, "cb", transport=httpx.MockTransport(handler))
    await worker.start()
    try:
        for _ in range(60):
            await asyncio.sleep(0.05)
            if got:
                break
    finally:
        await worker.stop()
    assert got, (
        "the healthy endpoint got nothing in 3 s: the dead endpoint's 300 deliveries "
        "hold all of the worker's in-flight places"
    )
