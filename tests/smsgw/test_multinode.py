"""Three hub processes sharing one database and Redis behind a load balancer: dispatches
on every node, every phone listed online everywhere; then ``kill -9`` of one node under
load (nothing lost, nothing sent twice, its phones back on the others), and a SIGTERM
drain (offers finish, phones move, the node exits).

The balancer is a real nginx running the shipped ``deploy/nginx.conf`` (``tests/nginx.py``;
``.ci/run`` installs Debian's nginx-light); without nginx, ``tests/lb.py`` stands in with a
warning, and under ``CI=true`` a missing nginx fails. The database is PostgreSQL (a fresh
schema) whenever there is one (``tests/pgtest.py``: always under ``CI=true``), else one
SQLite file shared by the three processes (WAL works across processes on one host).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from smsgw.protocol import CloseCode
from tests.fakes.smsgate_app import FakeApp
from tests.harness import ADMIN_KEY, Farm, HubProcess, Phone, wait_for
from tests.nginx import Balancer, start_balancer
from tests.pgtest import (
    drop_schema,
    fresh_schema_name,
    harness_store,
    postgres_url,
    require_postgres,
    with_schema,
)
from tests.redisenv import RedisEnv, redis_env  # noqa: F401 (fixture)

NODES = 3
PHONES = 6
CLUSTER_SETTINGS = {
    "presence_interval": 0.3,
    "ownership_ttl": 3.0,
    "drain_timeout": 3.0,
    "drain_spread": 0.5,
    # Longer than a dispatch's deadline: an app phone's answer that is not passed on
    # between nodes (only read from the database at the timeout) fails the test.
    "app_accept_timeout": 30.0,
    "log_level": "info",  # the node logs are shown when a test fails
}


@dataclass
class Cluster:
    nodes: list[HubProcess]
    lb: Balancer
    farm: Farm
    phones: list[Phone]
    redis: RedisEnv
    database: str  # "postgresql" or "sqlite"

    def node_id(self, node: HubProcess) -> str:
        return f"node{self.nodes.index(node)}"

    async def phones_held(self) -> Counter[str]:
        """Node id -> phones whose socket it holds (Redis ``owner:{device}`` keys)."""
        client = aioredis.from_url(self.redis.url, decode_responses=True)
        try:
            keys = [f"{self.redis.prefix}owner:{p.device_id}" for p in self.phones]
            owners = await client.mget(keys)
        finally:
            await client.aclose()
        return Counter(str(o).rpartition("|")[0] for o in owners if o)


@pytest.fixture
async def shared_database(tmp_path: Path) -> AsyncIterator[str]:
    """PostgreSQL (a fresh schema, dropped afterwards) when there is a server, else SQLite."""
    if postgres_url() is None and harness_store() != "postgres":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    base = await require_postgres()  # skips, or fails under CI=true, if it does not answer
    schema = fresh_schema_name()
    try:
        yield with_schema(base, schema)
    finally:
        await drop_schema(base, schema)


@pytest.fixture
async def cluster(
    tmp_path: Path,
    redis_env: RedisEnv,  # noqa: F811
    shared_database: str,
) -> AsyncIterator[Cluster]:
    nodes: list[HubProcess] = []
    lb: Balancer | None = None
    farm: Farm | None = None
    try:
        # One after the other: the first applies the migrations.
        for i in range(NODES):
            node = HubProcess(
                tmp_path / "hub.db",
                log_path=tmp_path / f"node{i}.log",
                database_url=shared_database,
                **CLUSTER_SETTINGS,
                **redis_env.settings(f"node{i}"),
            )
            nodes.append(await node.start())
        lb = await start_balancer([n.port for n in nodes], tmp_path / "nginx")
        farm = Farm(lambda: lb.url)  # type: ignore[union-attr]
        phones = [await farm.add(deliver=False, send_delay=0.01) for _ in range(PHONES)]
        database = shared_database.partition(":")[0]
        yield Cluster(nodes, lb, farm, phones, redis_env, database)
    finally:
        if farm is not None:
            await farm.close()
        if lb is not None:
            await lb.stop()
        for node in nodes:
            await node.stop()


async def online_everywhere(nodes: list[HubProcess], count: int) -> bool:
    for node in nodes:
        async with node.client() as c:
            items = (await c.get("/devices/")).json()["items"]
        if sum(d["online"] for d in items) != count:
            return False
    return True


async def all_messages(node: HubProcess) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor: str | None = None
    async with node.client() as c:
        while True:
            params: dict[str, str | int] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/sms/", params=params)).json()
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def transmitted(phones: list[Phone]) -> Counter[str]:
    return Counter(m for p in phones for m in p.transmitted_ids)


async def test_every_node_dispatches_to_every_phone_and_lists_them(cluster: Cluster) -> None:
    nodes, phones = cluster.nodes, cluster.phones
    await wait_for(lambda: online_everywhere(nodes, PHONES), 10, "all phones online on all")
    # The balancer spread the phones' sockets over all three nodes.
    held = await cluster.phones_held()
    assert all(held[cluster.node_id(n)] >= 1 for n in nodes), held

    results: list[dict[str, object]] = []
    for round_ in range(4):
        for i, node in enumerate(nodes):
            async with node.client() as c:
                for j in range(PHONES):
                    to = f"+1202555{round_}{i}{j:02d}"
                    r = await c.post("/sms/dispatch", json={"to": to, "message": "hello"})
                    assert r.status_code == 200, r.text
                    results.append(r.json())
    # REST through the balancer too (deploy/nginx.conf's "location /").
    async with httpx.AsyncClient(
        base_url=cluster.lb.url, headers={"X-API-Key": ADMIN_KEY}, timeout=30
    ) as c:
        for j in range(PHONES):
            r = await c.post("/sms/dispatch", json={"to": f"+120255590{j:02d}", "message": "lb"})
            assert r.status_code == 200, r.text
            results.append(r.json())
    assert all(r["status"] == "SENT" for r in results)
    # Least recently used first: every node's dispatches went to every phone, most of
    # them held by another node.
    assert {p.device_id for p in phones} == {r["device_id"] for r in results}
    sent = transmitted(phones)
    assert set(sent) == {r["message_id"] for r in results} and max(sent.values()) == 1


async def test_a_node_killed_under_load_loses_nothing_and_its_phones_move(
    cluster: Cluster,
) -> None:
    nodes, phones = cluster.nodes, cluster.phones
    await wait_for(lambda: online_everywhere(nodes, PHONES), 10, "all phones online on all")
    victim, survivors = nodes[0], nodes[1:]
    held = await cluster.phones_held()
    assert held[cluster.node_id(victim)] >= 1, held
    accepted: list[str] = []
    clients = [n.client() for n in nodes]

    async def fire(i: int) -> None:
        try:
            r = await clients[i % NODES].post(
                "/sms/dispatch",
                json={"to": f"+1202556{i:04d}", "message": f"load {i}", "wait": i % 2 == 0},
            )
            if r.status_code in (200, 202):
                accepted.append(r.json()["message_id"])
        except httpx.HTTPError:
            pass  # the node died under this request: not acknowledged, not counted

    total = 300
    senders = []
    for i in range(total):
        senders.append(asyncio.create_task(fire(i)))
        if i == total // 3:
            await wait_for(lambda: len(accepted) >= 30, 20, "some load")
            victim.kill()
            cluster.lb.down(victim.port)
        await asyncio.sleep(0.002)  # bounded, steady load
    await asyncio.gather(*senders)
    for c in clients:
        await c.aclose()
    assert len(accepted) < total  # the kill landed mid-load

    # The victim's phones reconnected through the balancer to the survivors.
    await wait_for(lambda: online_everywhere(survivors, PHONES), 15, "phones back online")
    assert all(p.client.connected.is_set() for p in phones)

    async def settled() -> bool:
        items = await all_messages(survivors[0])
        return all(m["status"] in ("SENT", "FAILED") for m in items)

    await wait_for(settled, 40, "every stored message SENT or FAILED")
    items = await all_messages(survivors[0])
    stored = {str(m["id"]) for m in items}
    assert set(accepted) <= stored  # every acknowledged message survived
    sent = transmitted(phones)
    assert max(sent.values()) == 1  # none went out twice
    assert set(sent) == {str(m["id"]) for m in items if m["status"] == "SENT"}
    by_status = Counter(str(m["status"]) for m in items)
    assert by_status["SENT"] >= len(accepted) // 2, by_status


async def test_sigterm_drains_the_node_and_its_phones_move(cluster: Cluster) -> None:
    nodes, phones = cluster.nodes, cluster.phones
    await wait_for(lambda: online_everywhere(nodes, PHONES), 10, "all phones online on all")
    draining, others = nodes[0], nodes[1:]
    held = await cluster.phones_held()
    assert held[cluster.node_id(draining)] >= 1, held
    results: list[dict[str, object]] = []
    stop = asyncio.Event()

    async def load(node: HubProcess, tag: int) -> None:
        n = 0
        async with node.client() as c:
            while not stop.is_set() and n < 200:
                r = await c.post(
                    "/sms/dispatch", json={"to": f"+1202557{tag}{n:03d}", "message": "drain"}
                )
                assert r.status_code in (200, 202), r.text
                results.append(r.json())
                n += 1

    loaders = [asyncio.create_task(load(node, i)) for i, node in enumerate(others)]
    await wait_for(lambda: len(results) >= 10, 10, "some load")
    # tests/lb.py: a health check sees /ready turn 503 and takes the node out. nginx has
    # no active checks (down() does nothing): its upgrades answered 503 go to the next node.
    assert draining.proc is not None
    draining.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient() as c:

        async def not_ready() -> bool:
            try:
                return (await c.get(draining.url + "/ready")).status_code == 503
            except httpx.HTTPError:
                return True

        await wait_for(not_ready, 5, "/ready 503 while draining")
    cluster.lb.down(draining.port)
    try:
        # docs/deploy.md promises an exit within the drain + 20 s (uvicorn's 10 s, then
        # Hub.stop's 10 s bound); normally it takes 3-4 s.
        exit_code = await asyncio.to_thread(draining.proc.wait, 3.5 + 20 + 5)
    except subprocess.TimeoutExpired:
        draining.proc.send_signal(signal.SIGUSR1)  # its threads' stacks, into its log
        await asyncio.sleep(1)
        draining.proc.kill()
        assert draining.log_path is not None
        tail = draining.log_path.read_text(errors="replace")[-6000:]
        message = f"the draining node did not exit in 28.5 s; its log ends:\n{tail}"
        raise AssertionError(message) from None
    # A clean exit; uvicorn re-raises the signal it handled once it has shut down.
    assert exit_code in (0, -signal.SIGTERM)
    moved = [p for p in phones if p.client.close_code == CloseCode.DRAINING]
    assert moved, "no phone was asked to move"
    await wait_for(lambda: online_everywhere(others, PHONES), 10, "phones back online")
    assert all(p.client.stopped_reason is None for p in phones)  # none gave up
    stop.set()
    await asyncio.gather(*loaders)

    async def settled() -> bool:
        items = await all_messages(others[0])
        return all(m["status"] == "SENT" for m in items)

    await wait_for(settled, 20, "every message SENT")
    sent = transmitted(phones)
    assert max(sent.values()) == 1
    assert {str(m["id"]) for m in await all_messages(others[0])} == set(sent)
    # Dispatches the drain interrupted still came out SENT (200) or were handed back (202)
    # and the outbox finished them: none was lost.
    assert {str(r["message_id"]) for r in results} <= set(sent)


async def test_an_app_phone_is_reached_from_every_node(cluster: Cluster) -> None:
    """The stock app through the balancer: its stream held by one node, its pulls and
    reports taken by any node (least_conn). Each node's pinned sends reach SENT in time:
    the node that takes the pull or the report passes the answer to the node holding the
    stream, which passes it to the node that made the offer."""
    nodes = cluster.nodes
    await wait_for(lambda: online_everywhere(nodes, PHONES), 10, "all phones online on all")
    async with nodes[0].client() as c:
        token = (await c.post("/devices/app-tokens", json={"name": "cluster"})).json()["token"]
    app = FakeApp(cluster.lb.url + "/api/mobile/v1", token, deliver=False)
    try:
        await app.start()
        await wait_for(lambda: online_everywhere(nodes, PHONES + 1), 10, "the app online on all")
        results = []
        for round_ in range(3):
            for i, node in enumerate(nodes):
                async with node.client() as c:
                    r = await c.post(
                        "/sms/send",
                        json={
                            "to": f"+1202557{round_}{i}00",
                            "message": "app",
                            "device_id": app.device_id,
                        },
                    )
                    assert r.status_code == 200, (cluster.node_id(node), r.text)
                    results.append(r.json())
        assert all(r["status"] == "SENT" for r in results), results
        assert sorted(app.local) == sorted(r["message_id"] for r in results)
        # Routed dispatches may pick it too, and it takes no message twice.
        async with nodes[1].client() as c:
            for j in range(12):
                r = await c.post("/sms/dispatch", json={"to": f"+120255780{j:02d}", "message": "x"})
                assert r.status_code == 200 and r.json()["status"] == "SENT", r.text
        sent = transmitted(cluster.phones) + Counter(list(app.local))
        assert max(sent.values()) == 1
    finally:
        await app.close()
