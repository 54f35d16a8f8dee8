"""SMSGate's 3rd-party API on a real hub, spoken as its clients speak it (raw HTTP here;
the PyPI client itself in test_smsgate_client.py).

Messages to several recipients with mixed outcomes, data and encrypted messages that only
app phones may send, repeated ids, every kind of bad body, credentials (keys, Basic,
access tokens: expired, forged, revoked, refreshed, out of scope), cancellation, the
listing's filters and paging, settings, webhooks in SMSGate's envelope verified byte for
byte, the inbox, health, and SMSGate's error body everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest

from smsgw.clock import utcnow
from smsgw.store import Status
from tests.app_farm import Apps
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.receiver import Receiver

BASE = "/api/3rdparty/v1"
A, B, C = "+12025550101", "+12025550102", "+12025550103"
APP_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def basic(key: str = ADMIN_KEY, login: str = "anyone") -> dict[str, str]:
    raw = base64.b64encode(f"{login}:{key}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def gate(hub: HubServer) -> Any:
    """A client of the 3rd-party API with the admin key as Basic password."""
    async with httpx.AsyncClient(base_url=hub.url + BASE, headers=basic(), timeout=30) as c:
        yield c


async def key(api: httpx.AsyncClient, *scopes: str) -> str:
    r = await api.post("/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def state_of(gate: httpx.AsyncClient, mid: str) -> dict[str, Any]:
    r = await gate.get(f"/messages/{mid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_state(gate: httpx.AsyncClient, mid: str, want: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await state_of(gate, mid))
        return found["state"] == want

    await wait_for(reached, what=f"{mid} {want}")
    return found


async def count_messages(api: httpx.AsyncClient) -> int:
    r = await api.get("/sms/", params={"limit": 200})
    return len(r.json()["items"])


def error(r: httpx.Response, status: int) -> str:
    """SMSGate's error body: ``{"message"}`` (and smsgw's code), nothing else."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"message", "code"} and isinstance(body["message"], str), body
    return str(body["message"])


# -- sending --------------------------------------------------------------------------------


async def test_a_message_to_two_recipients_is_two_smsgw_messages_delivered_and_grouped(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm, hub: HubServer
) -> None:
    phone = await farm.add("p1")
    r = await gate.post(
        "/messages",
        json={"id": "order-42", "textMessage": {"text": "Hello"}, "phoneNumbers": [A, B]},
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"{hub.url}{BASE}/messages/order-42"
    first = r.json()
    assert first["id"] == "order-42" and first["state"] == "Pending"
    assert [x["phoneNumber"] for x in first["recipients"]] == [A, B]
    assert first["textMessage"] == {"text": "Hello"} and first["isHashed"] is False
    done = await wait_state(gate, "order-42", "Delivered")
    assert [x["state"] for x in done["recipients"]] == ["Delivered", "Delivered"]
    assert list(done["states"]) == ["Pending", "Processed", "Sent", "Delivered"]
    assert all(APP_DATE.match(v) for v in done["states"].values())
    assert done["deviceId"] == phone.device_id
    # Two smsgw messages, found by the message's id on smsgw's own API too.
    r = await api.get("/sms/", params={"custom_id": "order-42"})
    items = r.json()["items"]
    assert sorted(m["recipient"] for m in items) == [A, B]
    assert {m["batch_id"] for m in items} == {"order-42"}
    assert sorted(m for m in phone.transmitted_ids) == sorted(m["id"] for m in items)


async def test_mixed_outcomes_follow_the_apps_aggregation(
    gate: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    r = await gate.post(
        "/messages",
        json={"id": "mixed", "message": "legacy text field", "phoneNumbers": [A, B, C]},
    )
    assert r.status_code == 202, r.text
    await wait_for(lambda: len(app.local) == 3, what="pull")
    local = sorted(app.local.values(), key=lambda m: m.phone_numbers[0])
    await app.transmit(local[0])  # Delivered
    await app.set_state(local[1], "Processed")
    await app.set_state(local[1], "Failed", "Send result: RESULT_ERROR_GENERIC_FAILURE")
    s = await state_of(gate, "mixed")
    # The pull made C the phone's own: QUEUED, which this API calls Processed.
    assert s["state"] == "Processed"
    await app.set_state(local[2], "Processed")
    assert (await state_of(gate, "mixed"))["state"] == "Processed"
    await app.set_state(local[2], "Sent")
    s = await state_of(gate, "mixed")
    assert s["state"] == "Sent"  # neither all Failed nor all Delivered
    by_number = {x["phoneNumber"]: x for x in s["recipients"]}
    assert by_number[A]["state"] == "Delivered" and "error" not in by_number[A]
    assert by_number[B]["state"] == "Failed" and "GENERIC_FAILURE" in by_number[B]["error"]
    assert by_number[C]["state"] == "Sent"
    assert list(s["states"]) == ["Pending", "Processed", "Sent"]


async def test_a_repeated_id_is_409_and_creates_nothing(
    gate: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    body = {"id": "once", "textMessage": {"text": "x"}, "phoneNumbers": [A]}
    assert (await gate.post("/messages", json=body)).status_code == 202
    before = await count_messages(api)
    again = await gate.post("/message", json={**body, "phoneNumbers": [B, C]})  # the alias
    assert "exists" in error(again, 409)
    assert await count_messages(api) == before
    concurrent = await asyncio.gather(
        *(gate.post("/messages", json={**body, "id": "race"}) for _ in range(5))
    )
    assert sorted(r.status_code for r in concurrent) == [202, 409, 409, 409, 409]
    assert await count_messages(api) == before + 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"phoneNumbers": [A]}, "exactly one"),
        ({"textMessage": {"text": "x"}, "dataMessage": {"data": "AA==", "port": 1}}, "exactly one"),
        ({"textMessage": {"text": "x"}, "phoneNumbers": []}, "phoneNumbers"),
        ({"textMessage": {"text": "x"}, "phoneNumbers": [A] * 101}, "phoneNumbers"),
        ({"textMessage": {"text": "x"}, "phoneNumbers": [A, A]}, "unique"),
        ({"dataMessage": {"data": "not base64!", "port": 53739}}, "base64"),
        ({"dataMessage": {"data": "AA==", "port": 0}}, "port"),
        ({"textMessage": {"text": "x"}, "ttl": 60, "validUntil": "2030-01-01T00:00:00Z"}, "ttl"),
        ({"textMessage": {"text": "x"}, "ttl": 4}, "ttl"),
        ({"textMessage": {"text": "x"}, "id": "x" * 37}, "id"),
        ({"textMessage": {"text": "x"}, "simNumber": 4}, "simNumber"),
        ({"textMessage": {"text": "x"}, "priority": 128}, "priority"),
        ({"textMessage": {"text": "x"}, "phoneNumbers": ["12"]}, "number"),
        ({"textMessage": {"text": "x"}, "phoneNumbers": "+12025550101"}, "phoneNumbers"),
        ({"mmsMessage": {"text": "x"}}, "MMS"),
        ({"textMessage": {"text": "x"}, "scheduleAt": "2020-01-01T00:00:00Z"}, "past"),
        ({"textMessage": {"text": "x"}, "deviceId": "nope"}, "no device"),
    ],
)
async def test_bad_bodies_are_400_with_smsgates_body_and_create_nothing(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    body = {"phoneNumbers": [A], **body}
    message = error(await gate.post("/messages", json=body), 400)
    assert says.lower() in message.lower(), message
    assert await count_messages(api) == 0


async def test_invalid_json_and_wrong_shapes_are_400(gate: httpx.AsyncClient) -> None:
    error(await gate.post("/messages", content=b"{nope"), 400)
    error(await gate.post("/messages", content=b"\x00"), 400)
    error(await gate.post("/messages", json=[1, 2]), 400)
    error(await gate.post("/messages", content=b"x" * 2_000_000), 413)


async def test_naive_dates_are_utc_and_ttl_becomes_the_apps_valid_until(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    until = (utcnow() + timedelta(days=30)).replace(microsecond=0, tzinfo=None)
    r = await gate.post(
        "/messages",
        json={"textMessage": {"text": "x"}, "phoneNumbers": [A], "validUntil": until.isoformat()},
    )
    assert r.status_code == 202, r.text
    r2 = await gate.post(
        "/messages", json={"textMessage": {"text": "y"}, "phoneNumbers": [B], "ttl": 600}
    )
    await wait_for(lambda: len(app.local) == 2, what="both pulled")
    by_text = {m.text: m for m in app.local.values()}
    assert by_text["x"].valid_until == until.isoformat() + ".000Z"
    assert by_text["y"].valid_until is not None  # an absolute date: the app ignores ttl
    assert r2.json()["state"] == "Pending"


async def test_skip_phone_validation_keeps_digits_and_the_sim_and_priority_reach_the_app(
    gate: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    r = await gate.post(
        "/messages?skipPhoneValidation=true",
        json={
            "textMessage": {"text": "x"},
            "phoneNumbers": ["+7 (999) 000-12-34"],
            "simNumber": 2,
            "priority": 100,
        },
    )
    assert r.status_code == 202, r.text
    assert r.json()["recipients"][0]["phoneNumber"] == "+79990001234"
    await wait_for(lambda: len(app.local) == 1, what="pulled")
    (local,) = app.local.values()
    assert local.phone_numbers == ["+79990001234"] and local.sim_number == 2


# -- content only app phones can send --------------------------------------------------------


async def test_a_data_message_goes_only_to_an_app_phone(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm, apps: Apps
) -> None:
    agent = await farm.add("agent")
    payload = base64.b64encode(b"\x01\x02binary").decode()
    body = {"dataMessage": {"data": payload, "port": 53739}, "phoneNumbers": [A, B]}
    # With agents only, nobody can send it: refused, not stored to wait forever.
    assert "app" in error(await gate.post("/messages", json=body), 400)
    pinned = {**body, "deviceId": agent.device_id}
    assert "agent" in error(await gate.post("/messages", json=pinned), 400)
    app = await apps.add()
    r = await gate.post("/messages", json={**body, "id": "data-1"})
    assert r.status_code == 202, r.text
    assert r.json()["dataMessage"] == {"data": payload, "port": 53739}
    done = await wait_state(gate, "data-1", "Delivered")
    assert done["deviceId"] == app.device_id
    assert {m.data_port for m in app.local.values()} == {53739}
    assert {m.text for m in app.local.values()} == {payload}
    assert agent.transmitted_ids == []  # routing never offered it to the agent
    # Text still goes to both kinds.
    r = await gate.post("/messages", json={"textMessage": {"text": "t"}, "phoneNumbers": [C]})
    await wait_state(gate, r.json()["id"], "Delivered")


async def test_an_encrypted_message_is_not_read_and_goes_only_to_an_app_phone(
    gate: httpx.AsyncClient, farm: Farm, apps: Apps
) -> None:
    agent = await farm.add("agent")
    app = await apps.add()
    blob = "$aes-256-cbc/pbkdf2-sha1$i=75000$c2FsdHNhbHQ=$Y2lwaGVydGV4dA=="
    r = await gate.post(
        "/messages",
        json={"textMessage": {"text": blob}, "phoneNumbers": [blob], "isEncrypted": True},
    )
    assert r.status_code == 202, r.text
    s = await wait_state(gate, r.json()["id"], "Delivered")
    assert s["isEncrypted"] is True and s["recipients"][0]["phoneNumber"] == blob
    (local,) = app.local.values()
    assert local.encrypted and local.phone_numbers == [blob]
    assert agent.transmitted_ids == []


async def test_without_a_delivery_report_the_message_ends_at_sent(
    gate: httpx.AsyncClient, apps: Apps
) -> None:
    await apps.add()
    r = await gate.post(
        "/messages",
        json={"textMessage": {"text": "x"}, "phoneNumbers": [A], "withDeliveryReport": False},
    )
    s = await wait_state(gate, r.json()["id"], "Sent")
    await asyncio.sleep(0.3)
    assert (await state_of(gate, s["id"]))["state"] == "Sent"


# -- reading, listing, cancelling ------------------------------------------------------------


async def test_listing_filters_pages_and_counts(gate: httpx.AsyncClient, apps: Apps) -> None:
    for i in range(5):
        r = await gate.post(
            "/messages", json={"id": f"m{i}", "textMessage": {"text": "x"}, "phoneNumbers": [A]}
        )
        assert r.status_code == 202
    app = await apps.add()
    await wait_for(
        lambda: sum(m.state == "Delivered" for m in app.local.values()) == 5, what="all sent"
    )
    r = await gate.get("/messages", params={"limit": 2})
    assert r.headers["x-total-count"] == "5"
    assert [m["id"] for m in r.json()] == ["m4", "m3"]
    assert "textMessage" not in r.json()[0]  # content only with includeContent
    r = await gate.get(
        "/messages",
        params={"limit": 2, "offset": 2, "sort": "created_at", "includeContent": "true"},
    )
    assert [m["id"] for m in r.json()] == ["m2", "m3"] and r.json()[0]["textMessage"]
    r = await gate.get("/messages", params={"state": "Delivered", "deviceId": app.device_id})
    assert r.headers["x-total-count"] == "5"
    r = await gate.get("/messages", params={"state": "Pending"})
    assert r.headers["x-total-count"] == "0" and r.json() == []
    r = await gate.get("/messages", params={"deviceId": "other"})
    assert r.headers["x-total-count"] == "0"
    error(await gate.get("/messages", params={"limit": 101}), 400)
    error(await gate.get("/messages", params={"state": "Lost"}), 400)
    error(await gate.get("/messages", params={"from": "yesterday"}), 400)


async def test_cancel_what_no_phone_owns(gate: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    r = await gate.post(
        "/messages", json={"id": "c1", "textMessage": {"text": "x"}, "phoneNumbers": [A, B]}
    )
    assert r.status_code == 202
    r = await gate.delete("/messages/c1")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "Cancelled"
    assert [x["state"] for x in r.json()["recipients"]] == ["Cancelled", "Cancelled"]
    assert "Cancelled" in error(await gate.delete("/messages/c1"), 409)
    error(await gate.delete("/messages/nope"), 404)
    error(await gate.get("/messages/nope"), 404)
    r = await api.get("/sms/", params={"custom_id": "c1"})
    assert {m["status"] for m in r.json()["items"]} == {Status.CANCELLED.value}


async def test_a_message_sent_through_smsgws_own_api_reads_as_one_recipient(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    await farm.add()
    r = await api.post("/sms/dispatch", json={"to": A, "message": "hi"})
    mid = r.json()["message_id"]
    s = await wait_state(gate, mid, "Delivered")
    assert s["recipients"] == [{"phoneNumber": A, "state": "Delivered"}]


# -- credentials -----------------------------------------------------------------------------


async def test_credentials_and_scopes(hub: HubServer, api: httpx.AsyncClient, farm: Farm) -> None:
    reader = await key(api, "read")
    phone = await farm.add()
    msg = {"textMessage": {"text": "x"}, "phoneNumbers": [A]}
    async with httpx.AsyncClient(base_url=hub.url + BASE, timeout=30) as c:
        assert "credentials" in error(await c.post("/messages", json=msg), 401)
        error(await c.post("/messages", json=msg, headers=basic("sk_000000000000_wrong")), 401)
        error(await c.post("/messages", json=msg, headers={"Authorization": "Basic %%%"}), 401)
        error(await c.post("/messages", json=msg, headers=bearer(phone.token)), 401)
        r = await c.post("/messages", json=msg, headers=basic(reader))
        assert error(r, 403) == "scope required: messages:send"
        assert (await c.get("/messages", headers=basic(reader))).status_code == 200
        assert (await c.get("/devices", headers=bearer(reader))).status_code == 200
        assert "webhooks:list" in error(await c.get("/webhooks", headers=bearer(reader)), 403)
        assert (
            await c.post("/messages", json=msg, headers={"X-API-Key": ADMIN_KEY})
        ).status_code == 202


async def test_access_tokens(
    hub: HubServer, gate: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    r = await gate.post(
        "/auth/token", json={"scopes": ["messages:send", "messages:read"], "ttl": 3600}
    )
    assert r.status_code == 201, r.text
    t = r.json()
    pairs = [("access_token", "accessToken"), ("token_type", "tokenType")]
    pairs += [("refresh_token", "refreshToken"), ("expires_at", "expiresAt")]
    for snake, camel in pairs:
        assert t[snake] == t[camel]
    assert t["token_type"] == "Bearer" and APP_DATE.match(t["expires_at"])
    msg = {"textMessage": {"text": "x"}, "phoneNumbers": [A]}
    async with httpx.AsyncClient(base_url=hub.url + BASE, timeout=30) as c:
        r = await c.post("/messages", json=msg, headers=bearer(t["access_token"]))
        assert r.status_code == 202, r.text
        assert (
            await c.get(f"/messages/{r.json()['id']}", headers=bearer(t["access_token"]))
        ).status_code == 200
        # Only its scopes: no listing, no webhooks.
        assert error(await c.get("/messages", headers=bearer(t["access_token"])), 403) == (
            "scope required: messages:list"
        )
        # The refresh token is not an access token, nor the reverse.
        error(await c.post("/messages", json=msg, headers=bearer(t["refresh_token"])), 401)
        error(await c.post("/auth/token/refresh", headers=bearer(t["access_token"])), 401)
        # Forged: the payload changed, the signature kept.
        head, payload, sig = t["access_token"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["scopes"] = ["tokens:manage"]
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        error(await c.get("/messages", headers=bearer(f"{head}.{forged_payload}.{sig}")), 401)
        other = jwt.encode(
            {**claims, "scopes": list(claims["scopes"])},
            "not-the-hub-key-but-long-enough-for-hs256",
            "HS256",
        )
        error(await c.get("/messages", headers=bearer(other)), 401)
        # Refresh: a new pair; the old refresh token (and its access token) ends.
        r = await c.post("/auth/token/refresh", headers=bearer(t["refresh_token"]))
        assert r.status_code == 201, r.text
        t2 = r.json()
        assert t2["id"] != t["id"]
        assert "revoked" in error(
            await c.post("/auth/token/refresh", headers=bearer(t["refresh_token"])), 401
        )
        error(await c.post("/messages", json=msg, headers=bearer(t["access_token"])), 401)
        assert (
            await c.post("/messages", json=msg, headers=bearer(t2["access_token"]))
        ).status_code == 202
        # Revoked by id.
        assert (await gate.delete(f"/auth/token/{t2['id']}")).status_code == 204
        assert "revoked" in error(
            await c.post("/messages", json=msg, headers=bearer(t2["access_token"])), 401
        )
        # Expired.
        r = await gate.post("/auth/token", json={"scopes": ["messages:read"], "ttl": 1})
        short = r.json()["accessToken"]
        await asyncio.sleep(2.1)
        assert "expired" in error(await c.get("/messages/x", headers=bearer(short)), 401)


async def test_tokens_never_grant_more_than_their_key(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    sender = await key(api, "send")
    async with httpx.AsyncClient(base_url=hub.url + BASE, headers=basic(sender), timeout=30) as c:
        assert error(await c.post("/auth/token", json={"scopes": ["devices:delete"]}), 403) == (
            "scope required: devices:delete"
        )
        assert "unknown" in error(await c.post("/auth/token", json={"scopes": ["root"]}), 400)
        error(await c.post("/auth/token", json={"scopes": []}), 400)
        error(await c.post("/auth/token", json={"scopes": ["messages:send"], "ttl": 0}), 400)
        r = await c.post("/auth/token", json={"scopes": ["all:any"]})
        assert r.status_code == 201, r.text
        token = r.json()["accessToken"]
        assert set(jwt.decode(token, options={"verify_signature": False})["scopes"]) == {
            "messages:send", "messages:cancel",
        }  # fmt: skip
    # The key revoked: its tokens stop working (within the key cache's few seconds).
    key_id = next(k["id"] for k in (await api.get("/keys")).json()["items"] if k["name"] == "send")
    assert (await api.delete(f"/keys/{key_id}")).status_code in (200, 204)
    async with httpx.AsyncClient(base_url=hub.url + BASE, headers=bearer(token), timeout=30) as c:

        async def refused() -> bool:
            r = await c.post("/messages", json={"textMessage": {"text": "x"}, "phoneNumbers": [A]})
            return r.status_code == 401

        await wait_for(refused, timeout=8, what="the revoked key's token refused")


# -- devices, settings, webhooks, inbox, health ---------------------------------------------


async def test_devices_are_listed_and_removed(
    gate: httpx.AsyncClient, farm: Farm, apps: Apps
) -> None:
    phone = await farm.add("agent-1")
    app = await apps.add()
    r = await gate.get("/devices")
    assert r.status_code == 200
    by_id = {d["id"]: d for d in r.json()}
    assert set(by_id) == {phone.device_id, app.device_id}
    assert by_id[phone.device_id]["name"] == "agent-1" and APP_DATE.match(
        by_id[phone.device_id]["lastSeen"]
    )
    assert by_id[app.device_id]["simCards"][0]["simNumber"] == 1
    assert (await gate.get("/device")).json() == r.json()
    assert (await gate.delete(f"/devices/{phone.device_id}")).status_code == 204
    error(await gate.delete(f"/devices/{phone.device_id}"), 404)
    assert [d["id"] for d in (await gate.get("/devices")).json()] == [app.device_id]


async def test_settings_hold_the_signing_key(gate: httpx.AsyncClient) -> None:
    first = (await gate.get("/settings")).json()
    key_ = first["webhooks"]["signing_key"]
    assert len(key_) >= 16 and (await gate.get("/settings")).json() == first  # generated once
    r = await gate.patch("/settings", json={"webhooks": {"signing_key": "s3cret", "retry_count": 3},
                                             "messages": {"limit_value": 10}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["webhooks"] == {"signing_key": "s3cret", "retry_count": 3}
    r = await gate.put("/settings", json={"ping": {"interval_seconds": 60}})
    assert r.json() == {"ping": {"interval_seconds": 60}, "webhooks": {"signing_key": "s3cret"}}
    error(await gate.patch("/settings", json={"webhooks": {"signing_key": 5}}), 400)
    error(await gate.patch("/settings", json={"webhooks": {"retry_count": True}}), 400)
    error(await gate.patch("/settings", json={"bogus": {}}), 400)
    error(await gate.patch("/settings", json={"webhooks": {"bogus": 1}}), 400)
    error(await gate.put("/settings", json=[1]), 400)
    assert (await gate.get("/settings")).json()["webhooks"]["signing_key"] == "s3cret"


async def test_webhooks_in_smsgates_shape_verified_byte_for_byte(
    gate: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    key_ = (await gate.get("/settings")).json()["webhooks"]["signing_key"]
    receiver = await Receiver(secrets=[key_], scheme="smsgate").start()
    try:
        phone = await farm.add("p1")
        other = await farm.add("p2", connect=False)
        for event, hook_id in (("sms:sent", "h-sent"), ("sms:delivered", "h-dlr"),
                               ("sms:received", "h-rx"), ("sms:failed", "h-fail")):  # fmt: skip
            r = await gate.post(
                "/webhooks", json={"id": hook_id, "url": receiver.url, "event": event}
            )
            assert r.status_code == 201, r.text
            assert r.json() == {
                "id": hook_id,
                "deviceId": None,
                "url": receiver.url,
                "event": event,
            }
        # Only the other phone's events: none arrive.
        r = await gate.post("/webhooks", json={"url": receiver.url, "event": "sms:sent",
                                               "deviceId": other.device_id})  # fmt: skip
        filtered = r.json()["id"]
        hooks = (await gate.get("/webhooks")).json()
        assert {h["id"] for h in hooks} == {"h-sent", "h-dlr", "h-rx", "h-fail", filtered}
        r = await gate.post(
            "/messages", json={"id": "wh-1", "textMessage": {"text": "hi"}, "phoneNumbers": [A, B]}
        )
        await wait_state(gate, "wh-1", "Delivered")
        await phone.backend.receive_sms(C, "hello <&> there")
        await wait_for(lambda: len(receiver.received) >= 5, what="5 webhooks")
        await asyncio.sleep(0.3)
        got = [r.event for r in receiver.received]
        assert receiver.bad_signatures == 0
        by_event: dict[str, list[dict[str, Any]]] = {}
        for e in got:
            by_event.setdefault(e["event"], []).append(e)
        assert sorted(by_event) == ["sms:delivered", "sms:received", "sms:sent"]
        assert len(by_event["sms:sent"]) == 2  # one per recipient, none via the filtered hook
        for e in got:
            assert set(e) == {"id", "webhookId", "event", "deviceId", "payload"}
            assert e["deviceId"] == phone.device_id
        sent = by_event["sms:sent"][0]
        assert sent["webhookId"] == "h-sent" and sent["payload"]["messageId"] == "wh-1"
        assert sent["payload"]["partsCount"] == 1 and APP_DATE.match(sent["payload"]["sentAt"])
        assert {e["payload"]["phoneNumber"] for e in by_event["sms:sent"]} == {A, B}
        rx = by_event["sms:received"][0]["payload"]
        assert rx["message"] == "hello <&> there" and rx["sender"] == C == rx["phoneNumber"]
        assert len({e["id"] for e in got}) == len(got)
        # A new signing key signs the next deliveries.
        await gate.patch("/settings", json={"webhooks": {"signing_key": "rotated"}})
        receiver.secrets = ["rotated"]
        await phone.backend.receive_sms(C, "again")
        await wait_for(lambda: len(receiver.received) == len(got) + 1, what="signed anew")
        assert receiver.bad_signatures == 0
        # smsgw's own webhooks are not SMSGate's, and the reverse.
        own = await api.post("/webhooks", json={"url": receiver.url, "events": ["message.sent"]})
        assert own.status_code == 201, own.text
        assert own.json()["id"] not in {h["id"] for h in (await gate.get("/webhooks")).json()}
        clash = {"id": own.json()["id"], "url": receiver.url, "event": "sms:sent"}
        error(await gate.post("/webhooks", json=clash), 409)
        error(await gate.delete(f"/webhooks/{own.json()['id']}"), 404)
        assert (await api.delete(f"/webhooks/{own.json()['id']}")).status_code == 204
        assert (await gate.delete("/webhooks/h-rx")).status_code == 204
        error(await gate.delete("/webhooks/h-rx"), 404)
    finally:
        await receiver.stop()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"url": "not_a_url", "event": "sms:sent"}, "url"),
        ({"url": "ftp://x/y", "event": "sms:sent"}, "url"),
        ({"url": "http://127.0.0.1/hook", "event": "sms:teleported"}, "unknown event"),
        ({"url": "http://127.0.0.1/hook", "event": "sms:sent", "deviceId": "nope"}, "device"),
        ({"event": "sms:sent"}, "url"),
    ],
)
async def test_bad_webhooks_are_400(
    gate: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    assert says in error(await gate.post("/webhooks", json=body), 400).lower()
    assert (await gate.get("/webhooks")).json() == []


async def test_a_webhook_is_replaced_by_its_id(gate: httpx.AsyncClient) -> None:
    body = {"id": None, "url": "http://127.0.0.1:9/a", "event": "sms:sent"}  # client-py's null
    made = (await gate.post("/webhooks", json=body)).json()
    again = await gate.post("/webhooks", json={**body, "id": made["id"], "event": "sms:failed"})
    assert again.status_code == 201
    assert (await gate.get("/webhooks")).json() == [{**made, "event": "sms:failed"}]


async def test_inbox_lists_received_sms_and_refresh_asks_the_app_phones(
    gate: httpx.AsyncClient, farm: Farm, apps: Apps
) -> None:
    phone = await farm.add()
    app = await apps.add()

    async def has(n: int) -> bool:
        return len((await gate.get("/inbox")).json()) == n

    for i in range(3):
        await phone.backend.receive_sms(A, f"text {i}")
        await wait_for(lambda: has(i + 1), what="inbox")  # noqa: B023 (awaited here)
    await app.receive_sms(B, "from the app")
    await wait_for(lambda: has(4), what="inbox")
    items = (await gate.get("/inbox", params={"limit": 2, "offset": 1})).json()
    assert [i["contentPreview"] for i in items] == ["text 2", "text 1"]
    assert (
        items[0]["type"] == "SMS"
        and items[0]["sender"] == A
        and APP_DATE.match(items[0]["createdAt"])
    )
    mine = (await gate.get("/inbox", params={"deviceId": app.device_id})).json()
    assert [i["contentPreview"] for i in mine] == ["from the app"]
    assert (await gate.get("/inbox", params={"type": "MMS"})).json() == []
    body = {"since": "2026-01-01T00:00:00Z", "until": "2027-01-01T00:00:00Z"}
    r = await gate.post("/inbox/refresh", json=body)
    assert r.status_code == 202, r.text
    await wait_for(lambda: "MessagesExportRequested" in app.events, what="export requested")
    r = await gate.post("/messages/inbox/export", json={**body, "deviceId": app.device_id})
    assert r.status_code == 202 and r.headers["deprecation"] == "true"
    error(await gate.post("/inbox/refresh", json={}), 400)


async def test_health_logs_and_unknown_routes(hub: HubServer, farm: Farm) -> None:
    async with httpx.AsyncClient(base_url=hub.url + BASE, timeout=30) as c:  # no credentials
        for path in ("/health", "/health/ready", "/health/startup", "/health/live"):
            r = await c.get(path)
            assert r.status_code == 200, (path, r.text)
            assert r.json()["status"] in ("pass", "warn") and "checks" in r.json()
        ready = (await c.get("/health")).json()
        assert ready["checks"]["db:status"]["status"] == "pass"
        assert ready["checks"]["devices:online"]["status"] == "warn"  # no phone yet
        await farm.add()
        assert (await c.get("/health")).json()["status"] == "pass"
        error(await c.get("/logs", headers=basic()), 501)
        error(await c.get("/inbox/x/attachments/1", headers=basic()), 501)
        error(await c.get("/nowhere", headers=basic()), 404)
        r = await c.request("TRACE", "/messages", headers=basic())
        error(r, 405)
        assert "POST" in r.headers["allow"]


async def test_a_token_of_the_environments_admin_key_dies_with_that_key(tmp_path: Any) -> None:
    """Tokens asked for with SMSGW_ADMIN_KEY name that key (by a fingerprint): change the
    key in the environment, and they stop working, though the hub's signing secret (in
    the database) is the same."""
    first = await HubServer(tmp_path / "hub.db").start()
    try:
        async with httpx.AsyncClient(base_url=first.url + BASE, headers=basic(), timeout=30) as c:
            r = await c.post("/auth/token", json={"scopes": ["messages:list"]})
            token = r.json()["accessToken"]
            assert (await c.get("/messages", headers=bearer(token))).status_code == 200
    finally:
        await first.stop()
    other_key = "sk_111111111111_another-admin-key"
    second = await HubServer(tmp_path / "hub.db", admin_key=other_key).start()
    try:
        async with httpx.AsyncClient(base_url=second.url + BASE, timeout=30) as c:
            error(await c.get("/messages", headers=bearer(token)), 401)
            assert (await c.get("/messages", headers=basic(other_key))).status_code == 200
    finally:
        await second.stop()
