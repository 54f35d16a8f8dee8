"""Two hub nodes in this process sharing one SQLite file and a real Redis: a dispatch on one
node reaches a phone on the other, every node lists every phone, a newer connection on
another node fences the old one, admin actions reach the node holding the socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from smsgw.protocol import CloseCode
from tests.fakes.smsgate_app import FakeApp
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.redisenv import RedisEnv, redis_env  # noqa: F401 (fixture)


@pytest.fixture
async def nodes(tmp_path: Path, redis_env: RedisEnv) -> AsyncIterator[list[HubServer]]:  # noqa: F811
    db = tmp_path / "hub.db"
    started = [
        await HubServer(db, presence_interval=0.2, **redis_env.settings(f"n{i}")).start()
        for i in range(2)
    ]
    yield started
    for node in started:
        await node.stop()


async def test_dispatch_on_one_node_reaches_a_phone_on_the_other(nodes: list[HubServer]) -> None:
    a, b = nodes
    farm = Farm(lambda: b.url)
    try:
        phone = await farm.add(deliver=False)
        await wait_for(lambda: a.hub.registry.get(phone.device_id) is not None, 5, "presence")
        async with a.client() as c:
            r = await c.post("/sms/dispatch", json={"to": "+12025550100", "message": "hi"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "SENT" and body["device_id"] == phone.device_id
            assert phone.transmitted_ids == [body["message_id"]]
            devices = (await c.get("/devices/")).json()["items"]
            assert [(d["id"], d["online"]) for d in devices] == [(phone.device_id, True)]
            assert devices[0]["battery"] == 80

            async def counted() -> bool:  # B publishes the count with its next sweep
                items = (await c.get("/devices/")).json()["items"]
                return bool(items[0]["sent_today"] == 1)

            await wait_for(counted, 5, "the send counted on A's view of the phone")
    finally:
        await farm.close()


async def test_failover_crosses_nodes(nodes: list[HubServer]) -> None:
    a, b = nodes
    farm_a, farm_b = Farm(lambda: a.url), Farm(lambda: b.url)
    try:
        # The local phone is the better one (signal 4) but never answers.
        mute = await farm_a.add(never_accept=True, signal=4)
        good = await farm_b.add(deliver=False, signal=1)
        await wait_for(lambda: a.hub.registry.get(good.device_id) is not None, 5, "presence")
        async with a.client() as c:
            r = await c.post("/sms/dispatch", json={"to": "+12025550101", "message": "x"})
            body = r.json()
            assert body["status"] == "SENT" and body["device_id"] == good.device_id
            assert body["attempts"] == 2
            assert mute.transmitted_ids == []
    finally:
        await farm_a.close()
        await farm_b.close()


async def test_outbox_of_the_owning_node_sends_what_another_node_stored(
    nodes: list[HubServer],
) -> None:
    a, b = nodes
    farm = Farm(lambda: b.url)
    try:
        async with a.client() as c:
            ids = [
                (
                    await c.post(
                        "/sms/dispatch",
                        json={"to": f"+120255501{i:02d}", "message": "q", "wait": False},
                    )
                ).json()["message_id"]
                for i in range(12)
            ]
        phone = await farm.add(deliver=False)
        await wait_for(lambda: sorted(phone.transmitted_ids) == sorted(ids), 10, "drain")
    finally:
        await farm.close()


async def test_a_newer_session_on_another_node_fences_the_old_one(
    nodes: list[HubServer],
) -> None:
    a, b = nodes
    farm_a, farm_b = Farm(lambda: a.url), Farm(lambda: b.url)
    try:
        old = await farm_b.add()
        await wait_for(lambda: a.hub.registry.get(old.device_id) is not None, 5, "presence")
        # The same device (same token) connects to node a: b must let go.
        new_client = farm_a._client(old.token, old.backend, old.store)
        task = asyncio.create_task(new_client.run())
        try:
            await wait_for(lambda: old.client.stopped_reason == "replaced", 5, "fence")
            assert old.client.close_code == CloseCode.REPLACED
            await wait_for(lambda: a.hub.registry.is_local(a.hub.registry.get(old.device_id)))
            await wait_for(
                lambda: (
                    (live := b.hub.registry.get(old.device_id)) is not None
                    and not b.hub.registry.is_local(live)
                ),
                5,
                "b sees it on a",
            )
            async with b.client() as c:
                r = await c.post("/sms/dispatch", json={"to": "+12025550102", "message": "y"})
                assert r.json()["status"] == "SENT"
                assert r.json()["device_id"] == old.device_id
        finally:
            await new_client.stop()
            await task
    finally:
        await farm_a.close()
        await farm_b.close()


async def test_admin_actions_reach_the_node_holding_the_socket(nodes: list[HubServer]) -> None:
    a, b = nodes
    farm = Farm(lambda: b.url)
    try:
        phone = await farm.add()
        await wait_for(lambda: a.hub.registry.get(phone.device_id) is not None, 5, "presence")
        async with a.client() as c:
            r = await c.patch(f"/devices/{phone.device_id}", json={"enabled": False})
            assert r.status_code == 200
            await wait_for(
                lambda: not b.hub.registry.get(phone.device_id).enabled, 5, "disabled on b"
            )
            r = await c.post("/sms/dispatch", json={"to": "+12025550103", "message": "z"})
            assert r.status_code == 202  # nobody may send it now
            assert (await c.delete(f"/devices/{phone.device_id}")).status_code == 204
        await wait_for(lambda: phone.client.stopped_reason == "revoked", 5, "revoked")
        await wait_for(lambda: a.hub.registry.get(phone.device_id) is None, 5, "gone on a")
    finally:
        await farm.close()


async def test_an_opt_out_on_one_node_stops_sends_from_every_node(
    nodes: list[HubServer],
) -> None:
    a, b = nodes
    to = "+12025550177"
    farm = Farm(lambda: b.url)
    try:
        phone = await farm.add(deliver=False)
        await wait_for(lambda: a.hub.registry.get(phone.device_id) is not None, 5, "presence")
        await phone.backend.receive_sms(to, "STOP")  # reaches node B, which holds the phone
        await wait_for(lambda: to in a.hub.opted_out, 5, "node A to hear of the STOP")
        async with a.client() as c:
            r = await c.post("/sms/dispatch", json={"to": to, "message": "x"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "opted_out"
        async with b.client() as c:  # the admin API on B opts the number back in...
            assert (await c.delete(f"/opt-outs/{to}")).status_code == 204
        await wait_for(lambda: to not in a.hub.opted_out, 5, "node A to hear of the opt-in")
        async with a.client() as c:  # ...and A sends again
            r = await c.post("/sms/dispatch", json={"to": to, "message": "x"})
            assert r.status_code == 200 and r.json()["status"] == "SENT"
    finally:
        await farm.close()


async def socket_status(node: HubServer, token: str) -> int:
    """The HTTP status of a socket upgrade with ``token`` (101 when it opens)."""
    try:
        async with connect(
            node.url.replace("http", "ws") + "/ws/device",
            additional_headers={"Authorization": f"Bearer {token}"},
        ):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_rotated_token_or_revoked_key_is_refused_by_every_node_at_once(
    nodes: list[HubServer],
) -> None:
    a, b = nodes
    farm = Farm(lambda: a.url)
    try:
        phone = await farm.add(deliver=False, hardware_id="hw-rotate")  # token cached on A
        await farm.close()
        async with b.client() as c:  # a reinstall re-registers through B: a new token
            r = await c.post("/devices/register", json={"name": "p", "hardware_id": "hw-rotate"})
            assert r.status_code == 201 and r.json()["device_id"] == phone.device_id
            new_token = r.json()["device_token"]
            key = (await c.post("/keys", json={"name": "k", "scopes": ["read"]})).json()
        # A forgot the old token when B rotated it (no 5-minute cache window).
        await wait_for(_refused(a, phone.token), 5, "node A to refuse the old token")
        assert await socket_status(a, new_token) == 101
        async with a.client(key["key"]) as on_a:  # the key is now cached on A...
            assert (await on_a.get("/sms/")).status_code == 200
            async with b.client() as c:  # ...and revoked on B
                assert (await c.delete(f"/keys/{key['id']}")).status_code == 204

            async def key_refused() -> bool:
                return (await on_a.get("/sms/")).status_code == 401

            await wait_for(key_refused, 2, "node A to refuse the revoked key")
    finally:
        await farm.close()


def _refused(node: HubServer, token: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await socket_status(node, token) == 401

    return check


async def test_an_app_phone_answering_on_the_other_node_is_heard_where_its_stream_is(
    nodes: list[HubServer],
) -> None:
    """The app's stream on B, its pulls and reports on A (plain HTTP: any node may take
    them). A passes each answer to B, which holds the phone's slots and the offers B made:
    B's sends end SENT at once and the phone's slots are free again."""
    a, b = nodes
    async with b.client() as c:
        token = (await c.post("/devices/app-tokens", json={})).json()["token"]
    app = FakeApp(b.url + "/api/mobile/v1", token, deliver=False)
    try:
        await app.start()  # its stream on B
        app.base = a.url + "/api/mobile/v1"  # everything else through A
        await wait_for(lambda: a.hub.registry.get(app.device_id) is not None, 5, "presence")
        live_b = b.hub.registry.get(app.device_id)
        assert live_b is not None and b.hub.registry.is_local(live_b)
        heard: list[tuple[str, str]] = []  # what reached B's dispatcher
        accepted, reported = b.hub.dispatcher.accepted, b.hub.dispatcher.reported

        def on_accepted(message_id: str, *args: Any, **kw: Any) -> None:
            heard.append(("accepted", message_id))
            accepted(message_id, *args, **kw)

        def on_reported(
            message_id: str, device_id: str, status: Any, *args: Any, **kw: Any
        ) -> None:
            heard.append((str(status), message_id))
            reported(message_id, device_id, status, *args, **kw)

        b.hub.dispatcher.accepted = on_accepted
        b.hub.dispatcher.reported = on_reported
        async with b.client() as c:
            for i in range(3):
                r = await c.post(
                    "/sms/send",
                    json={"to": f"+120255501{i:02d}", "message": "x", "device_id": app.device_id},
                )
                assert r.status_code == 200 and r.json()["status"] == "SENT", r.text
                mid = r.json()["message_id"]
                # The answers reached B through the relay, not from the database at the
                # offer's timeout.
                assert ("accepted", mid) in heard and ("SENT", mid) in heard
            await wait_for(lambda: not live_b.holding, 5, "B freed the phone's slot")
        async with a.client() as c:
            r = await c.post(
                "/sms/send", json={"to": "+12025550199", "message": "y", "device_id": app.device_id}
            )
            assert r.status_code == 200 and r.json()["status"] == "SENT", r.text
        await wait_for(lambda: not live_b.holding, 5, "no slot left held on B")
        assert len(app.local) == 4
    finally:
        await app.close()


async def test_a_data_message_on_one_node_goes_to_the_app_phone_on_the_other(
    nodes: list[HubServer],
) -> None:
    """The phone's kind travels with its presence: A routes a data SMS past its own agent
    to the app phone streaming to B (and never to the agent)."""
    a, b = nodes
    farm = Farm(lambda: a.url)
    async with b.client() as c:
        token = (await c.post("/devices/app-tokens", json={})).json()["token"]
    app = FakeApp(b.url + "/api/mobile/v1", token)
    try:
        agent = await farm.add()
        await app.start()
        await wait_for(lambda: a.hub.registry.get(app.device_id) is not None, 5, "presence")
        remote = a.hub.registry.get(app.device_id)
        assert remote is not None and remote.kind == "app" and not a.hub.registry.is_local(remote)
        body = {"dataMessage": {"data": "AQID", "port": 9200}, "phoneNumbers": ["+12025550142"]}
        async with httpx.AsyncClient(base_url=a.url + "/api/3rdparty/v1", timeout=30) as c:
            r = await c.post("/messages", json=body, headers={"X-API-Key": ADMIN_KEY})
            assert r.status_code == 202, r.text

            async def delivered() -> bool:
                got = await c.get(f"/messages/{r.json()['id']}", headers={"X-API-Key": ADMIN_KEY})
                return bool(got.json()["state"] == "Delivered")

            await wait_for(delivered, 10, "delivered by the app phone")
        assert [m.data_port for m in app.local.values()] == [9200]
        assert agent.transmitted_ids == []
    finally:
        await app.close()
        await farm.close()
