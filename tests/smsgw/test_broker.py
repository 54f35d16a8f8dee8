"""The brokers against their contract: fencing by epoch, TTL expiry, per-phone channels
("nobody there" is 0 receivers), ordered per-node answers. The same tests run on the
in-process ``LocalBroker`` and on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from smsgw.broker import Broker, Envelope, LocalBroker, PhoneState
from smsgw.broker.local import LocalBus
from smsgw.broker.redis import RedisBroker
from tests.harness import wait_for
from tests.redisenv import redis_env_for_test

Factory = Callable[[str], Broker]


@pytest.fixture(params=["local", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    made: list[Broker] = []
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "local":
            bus = LocalBus()

            def factory(node: str) -> Broker:
                made.append(LocalBroker(bus, node))
                return made[-1]
        else:
            env = await stack.enter_async_context(redis_env_for_test())

            def factory(node: str) -> Broker:
                made.append(RedisBroker(env.url, prefix=env.prefix, node_id=node))
                return made[-1]

        yield factory
        for broker in made:
            await broker.close()


async def started(factory: Factory, node: str) -> tuple[Broker, list[Envelope]]:
    broker = factory(node)
    inbox: list[Envelope] = []
    await broker.start(inbox.append)
    return broker, inbox


def state(dev: str = "dev-1", **fields: object) -> PhoneState:
    return PhoneState(device_id=dev, node="", battery=55, daily_quota=90, **fields)  # type: ignore[arg-type]


async def test_a_newer_claim_fences_the_older_node(make_broker: Factory) -> None:
    a, inbox_a = await started(make_broker, "node-a")
    b, _ = await started(make_broker, "node-b")
    first = await a.claim(state(), ttl=5)
    second = await b.claim(state(), ttl=5)
    assert second > first
    # The old owner hears the fence on the phone's channel.
    await wait_for(
        lambda: any(e["k"] == "fence" and e["epoch"] == second for e in inbox_a), 5, "fence"
    )
    old, new = state(), state()
    old.epoch, new.epoch = first, second
    assert await a.refresh([old], ttl=5) == [False]  # fenced: it must close its socket
    assert await b.refresh([new], ttl=5) == [True]
    assert not await a.release("dev-1", first)  # a stale release changes nothing
    seen = await a.phone("dev-1")
    assert seen is not None and seen.node == "node-b" and seen.epoch == second
    assert seen.battery == 55
    assert [s.node for s in await b.online()] == ["node-b"]
    assert await b.release("dev-1", second)
    assert await a.phone("dev-1") is None and await a.online() == []


async def test_ownership_expires_without_refresh(make_broker: Factory) -> None:
    a, _ = await started(make_broker, "node-a")
    epoch = await a.claim(state(), ttl=0.2)
    assert (await a.phone("dev-1")) is not None
    await asyncio.sleep(0.35)
    assert await a.phone("dev-1") is None
    assert await a.online() == []
    s = state()
    s.epoch = epoch
    assert await a.refresh([s], ttl=5) == [False]  # too late: it lost the phone


async def test_commands_reach_only_the_holder_and_zero_means_nobody(make_broker: Factory) -> None:
    a, inbox_a = await started(make_broker, "node-a")
    b, _ = await started(make_broker, "node-b")
    assert await b.to_phone("dev-1", {"k": "send", "mid": "m0"}) == 0
    epoch = await a.claim(state(), ttl=5)
    assert await b.to_phone("dev-1", {"k": "send", "mid": "m1"}) == 1
    await wait_for(lambda: any(e.get("mid") == "m1" for e in inbox_a), 5, "command")
    await a.release("dev-1", epoch)
    assert await b.to_phone("dev-1", {"k": "send", "mid": "m2"}) == 0


async def test_answers_to_a_node_arrive_in_order(make_broker: Factory) -> None:
    _, inbox_a = await started(make_broker, "node-a")
    b, _ = await started(make_broker, "node-b")
    for i in range(200):
        b.to_node("node-a", {"k": "n", "i": i})
    await wait_for(lambda: len([e for e in inbox_a if e["k"] == "n"]) == 200, 5, "answers")
    assert [e["i"] for e in inbox_a if e["k"] == "n"] == list(range(200))


async def test_presence_announces_up_and_down(make_broker: Factory) -> None:
    a, _ = await started(make_broker, "node-a")
    _, inbox_b = await started(make_broker, "node-b")
    epoch = await a.claim(state(), ttl=5)
    await a.release("dev-1", epoch)
    await wait_for(
        lambda: [e["k"] for e in inbox_b if e.get("dev") == "dev-1"] == ["up", "down"],
        5,
        "up then down",
    )


async def test_a_broadcast_reaches_every_node(make_broker: Factory) -> None:
    a, seen_a = await started(make_broker, "a")
    _, seen_b = await started(make_broker, "b")
    await a.broadcast({"k": "optout", "number": "+12025550100", "opted_out": True})

    def heard(seen: list[Envelope]) -> bool:
        return any(e.get("k") == "optout" for e in seen)

    await wait_for(lambda: heard(seen_a) and heard(seen_b), 5, "the broadcast on both nodes")
