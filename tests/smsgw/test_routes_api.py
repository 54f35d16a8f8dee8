"""The routes admin API (smsgw/api/routes.py, docs/routes.md) through a real hub:
CRUD, write-only credentials validated per kind, the callback URL, forcing a route on
dispatch, and what GET /sms/{id} and /stats say of routes."""

from __future__ import annotations

import httpx

from tests.harness import HubServer

TO = "+12025550999"
TWILIO = {
    "kind": "twilio",
    "name": "tw",
    "credentials": {"account_sid": "AC" + "0" * 32, "auth_token": "secret-token-1"},
    "sender": "+12025550100",
    "price_per_segment": 0.0079,
    "currency": "USD",
}


async def test_route_crud_never_shows_credentials(hub: HubServer, api: httpx.AsyncClient) -> None:
    r = await api.post("/routes", json=TWILIO)
    assert r.status_code == 201, r.text
    route = r.json()
    assert "credentials" not in route and "secret-token-1" not in r.text
    assert route["callback_url"] == f"{hub.url}/routes/{route['id']}/callback"
    assert route["policy"]["after_seconds"] == 60
    r = await api.post("/routes", json=TWILIO)
    assert r.status_code == 409 and r.json()["error"]["code"] == "route_name_taken"
    listed = await api.get("/routes")
    assert [x["name"] for x in listed.json()["items"]] == ["tw"]
    assert "secret-token-1" not in listed.text
    r = await api.patch(
        f"/routes/{route['id']}",
        json={"enabled": False, "policy": {"after_seconds": 5, "sms_types": ["otp"]}},
    )
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["policy"]["sms_types"] == ["otp"]
    r = await api.patch(f"/routes/{route['id']}", json={"credentials": {"account_sid": "x"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_credentials"
    r = await api.patch(f"/routes/{route['id']}", json={"enabled": None})
    assert r.status_code == 422
    got = await api.get(f"/routes/{route['id']}")
    assert got.status_code == 200 and "secret-token-1" not in got.text
    assert (await api.delete(f"/routes/{route['id']}")).status_code == 204
    assert (await api.get(f"/routes/{route['id']}")).status_code == 404


async def test_credentials_are_checked_per_kind(api: httpx.AsyncClient) -> None:
    bad = {**TWILIO, "kind": "sns"}
    r = await api.post("/routes", json=bad)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_credentials"
    sns = {
        "kind": "sns",
        "name": "aws",
        "credentials": {"region": "us-east-1", "access_key_id": "A", "secret_access_key": "S"},
    }
    assert (await api.post("/routes", json=sns)).status_code == 201


async def test_routes_are_admin_only(hub: HubServer, api: httpx.AsyncClient) -> None:
    r = await api.post("/keys", json={"name": "sender", "scopes": ["send", "read"]})
    key = r.json()["key"]
    async with hub.client(key) as client:
        assert (await client.get("/routes")).status_code == 403
        assert (await client.post("/routes", json=TWILIO)).status_code == 403


async def test_a_forced_route_is_checked_and_shown(api: httpx.AsyncClient) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "route": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_route"
    route = (await api.post("/routes", json={**TWILIO, "enabled": False})).json()
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "route": "tw"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "route_disabled"
    await api.patch(
        f"/routes/{route['id']}", json={"enabled": True, "api_base_url": "http://127.0.0.1:9"}
    )
    r = await api.post(
        "/sms/dispatch",
        json={"to": TO, "message": "x", "route": "tw", "sms_type": "alert", "wait": False},
    )
    assert r.status_code == 202, r.text
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["route_id"] == route["id"] and msg["route"] == "tw"
    assert msg["sms_type"] == "alert" and msg["device_id"] is None
    stats = (await api.get("/stats")).json()
    assert "by_route" in stats
