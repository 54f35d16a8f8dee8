"""Routes beyond phones end to end (docs/routes.md): a real hub, simulated phones, the
Twilio SDK against a stand-in written from Twilio's API reference (tests/fakes/
twilio_api.py) and boto3 against moto's SNS in server mode. No internet."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from smsgw.route_worker import route_callback_url
from tests.fakes.twilio_api import FakeTwilio, twilio_signature
from tests.harness import Farm, HubServer, wait_for

pytestmark = pytest.mark.hub_settings(route_poll_interval=0.05, route_retry_delay=0.2)

TO = "+12025550999"
SID = "AC" + "1" * 32
TOKEN = "twilio-auth-token-1"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = await FakeTwilio({SID: TOKEN}).start()
    yield fake
    await fake.stop()


@pytest.fixture
def moto_sns() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def add_twilio(api: httpx.AsyncClient, fake: FakeTwilio, **kw: Any) -> dict[str, Any]:
    body = {
        "kind": "twilio",
        "name": "tw",
        "credentials": {"account_sid": SID, "auth_token": TOKEN},
        "sender": "+12025550100",
        "api_base_url": fake.url,
        "price_per_segment": 0.0079,
        "currency": "USD",
        **kw,
    }
    r = await api.post("/routes", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def status_of(api: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    return dict((await api.get(f"/sms/{message_id}")).json())


async def reaches(
    api: httpx.AsyncClient, message_id: str, status: str, timeout: float = 10
) -> None:
    async def check() -> bool:
        return (await status_of(api, message_id))["status"] == status

    await wait_for(check, timeout, what=f"{message_id} {status}")


async def test_a_forced_route_goes_to_twilio_never_to_a_phone(
    api: httpx.AsyncClient, farm: Farm, twilio: FakeTwilio
) -> None:
    phone = await farm.add()
    await add_twilio(api, twilio)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "via twilio", "route": "tw"})
    assert r.status_code == 202, r.text
    mid = r.json()["message_id"]
    await reaches(api, mid, "DELIVERED")
    msg = await status_of(api, mid)
    assert msg["route"] == "tw" and msg["route_message_id"] == twilio.received[0].sid
    assert msg["cost"] == pytest.approx(0.0079) and msg["currency"] == "USD"
    assert msg["device_id"] is None and phone.transmitted_ids == []
    assert [(s.to, s.body) for s in twilio.received] == [(TO, "via twilio")]
    assert all(code == 204 for _, code in twilio.callbacks)
    stats = (await api.get("/stats")).json()
    assert stats["by_route"]["tw"]["DELIVERED"] == 1


async def test_no_phone_online_the_route_takes_it_after_its_wait(
    api: httpx.AsyncClient, twilio: FakeTwilio
) -> None:
    await add_twilio(api, twilio, policy={"after_seconds": 0.5})
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "fallback", "wait": False})
    mid = r.json()["message_id"]
    await asyncio.sleep(0.3)
    assert twilio.received == []  # phones first
    await reaches(api, mid, "DELIVERED")
    assert len(twilio.received) == 1


async def test_otp_only_policy_and_cost_cap(api: httpx.AsyncClient, twilio: FakeTwilio) -> None:
    await add_twilio(api, twilio, policy={"after_seconds": 0, "sms_types": ["otp"]})
    await add_twilio(
        api,
        twilio,
        name="dear",
        priority=10,
        policy={"after_seconds": 0, "max_cost_per_message": 0.001},
    )
    plain = await api.post("/sms/dispatch", json={"to": TO, "message": "a", "wait": False})
    otp = await api.post(
        "/sms/dispatch", json={"to": TO, "message": "b", "wait": False, "sms_type": "otp"}
    )
    await reaches(api, otp.json()["message_id"], "DELIVERED")
    assert (await status_of(api, otp.json()["message_id"]))["route"] == "tw"
    await asyncio.sleep(0.5)
    assert (await status_of(api, plain.json()["message_id"]))["status"] == "PENDING"
    assert [s.body for s in twilio.received] == ["b"]


async def test_a_refusal_fails_with_twilios_code_and_a_throttle_is_retried(
    api: httpx.AsyncClient, twilio: FakeTwilio
) -> None:
    await add_twilio(api, twilio)
    twilio.refuse_numbers.add("+12025550998")
    r = await api.post("/sms/dispatch", json={"to": "+12025550998", "message": "x", "route": "tw"})
    mid = r.json()["message_id"]
    await reaches(api, mid, "FAILED")
    assert (await status_of(api, mid))["error_code"] == "21211"
    twilio.fail_next = [429, 503]
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "y", "route": "tw"})
    await reaches(api, r.json()["message_id"], "DELIVERED")
    assert [s.body for s in twilio.received] == ["y"]  # sent once, after two refusals


async def test_forged_duplicate_and_out_of_order_callbacks(
    hub: HubServer, api: httpx.AsyncClient, twilio: FakeTwilio
) -> None:
    twilio.auto_callbacks = False
    route = await add_twilio(api, twilio)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "z", "route": "tw"})
    mid = r.json()["message_id"]

    async def accepted() -> bool:
        return (await status_of(api, mid))["route_message_id"] is not None

    await wait_for(accepted, what="Twilio's answer recorded")
    sent = twilio.received[0]
    url = route_callback_url(hub.settings, route["id"])  # type: ignore[arg-type]
    assert url == route["callback_url"]
    assert await twilio.callback(sent, "delivered", sign=False) == 403
    params = twilio.callback_params(sent, "delivered")
    forged = twilio_signature("not-the-token", url, params)
    async with httpx.AsyncClient() as client:
        r = await client.post(url, data=params, headers={"X-Twilio-Signature": forged})
        assert r.status_code == 403
        # Signed for another URL (another route): refused as well.
        other = twilio_signature(TOKEN, url.replace(route["id"], "x"), params)
        r = await client.post(url, data=params, headers={"X-Twilio-Signature": other})
        assert r.status_code == 403
    assert (await status_of(api, mid))["status"] == "QUEUED"
    # Delivered before sent, and each twice: as once in order.
    for status in ("delivered", "sent", "delivered", "sent", "failed"):
        assert await twilio.callback(sent, status, "30003" if status == "failed" else None) == 204
    msg = await status_of(api, mid)
    assert msg["status"] == "DELIVERED" and msg["sent_at"] is not None
    assert msg["error_code"] is None


async def test_sns_route_through_moto(api: httpx.AsyncClient, moto_sns: str) -> None:
    body = {
        "kind": "sns",
        "name": "aws",
        "credentials": {
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "aws-secret-1",
        },
        "api_base_url": moto_sns,
        "price_per_segment": 0.00645,
        "currency": "USD",
    }
    assert (await api.post("/routes", json=body)).status_code == 201
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "via sns", "route": "aws"})
    mid = r.json()["message_id"]
    await reaches(api, mid, "SENT")
    msg = await status_of(api, mid)
    assert msg["cost"] == pytest.approx(0.00645) and msg["route"] == "aws"
    async with httpx.AsyncClient() as client:
        recorded = (await client.get(moto_sns + "/moto-api/data.json")).json()["sns"]["SMS"]
    found = recorded.values() if isinstance(recorded, dict) else recorded
    assert any("via sns" in json.dumps(x) for x in found)
    text = (await api.get("/routes")).text + (await api.get(f"/sms/{mid}")).text
    assert "aws-secret-1" not in text


@pytest.mark.parametrize("round_", range(3))
async def test_phones_and_route_race_at_the_boundary_one_sender_each(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, twilio: FakeTwilio, round_: int
) -> None:
    """Phones accept slowly, right around the end of their offer's lease (accept_timeout
    1 s), while the route may take any message no phone accepted: every message is sent
    by exactly one of them."""
    phones = [await farm.add(accept_delay=d) for d in (0.95, 1.0, 1.05)]
    await add_twilio(api, twilio, policy={"after_seconds": 0.9})
    ids = []
    for i in range(24):
        r = await api.post("/sms/dispatch", json={"to": TO, "message": f"m{i}", "wait": False})
        ids.append(r.json()["message_id"])

    async def settled() -> bool:
        for mid in ids:
            if (await status_of(api, mid))["status"] not in ("SENT", "DELIVERED", "FAILED"):
                return False
        return True

    await wait_for(settled, 60, what="every message settled")
    by_phone = [m for p in phones for m in p.transmitted_ids]
    bodies = {s.body for s in twilio.received}
    by_route = [mid for i, mid in enumerate(ids) if f"m{i}" in bodies]
    assert len(by_phone) == len(set(by_phone))
    assert len(twilio.received) == len(bodies)
    assert set(by_phone).isdisjoint(by_route)
    assert set(by_phone) | set(by_route) == set(ids)
    for mid in ids:
        msg = await status_of(api, mid)
        assert (msg["route_id"] is not None) == (mid in by_route), msg
    print(f"race round {round_}: {len(by_phone)} by phones, {len(by_route)} by the route")


@pytest.mark.hub_settings(route_poll_interval=0.05, route_answer_timeout=0.3)
async def test_a_crash_between_claim_and_answer_fails_it_not_sends_twice(
    hub: HubServer, api: httpx.AsyncClient, twilio: FakeTwilio
) -> None:
    """A node that died after its claim and before Twilio's answer was recorded: the
    message is FAILED route_unknown after route_answer_timeout, never sent again."""
    from smsgw.clock import utcnow

    route = await add_twilio(api, twilio, enabled=False)  # no worker sends: we "crash"
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "wait": False})
    mid = r.json()["message_id"]
    assert await hub.hub.store.claim_for_route(mid, route["id"], utcnow())
    await reaches(api, mid, "FAILED")
    msg = await status_of(api, mid)
    assert msg["error_code"] == "route_unknown" and twilio.received == []


async def test_a_phone_that_comes_online_late_never_sends_what_the_route_owns(
    api: httpx.AsyncClient, farm: Farm, twilio: FakeTwilio
) -> None:
    await add_twilio(api, twilio, policy={"after_seconds": 0.3})
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "late", "wait": False})
    mid = r.json()["message_id"]
    await reaches(api, mid, "DELIVERED")
    phone = await farm.add()
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "fresh", "wait": False})
    fresh = r.json()["message_id"]
    await reaches(api, fresh, "DELIVERED")  # the phone is there now: it takes the new one
    assert phone.transmitted_ids == [fresh]
    assert [s.body for s in twilio.received] == ["late"]
