"""Scheduling, expiry, priority, cancellation, client references and idempotency keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.harness import Farm, HubServer, wait_for

TO = "+12025550999"


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def status_of(api: httpx.AsyncClient, mid: str) -> str:
    return str((await api.get(f"/sms/{mid}")).json()["status"])


async def test_send_at_holds_the_message_until_its_time(api: httpx.AsyncClient, farm: Farm) -> None:
    phone = await farm.add(deliver=False)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "later", "send_at": at(1.2)})
    assert r.status_code == 202 and r.json()["status"] == "PENDING"
    mid = r.json()["message_id"]
    msg = (await api.get(f"/sms/{mid}")).json()
    assert msg["send_at"] is not None
    await asyncio.sleep(0.6)
    assert phone.transmitted_ids == []  # not before its time
    await wait_for(lambda: phone.transmitted_ids == [mid], what="the scheduled send")

    async def sent() -> bool:  # the phone's report reaches the hub a moment after it transmits
        return await status_of(api, mid) == "SENT"

    await wait_for(sent, what="the sent report")
    sent_at = datetime.fromisoformat((await api.get(f"/sms/{mid}")).json()["sent_at"])
    assert sent_at >= datetime.fromisoformat(msg["send_at"])


async def test_scheduled_message_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    first = await HubServer(db).start()
    async with first.client() as c:
        r = await c.post("/sms/dispatch", json={"to": TO, "message": "m", "send_at": at(1.5)})
        mid = r.json()["message_id"]
    await first.stop()
    second = await HubServer(db).start()
    farm = Farm(lambda: second.url)
    try:
        phone = await farm.add(deliver=False)
        await wait_for(lambda: phone.transmitted_ids == [mid], what="send after restart")
    finally:
        await farm.close()
        await second.stop()


async def test_priority_decides_the_order_of_the_backlog(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    hub.hub.settings.max_in_flight = 1
    ids = {}
    for name, priority in [("low", 0), ("high", 9), ("mid", 5)]:
        r = await api.post(
            "/sms/dispatch", json={"to": TO, "message": name, "wait": False, "priority": priority}
        )
        ids[r.json()["message_id"]] = name
    phone = await farm.add(deliver=False)
    await wait_for(lambda: len(phone.transmitted_ids) == 3, what="the backlog")
    assert [ids[m] for m in phone.transmitted_ids] == ["high", "mid", "low"]


async def test_expires_at_fails_an_unsent_message(api: httpx.AsyncClient) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", "expires_at": at(0.3)})
    mid = r.json()["message_id"]

    async def failed() -> bool:
        return await status_of(api, mid) == "FAILED"

    await wait_for(failed, what="expiry")
    assert (await api.get(f"/sms/{mid}")).json()["error_code"] == "expired"


async def test_cancel_pending_and_refuse_owned(api: httpx.AsyncClient, farm: Farm) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", "wait": False})
    mid = r.json()["message_id"]
    r = await api.delete(f"/sms/{mid}")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert r.json()["cancelled_at"] is not None
    assert (await api.delete(f"/sms/{mid}")).status_code == 200  # idempotent
    phone = await farm.add(deliver=False, send_delay=30)
    await asyncio.sleep(0.3)
    assert phone.transmitted_ids == [] and not phone.store.held()  # never offered
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m2", "timeout": 1})
    owned = r.json()["message_id"]
    assert r.json()["status"] == "QUEUED"
    r = await api.delete(f"/sms/{owned}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_cancellable"
    assert (await api.delete("/sms/unknown")).status_code == 404


async def test_custom_id_and_metadata_round_trip(api: httpx.AsyncClient) -> None:
    body = {
        "to": TO,
        "message": "m",
        "wait": False,
        "custom_id": "order-42",
        "metadata": {"campaign": "welcome", "n": [1, 2]},
    }
    mid = (await api.post("/sms/dispatch", json=body)).json()["message_id"]
    await api.post("/sms/dispatch", json={**body, "custom_id": "order-43"})
    items = (await api.get("/sms/", params={"custom_id": "order-42"})).json()["items"]
    assert [i["id"] for i in items] == [mid]
    assert items[0]["metadata"] == {"campaign": "welcome", "n": [1, 2]}
    assert items[0]["custom_id"] == "order-42"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"send_at": "2001-01-01T00:00:00Z"}, "send_at_in_past"),
        ({"send_at": "2030-01-01T00:00:00"}, "invalid_request"),  # no timezone
        ({"ttl": 60, "expires_at": "2030-01-01T00:00:00Z"}, "invalid_request"),
        (
            {"send_at": at(2 * 86400), "expires_at": at(86400)},
            "expires_before_send",
        ),
        ({"priority": 1000}, "invalid_request"),
        ({"send_at": "9999-12-31T23:59:59Z"}, "too_far_ahead"),
        ({"expires_at": "9999-12-31T23:59:59Z"}, "too_far_ahead"),
        ({"metadata": {"x": "y" * 5000}}, "invalid_request"),
        ({"metadata": [1, 2]}, "invalid_request"),
        ({"custom_id": ""}, "invalid_request"),
    ],
)
async def test_bad_scheduling_input(
    api: httpx.AsyncClient, extra: dict[str, object], code: str
) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", **extra})
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert (await api.get("/sms/")).json()["items"] == []


async def test_idempotency_key_replays_and_creates_nothing_new(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    await farm.add(deliver=False)
    headers = {"Idempotency-Key": "order-1"}
    body = {"to": TO, "message": "once"}
    first = await api.post("/sms/dispatch", json=body, headers=headers)
    again = await api.post("/sms/dispatch", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert len((await api.get("/sms/")).json()["items"]) == 1
    other = await api.post("/sms/dispatch", json={**body, "message": "twice"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    long = await api.post("/sms/dispatch", json=body, headers={"Idempotency-Key": "x" * 300})
    assert long.status_code == 422


async def test_racing_requests_with_one_key_create_one_message(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False, send_delay=0.3)
    headers = {"Idempotency-Key": "race"}
    body = {"to": TO, "message": "race"}
    responses = await asyncio.gather(
        *(api.post("/sms/dispatch", json=body, headers=headers) for _ in range(5))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["message_id"] for r in responses}) == 1
    assert len(phone.transmitted_ids) == 1
    assert len((await api.get("/sms/")).json()["items"]) == 1


async def test_idempotency_keys_belong_to_one_api_key(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    other_key = (await api.post("/keys", json={"name": "o", "scopes": ["send", "read"]})).json()
    headers = {"Idempotency-Key": "shared"}
    body = {"to": TO, "message": "m", "wait": False}
    a = await api.post("/sms/dispatch", json=body, headers=headers)
    async with hub.client(other_key["key"]) as c:
        b = await c.post("/sms/dispatch", json=body, headers=headers)
    assert a.json()["message_id"] != b.json()["message_id"]
