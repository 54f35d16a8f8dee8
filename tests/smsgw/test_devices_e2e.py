"""Enrollment, credentials, device management and inbound SMS, end to end."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from android_client.client import PhoneClient
from android_client.enroll import EnrollmentError, enroll
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for


async def make_key(api: httpx.AsyncClient, *scopes: str) -> str:
    r = await api.post("/keys", json={"name": "k", "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_enrollment_code_is_single_use_and_short_lived(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    code = (await api.post("/devices/enrollment-codes", json={})).json()["code"]
    async with hub.client(key=None) as anon:
        body = {"name": "p", "hardware_id": "hw-code", "enrollment_code": code}
        r = await anon.post("/devices/register", json=body)
        assert r.status_code == 201
        out = r.json()
        assert out["device_token"].startswith("dev_")
        assert out["ws_url"] == f"ws://127.0.0.1:{hub.port}/ws/device"
        again = await anon.post("/devices/register", json={**body, "hardware_id": "hw-2"})
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "invalid_enrollment_code"
        # Registration is never open.
        r = await anon.post("/devices/register", json={"name": "p", "hardware_id": "hw-3"})
        assert r.status_code == 401
    short = await api.post("/devices/enrollment-codes", json={"ttl_seconds": 0.05})
    await asyncio.sleep(0.1)
    with pytest.raises(EnrollmentError) as err:
        await enroll(hub.url, name="p", hardware_id="hw-4", enrollment_code=short.json()["code"])
    assert err.value.status == 401
    devices = (await api.get("/devices/")).json()["items"]
    assert [d["hardware_id"] for d in devices] == ["hw-code"]  # nothing half-written


async def test_scopes_and_credential_kinds_are_enforced(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    send_only = await make_key(api, "send")
    read_only = await make_key(api, "read")
    phone = await farm.add()
    async with hub.client(send_only) as c:
        assert (await c.get("/sms/")).status_code == 403
        assert (await c.get("/sms/")).json()["error"]["code"] == "insufficient_scope"
        assert (await c.post("/devices/enrollment-codes", json={})).status_code == 403
    async with hub.client(read_only) as c:
        r = await c.post("/sms/dispatch", json={"to": "+12025551111", "message": "x"})
        assert r.status_code == 403
        assert (await c.get("/devices/")).status_code == 200
    async with hub.client(key=None) as c:
        assert (await c.get("/sms/")).status_code == 401
        r = await c.get("/sms/", headers={"Authorization": f"Bearer {read_only}"})
        assert r.status_code == 200
        r = await c.get("/sms/", headers={"X-API-Key": read_only[:-2] + "xx"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        # A device token is not a client key.
        r = await c.get("/devices/", headers={"Authorization": f"Bearer {phone.token}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_credential"
    # A client key cannot open a device socket: 401 before any upgrade.
    with pytest.raises(InvalidStatus) as err:
        async with connect(
            hub.url.replace("http", "ws") + "/ws/device",
            additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ):
            pass
    assert err.value.response.status_code == 401
    assert b"unauthorized" in err.value.response.body


async def test_keys_can_be_listed_and_revoked(hub: HubServer, api: httpx.AsyncClient) -> None:
    key = await make_key(api, "read")
    listed = (await api.get("/keys")).json()["items"]
    entry = next(k for k in listed if key.startswith(k["prefix"]))
    assert "key" not in entry and entry["scopes"] == ["read"]
    assert (await api.delete(f"/keys/{entry['id']}")).status_code == 204
    assert (await api.delete(f"/keys/{entry['id']}")).status_code == 404
    async with hub.client(key) as c:
        assert (await c.get("/sms/")).status_code == 401
    r = await api.post("/keys", json={"name": "bad", "scopes": ["root"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_scopes"


async def test_reregistration_keeps_the_id_rotates_the_token_and_closes_the_old_session(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(hardware_id="same-phone")
    again = await enroll(hub.url, name="reinstalled", hardware_id="same-phone", api_key=ADMIN_KEY)
    assert again.device_id == phone.device_id and again.device_token != phone.token
    await asyncio.wait_for(phone.client.done.wait(), 5)
    assert phone.client.stopped_reason == "revoked"
    with pytest.raises(InvalidStatus):
        async with connect(
            hub.url.replace("http", "ws") + "/ws/device",
            additional_headers={"Authorization": f"Bearer {phone.token}"},
        ):
            pass
    devices = (await api.get("/devices/")).json()["items"]
    assert len(devices) == 1 and devices[0]["name"] == "reinstalled"


async def test_a_new_session_replaces_the_old_one(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False)
    # A second agent with the same token (e.g. the app restarted while the old socket
    # lingered) connects: the older session is closed with 4000 and stops.
    twin = PhoneClient(
        hub.url, phone.token, phone.backend, phone.store, backoff_base=0.05, backoff_max=0.2
    )
    twin_task = asyncio.create_task(twin.run())
    await asyncio.wait_for(twin.connected.wait(), 5)
    await asyncio.wait_for(phone.client.done.wait(), 5)
    assert phone.client.close_code == 4000 and phone.client.stopped_reason == "replaced"
    r = await api.post("/sms/dispatch", json={"to": "+12025551111", "message": "x"})
    assert r.status_code == 200 and r.json()["status"] == "SENT"  # the new session works
    await twin.stop()
    await twin_task


async def test_device_list_patch_and_delete(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(name="one", battery=42, charging=True, signal=2)
    offline = await farm.add(name="two", connect=False)
    items = {d["id"]: d for d in (await api.get("/devices/")).json()["items"]}
    live = items[phone.device_id]
    assert live["online"] is True and live["battery"] == 42 and live["charging"] is True
    assert live["signal"] == 2 and live["sims"] == [{"slot": 0, "carrier": "Simulated"}]
    assert items[offline.device_id]["online"] is False
    r = await api.patch(f"/devices/{phone.device_id}", json={"name": "renamed", "daily_quota": 5})
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert r.json()["daily_quota"] == 5
    assert (
        await api.patch(f"/devices/{phone.device_id}", json={"enabled": None})
    ).status_code == 422
    assert (await api.patch("/devices/nope", json={"name": "x"})).status_code == 404
    assert (await api.get("/devices/nope")).status_code == 404
    assert (await api.delete(f"/devices/{phone.device_id}")).status_code == 204
    await asyncio.wait_for(phone.client.done.wait(), 5)
    assert phone.client.close_code == 4001
    assert (await api.get(f"/devices/{phone.device_id}")).status_code == 404
    assert (await api.delete(f"/devices/{phone.device_id}")).status_code == 404


async def test_an_admin_change_does_not_re_enable_a_phone_of_a_draining_node(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(send_delay=1.0)  # holds its message: the drain waits for it
    first = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": "+12025550101", "message": "x"})
    )
    await wait_for(lambda: bool(phone.store.held()), what="the message on the phone")
    drain = asyncio.create_task(hub.hub.drain())
    await wait_for(lambda: hub.hub.draining, what="the drain")
    r = await api.patch(f"/devices/{phone.device_id}", json={"name": "renamed", "enabled": True})
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    live = hub.hub.registry.get(phone.device_id)
    assert live is not None and live.enabled is False and live.name == "renamed"
    second = await api.post(
        "/sms/dispatch", json={"to": "+12025550102", "message": "y", "timeout": 0.5}
    )
    assert second.status_code == 202  # no new work for a phone that is leaving
    assert (await first).json()["status"] == "SENT"
    await drain


async def test_http_heartbeat_updates_state_and_needs_a_device_token(
    hub: HubServer, farm: Farm, api: httpx.AsyncClient
) -> None:
    phone = await farm.add(connect=False)
    async with hub.client(key=None) as c:
        body = {"battery": 12, "charging": False, "signal": 1, "network": "3G"}
        r = await c.post(
            "/devices/heartbeat", json=body, headers={"Authorization": f"Bearer {phone.token}"}
        )
        assert r.status_code == 200 and r.json() == {"ok": True, "pending_messages": 0}
        r = await c.post("/devices/heartbeat", json=body, headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 401
        r = await c.post(
            "/devices/heartbeat",
            json={"battery": 500, "signal": 1},
            headers={"Authorization": f"Bearer {phone.token}"},
        )
        assert r.status_code == 422
    d = (await api.get(f"/devices/{phone.device_id}")).json()
    assert d["battery"] == 12 and d["network"] == "3G" and d["last_seen"] is not None


async def test_inbound_sms_is_stored_once_and_listed(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add()
    await phone.backend.receive_sms("+12025557777", "hello hub")
    await phone.backend.receive_sms("+12025558888", "second")

    async def two() -> bool:
        return len((await api.get("/sms/inbound")).json()["items"]) == 2

    await wait_for(two, what="inbound stored")
    await wait_for(lambda: not phone.store.inbound(), what="inbound acked")
    items = (await api.get("/sms/inbound", params={"from": "+12025557777"})).json()["items"]
    assert [(i["from"], i["body"], i["device_id"]) for i in items] == [
        ("+12025557777", "hello hub", phone.device_id)
    ]
    assert (await api.get("/sms/inbound", params={"device_id": "other"})).json()["items"] == []
    page = (await api.get("/sms/inbound", params={"limit": 1})).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = await api.get("/sms/inbound", params={"limit": 1, "cursor": page["next_cursor"]})
    assert rest.json()["items"][0]["id"] != page["items"][0]["id"]
