"""What the REST fuzzer found (tests/fuzz/test_rest_schemathesis.py, docs/testing.md), each
pinned on a live hub: the code and /openapi.json now say the same thing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.harness import HubServer

TO = "+12025550999"
MOBILE = "/api/mobile/v1"
SMSGATE = "/api/3rdparty/v1"


async def spec_of(hub: HubServer) -> dict[str, Any]:
    async with hub.client(key=None) as c:
        spec: dict[str, Any] = (await c.get("/openapi.json")).json()
    return spec


@pytest.mark.parametrize(
    "url",
    [
        "/sms/?since=0.5",  # was 200: read as 1970-01-01T00:00:00.5Z
        "/sms/?since=4102444800",  # was 200: read as 2100-01-01
        "/sms/inbound?since=0.5",
        "/stats?to=0.5",
        "/stats?from=1700000000",
        "/sms/?since=2026-01-31",  # a date without a time
    ],
)
async def test_a_number_is_not_a_date_in_a_query(api: httpx.AsyncClient, url: str) -> None:
    """The schema says an ISO 8601 date-time; pydantic read a number, or a string of one,
    as a Unix time."""
    r = await api.get(url)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "ISO-8601" in err["message"]


async def test_a_number_is_not_a_date_in_a_body(api: httpx.AsyncClient) -> None:
    for send_at in ["4102444800", "0.5"]:
        r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "send_at": send_at})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "send_at"
    assert (await api.get("/sms/")).json()["items"] == []


async def test_iso_dates_in_queries_are_still_read(api: httpx.AsyncClient) -> None:
    """With an offset as the schema says; without one (the dashboard's datetime-local
    search field sends none) as UTC, the same instant as with Z."""
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "wait": False})
    assert r.status_code == 202
    before = datetime.now(UTC) - timedelta(minutes=1)
    after = before + timedelta(hours=1)
    for when, found in [(before, 1), (after, 0)]:
        for text in [
            when.isoformat(),
            when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            when.strftime("%Y-%m-%dT%H:%M"),
        ]:
            r = await api.get("/sms/", params={"since": text})
            assert r.status_code == 200, (text, r.text)
            assert len(r.json()["items"]) == found, text
    r = await api.get("/stats", params={"from": before.isoformat(), "to": after.isoformat()})
    assert r.status_code == 200 and r.json()["total"] == 1


async def test_an_empty_query_value_is_documented_as_allowed(hub: HubServer) -> None:
    """?since= is taken as absent (tests/smsgw/test_api_contract.py); the document says so
    with allowEmptyValue on every optional query parameter (it was refused as a bad date
    by the fuzzer's reading of the schema)."""
    spec = await spec_of(hub)
    seen = 0
    for ops in spec["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "query":
                    assert param.get("allowEmptyValue", False) is not param["required"], param
                    seen += 1
    assert seen > 15
    async with hub.client() as c:
        for url in ["/sms/?since=", "/sms/inbound?since=", "/stats?from=&to="]:
            assert (await c.get(url)).status_code == 200, url


async def test_the_mobile_device_lookup_documents_its_401(hub: HubServer) -> None:
    """GET /api/mobile/v1/device answers without a token, and 401 with one that is not a
    phone's: the 401 was not in its document."""
    op = (await spec_of(hub))["paths"][f"{MOBILE}/device"]["get"]
    assert {"200", "401"} <= set(op["responses"])
    async with hub.client(key=None) as c:
        assert (await c.get(f"{MOBILE}/device")).status_code == 200
        r = await c.get(f"{MOBILE}/device", headers={"Authorization": "Bearer dev_nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("path", [f"{SMSGATE}/logs", f"{SMSGATE}/inbox/m/attachments/p"])
async def test_smsgates_unserved_operations_document_their_refusals(
    hub: HubServer, api: httpx.AsyncClient, path: str
) -> None:
    """They check the caller before answering 501: 401 and 403 were undocumented."""
    spec = await spec_of(hub)
    template = path.replace("/m/attachments/p", "/{message_id}/attachments/{part_id}")
    assert {"401", "403", "501"} <= set(spec["paths"][template]["get"]["responses"])
    send = (await api.post("/keys", json={"name": "s", "scopes": ["send"]})).json()["key"]
    async with hub.client(key=None) as c:
        r = await c.get(path)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = await c.get(path, headers={"Authorization": f"Bearer {send}"})
        assert r.status_code == 403 and set(r.json()) == {"message", "code"}
    r = await api.get(path, headers={"Authorization": f"Bearer {api.headers['x-api-key']}"})
    assert r.status_code == 501 and r.json()["code"] == "not_implemented"


def smsgate(api: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.headers['x-api-key']}"}


@pytest.mark.parametrize("field", ["rate_limit_rpm", "daily_message_limit"])
async def test_a_key_limit_too_large_for_its_column_is_422(
    hub: HubServer, api: httpx.AsyncClient, field: str
) -> None:
    """POST /keys {"rate_limit_rpm": 46614317603887865856} was a 500 (SQLite: Python int
    too large to convert to SQLite INTEGER; the PostgreSQL column is 32-bit)."""
    r = await api.post("/keys", json={"name": "k", "scopes": ["send"], field: 10**20})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == field
    schema = (await spec_of(hub))["components"]["schemas"]["KeyIn"]["properties"][field]
    maximum = schema["anyOf"][0]["maximum"]
    assert maximum < 2**31
    r = await api.post("/keys", json={"name": "k", "scopes": ["send"], field: maximum})
    assert r.status_code == 201 and r.json()[field] == maximum


@pytest.mark.parametrize("ttl", [10**12, 10**30, 10**400])
async def test_an_smsgate_ttl_past_the_horizon_is_400(api: httpx.AsyncClient, ttl: int) -> None:
    """SMSGate's ttl has no maximum: 10**12 s overflowed a date, 10**30 a C int, 10**400 a
    float (500s). It is refused as a date past the scheduling horizon is."""
    body = {"textMessage": {"text": "x"}, "phoneNumbers": [TO], "ttl": ttl}
    r = await api.post(f"{SMSGATE}/messages", json=body, headers=smsgate(api))
    assert r.status_code == 400 and r.json()["code"] == "too_far_ahead", r.text
    body["ttl"] = 366 * 86400
    r = await api.post(f"{SMSGATE}/messages", json=body, headers=smsgate(api))
    assert r.status_code == 202, r.text
    assert len((await api.get("/sms/")).json()["items"]) == 1


async def test_an_smsgate_offset_past_a_database_offset_is_400(api: httpx.AsyncClient) -> None:
    r = await api.get(f"{SMSGATE}/messages?offset={10**23}", headers=smsgate(api))
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"  # was a 500
    r = await api.get(f"{SMSGATE}/messages?offset=1000000", headers=smsgate(api))
    assert r.status_code == 200 and r.json() == []


LATE = "9999-12-31T23:59:59-23:59"  # year 10000 in UTC
EARLY = "0001-01-01T00:00:00+23:59"  # year 0 in UTC


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("POST", "/sms/dispatch", {"to": TO, "message": "x", "send_at": LATE}, 422),
        ("POST", "/sms/dispatch", {"to": TO, "message": "x", "expires_at": EARLY}, 422),
        ("POST", "/sms/batch", {"message": "x", "recipients": [{"to": TO}], "send_at": LATE}, 422),
        ("GET", f"/sms/?since={LATE}", None, 422),
        ("GET", "/sms/inbound?since=" + EARLY.replace("+", "%2B"), None, 422),
        ("GET", "/stats?from=" + EARLY.replace("+", "%2B"), None, 422),
        ("GET", f"{SMSGATE}/messages?from={LATE}", None, 400),
        ("GET", f"{SMSGATE}/inbox?from={LATE}", None, 400),
        (
            "POST",
            f"{SMSGATE}/messages",
            {"textMessage": {"text": "x"}, "phoneNumbers": [TO], "validUntil": LATE},
            400,
        ),
    ],
)
async def test_a_date_utc_cannot_hold_is_refused(
    api: httpx.AsyncClient, method: str, url: str, body: Any, status: int
) -> None:
    """A valid ISO date-time whose offset puts it outside years 1 to 9999 in UTC was a
    500 (OverflowError) wherever it was compared or stored."""
    headers = smsgate(api) if url.startswith(SMSGATE) else {}
    r = await api.request(method, url, json=body, headers=headers)
    assert r.status_code == status, r.text
    text = r.text
    assert "between years 1 and 9999" in text
    assert (await api.get("/sms/")).json()["items"] == []


async def test_stats_for_a_week_before_year_one_is_what_there_is(api: httpx.AsyncClient) -> None:
    """GET /stats?to=0001-01-03T00:00:00Z: the week before began before year 1 (a 500)."""
    r = await api.get("/stats", params={"to": "0001-01-03T00:00:00Z"})
    assert r.status_code == 200 and r.json()["from"] == "0001-01-01T00:00:00Z"
    r = await api.get("/stats", params={"to": "0001-01-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_range"
