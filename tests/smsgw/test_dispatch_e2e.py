"""Dispatch end to end: real hub, real HTTP, simulated phones on real WebSockets."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.harness import Farm, HubServer, wait_for

TO = "+12025550999"


async def dispatch(api: httpx.AsyncClient, to: str = TO, **extra: object) -> httpx.Response:
    return await api.post("/sms/dispatch", json={"to": to, "message": "code 4821", **extra})


async def test_dispatch_sends_through_a_phone_and_reports_sent(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False)
    r = await dispatch(api)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "SENT" and body["device_id"] == phone.device_id
    assert body["attempts"] == 1
    assert phone.transmitted_ids == [body["message_id"]]
    msg = (await api.get(f"/sms/{body['message_id']}")).json()
    assert msg["status"] == "SENT" and msg["recipient"] == TO and msg["body"] == "code 4821"
    assert msg["sent_at"] and msg["queued_at"] and msg["created_at"]
    assert [a["outcome"] for a in msg["attempts"]] == ["sent"]


async def test_delivery_report_reaches_the_message(api: httpx.AsyncClient, farm: Farm) -> None:
    await farm.add(deliver=True)
    r = await dispatch(api)
    mid = r.json()["message_id"]

    async def delivered() -> bool:
        return (await api.get(f"/sms/{mid}")).json()["status"] == "DELIVERED"

    await wait_for(delivered, what="DELIVERED")
    msg = (await api.get(f"/sms/{mid}")).json()
    assert msg["delivered_at"] >= msg["sent_at"]


async def test_dispatch_spreads_over_phones_and_keeps_a_recipient_on_its_phone(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phones = [await farm.add(deliver=False) for _ in range(3)]
    used = Counter()
    for i in range(6):
        r = await dispatch(api, to=f"+1202555{i:04d}")
        assert r.status_code == 200
        used[r.json()["device_id"]] += 1
    assert set(used) == {p.device_id for p in phones}  # least recently used rotates
    first = (await dispatch(api, to="+12025559999")).json()["device_id"]
    for _ in range(3):
        assert (await dispatch(api, to="+12025559999")).json()["device_id"] == first


async def test_failover_when_a_phone_never_accepts(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    mute = await farm.add(never_accept=True, signal=4)
    good = await farm.add(signal=1, deliver=False)  # worse signal: tried second
    r = await dispatch(api)
    assert r.status_code == 200 and r.json()["device_id"] == good.device_id
    assert r.json()["attempts"] == 2
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert [(a["device_id"], a["outcome"]) for a in msg["attempts"]] == [
        (mute.device_id, "timeout"),
        (good.device_id, "sent"),
    ]
    assert mute.transmitted_ids == []


async def test_failover_when_a_phone_fails_retryably(api: httpx.AsyncClient, farm: Farm) -> None:
    flaky = await farm.add(failure_rate=1.0, failure_retryable=True, signal=4)
    good = await farm.add(signal=1, deliver=False)
    r = await dispatch(api)
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert r.status_code == 200 and r.json()["device_id"] == good.device_id
    assert [a["outcome"] for a in msg["attempts"]] == ["failed_retryable", "sent"]
    assert msg["attempts"][0]["device_id"] == flaky.device_id
    # SENT after a failover: the failed attempt's error stays in its attempt, not on the
    # answer or the message.
    assert r.json()["status"] == "SENT" and r.json()["error"] is None, r.json()
    assert msg["error"] is None and msg["error_code"] is None
    assert msg["attempts"][0]["error_code"] is not None


async def test_non_retryable_failure_is_final(api: httpx.AsyncClient, farm: Farm) -> None:
    await farm.add(failure_rate=1.0, failure_retryable=False, signal=4)
    other = await farm.add(signal=1)
    r = await dispatch(api)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "FAILED" and body["error"] == "simulated radio failure"
    assert other.transmitted_ids == []


async def test_failover_when_a_phone_is_killed_mid_dispatch(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    slow = await farm.add(accept_delay=30.0, signal=4)
    good = await farm.add(signal=1, deliver=False)
    request = asyncio.create_task(dispatch(api))
    await wait_for(lambda: bool(slow.store.held()), what="the offer to reach the slow phone")
    await slow.client.kill()
    r = await request
    assert r.status_code == 200 and r.json()["device_id"] == good.device_id
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert [a["outcome"] for a in msg["attempts"]] == ["disconnected", "sent"]


async def test_no_phone_returns_202_and_the_outbox_sends_when_one_connects(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    r = await dispatch(api)
    assert r.status_code == 202 and r.json() == {
        "message_id": r.json()["message_id"],
        "status": "PENDING",
        "encoding": "GSM-7",
        "segments": 1,
    }
    mid = r.json()["message_id"]
    phone = await farm.add(deliver=False)

    async def sent() -> bool:
        return (await api.get(f"/sms/{mid}")).json()["status"] == "SENT"

    await wait_for(sent, what="outbox to send")
    assert phone.transmitted_ids == [mid]


async def test_wait_false_returns_202_at_once(api: httpx.AsyncClient, farm: Farm) -> None:
    phone = await farm.add(deliver=False)
    r = await dispatch(api, wait=False)
    assert r.status_code == 202
    mid = r.json()["message_id"]
    await wait_for(lambda: phone.transmitted_ids == [mid], what="background send")


async def test_deadline_returns_202_while_the_owner_is_still_sending(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(send_delay=2.0, deliver=False)
    r = await dispatch(api, timeout=0.5)
    assert r.status_code == 202 and r.json()["status"] == "QUEUED"
    mid = r.json()["message_id"]
    await wait_for(lambda: phone.transmitted_ids == [mid], what="the owner to finish")


async def test_concurrent_dispatches_each_go_out_once(api: httpx.AsyncClient, farm: Farm) -> None:
    phones = [await farm.add(deliver=False, accept_delay=0.01) for _ in range(4)]
    responses = await asyncio.gather(*(dispatch(api, to=f"+1202555{i:04d}") for i in range(40)))
    assert all(r.status_code == 200 and r.json()["status"] == "SENT" for r in responses)
    ids = [r.json()["message_id"] for r in responses]
    sent = [m for p in phones for m in p.transmitted_ids]
    assert sorted(sent) == sorted(ids)  # every message exactly once, on exactly one phone


async def test_send_through_a_named_phone_only(api: httpx.AsyncClient, farm: Farm) -> None:
    a = await farm.add(deliver=False, signal=4)
    b = await farm.add(deliver=False, signal=1)
    r = await api.post("/sms/send", json={"to": TO, "message": "x", "device_id": b.device_id})
    assert r.status_code == 200 and r.json()["device_id"] == b.device_id
    assert a.transmitted_ids == []
    r = await api.post("/sms/send", json={"to": TO, "message": "x", "device_id": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "device_not_found"
    await api.patch(f"/devices/{b.device_id}", json={"enabled": False})
    r = await api.post("/sms/send", json={"to": TO, "message": "x", "device_id": b.device_id})
    assert r.status_code == 409 and r.json()["error"]["code"] == "device_disabled"


async def test_named_phone_that_never_accepts_gets_no_failover(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    mute = await farm.add(never_accept=True)
    other = await farm.add()
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "x", "device_id": mute.device_id, "timeout": 1.5}
    )
    assert r.status_code == 202 and r.json()["status"] == "PENDING"
    assert other.transmitted_ids == []


async def test_disabled_and_over_quota_phones_are_skipped(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    a = await farm.add(deliver=False, signal=4)
    b = await farm.add(deliver=False, signal=1)
    await api.patch(f"/devices/{a.device_id}", json={"daily_quota": 1})
    r1 = await dispatch(api, to="+12025550001")
    r2 = await dispatch(api, to="+12025550002")
    assert r1.json()["device_id"] == a.device_id and r2.json()["device_id"] == b.device_id
    await api.patch(f"/devices/{b.device_id}", json={"enabled": False})
    r3 = await dispatch(api, to="+12025550003")
    assert r3.status_code == 202  # a is over quota, b disabled: stays in the outbox
    devices = {d["id"]: d for d in (await api.get("/devices/")).json()["items"]}
    assert devices[a.device_id]["sent_today"] == 1 and devices[a.device_id]["daily_quota"] == 1
    assert devices[b.device_id]["enabled"] is False
    # Both were set aside by the roster as spent; an admin's change brings one back, and
    # the waiting message goes to it.
    await api.patch(f"/devices/{a.device_id}", json={"daily_quota": 2})
    mid = r3.json()["message_id"]

    async def sent_by_a() -> bool:
        msg = (await api.get(f"/sms/{mid}")).json()
        return bool(msg["status"] == "SENT" and msg["device_id"] == a.device_id)

    await wait_for(sent_by_a, what="the waiting message sent by the phone whose quota rose")
    await api.patch(f"/devices/{b.device_id}", json={"enabled": True})
    r4 = await dispatch(api, to="+12025550004")
    assert r4.status_code == 200 and r4.json()["device_id"] == b.device_id


async def test_a_dispatch_waits_for_a_busy_phone_to_free_a_slot(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    hub.hub.settings.max_in_flight = 1  # one message at a time per phone
    phone = await farm.add(deliver=False, send_delay=0.3)
    first = asyncio.create_task(dispatch(api, to="+12025550001"))
    await wait_for(lambda: bool(phone.store.held()), what="the first message on the phone")
    second = await dispatch(api, to="+12025550002")  # waits for the slot, not 202 at once
    assert second.status_code == 200 and second.json()["status"] == "SENT"
    assert (await first).json()["status"] == "SENT"
    assert len(phone.transmitted_ids) == 2


async def test_failover_reaches_a_phone_that_connected_during_the_dispatch(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    busy = await farm.add(deliver=False, never_accept=True)
    await api.patch(f"/devices/{busy.device_id}", json={"daily_quota": 1})
    request = asyncio.create_task(dispatch(api, timeout=5))
    newcomer = await farm.add(deliver=False)
    r = await request
    assert r.status_code == 200 and r.json()["device_id"] == newcomer.device_id
