"""Webhooks end to end: a real hub, real phones, and a real receiver on loopback that
verifies every signature. Healthy receivers get each event exactly once; failing,
hanging, refusing and redirecting ones are retried, dead-lettered, replayed, disabled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from smsgw.signature import verify
from tests.harness import Farm, HubProcess, HubServer, wait_for
from tests.receiver import Receiver

TO = "+12025550123"
FAST = {
    "webhook_poll_interval": 0.05,
    "webhook_retry_schedule": [0.2, 0.2, 0.2],
    "webhook_timeout": 1.0,
}
pytestmark = pytest.mark.hub_settings(**FAST)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def subscribe(api: httpx.AsyncClient, receiver: Receiver, *events: str) -> dict[str, Any]:
    r = await api.post("/webhooks", json={"url": receiver.url, "events": list(events) or ["*"]})
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    assert hook["secret"].startswith("whsec_")
    receiver.secrets.append(hook["secret"])
    return hook


def later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


async def cancelled_messages(api: httpx.AsyncClient, n: int) -> list[str]:
    """n message.cancelled events without any phone: scheduled, then cancelled."""
    ids = []
    for _ in range(n):
        r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "send_at": later()})
        ids.append(r.json()["message_id"])
        assert (await api.delete(f"/sms/{ids[-1]}")).status_code == 200
    return ids


async def deliveries(api: httpx.AsyncClient, hook_id: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.get(f"/webhooks/{hook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def settled(api: httpx.AsyncClient, hook_id: str) -> list[dict[str, Any]]:
    """The deliveries once none is pending: the receiver sees a request a moment before
    the hub records its answer."""
    found: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal found
        found = await deliveries(api, hook_id)
        return bool(found) and all(d["status"] != "pending" for d in found)

    await wait_for(done, what="deliveries to settle")
    return found


async def test_a_sent_message_raises_signed_events_once_each_in_order(
    hub: HubServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver)
    farm = Farm(lambda: hub.url)
    try:
        phone = await farm.add()
        await wait_for(lambda: bool(receiver.events("device.online")), what="device.online")
        r = await api.post("/sms/dispatch", json={"to": TO, "message": "hi"})
        assert r.json()["status"] == "SENT"
        mid = r.json()["message_id"]

        def of_message() -> list[str]:
            return [e["type"] for e in receiver.events() if e["data"].get("message_id") == mid]

        await wait_for(lambda: len(of_message()) == 3, what="three message events")
        assert of_message() == ["message.queued", "message.sent", "message.delivered"]
        online = receiver.events("device.online")[0]
        assert online["data"]["device_id"] == phone.device_id and online["data"]["online"]
        await farm.close()
        await wait_for(lambda: bool(receiver.events("device.offline")), what="device.offline")
    finally:
        await farm.close()
    sent = receiver.events("message.sent")[0]
    assert set(sent) == {"id", "type", "created_at", "data"}
    assert sent["data"]["status"] == "SENT" and sent["data"]["to"] == TO
    assert "message" not in sent["data"]  # the body is never sent out
    first = receiver.received[0]
    assert first.headers["x-smsgw-event-id"] == first.event["id"]
    assert first.headers["x-smsgw-attempt"] == "1"
    assert receiver.bad_signatures == 0 and receiver.duplicates() == []
    rows = await settled(api, hook["id"])
    assert {d["status"] for d in rows} == {"succeeded"}
    assert all(d["history"][0]["status_code"] == 204 for d in rows)


async def test_a_failing_receiver_is_retried_until_it_recovers(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver, "message.cancelled")
    receiver.mode = "fail"
    [mid] = await cancelled_messages(api, 1)
    await wait_for(lambda: receiver.attempts >= 2, what="two failed attempts")
    receiver.mode = "ok"
    await wait_for(lambda: bool(receiver.events("message.cancelled")), what="the retry to succeed")
    assert receiver.events()[0]["data"]["message_id"] == mid
    [d] = await settled(api, hook["id"])
    assert d["status"] == "succeeded"
    codes = [a["status_code"] for a in d["history"]]
    assert codes[-1] == 204 and set(codes[:-1]) == {500} and len(codes) >= 3
    assert d["history"][0]["error"] == "HTTP 500"
    assert receiver.duplicates() == []


async def test_a_hanging_receiver_times_out_and_a_redirect_is_not_followed(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver, "message.cancelled")
    receiver.mode, receiver.hang_seconds = "hang", 3.0
    await cancelled_messages(api, 1)

    async def timed_out() -> bool:
        rows = await deliveries(api, hook["id"])
        return bool(rows and rows[0]["history"])

    await wait_for(timed_out, what="a timed-out attempt")
    [d] = await deliveries(api, hook["id"])
    assert "timed out" in d["history"][0]["error"] and d["history"][0]["status_code"] is None
    assert d["history"][0]["duration_ms"] < 2500
    receiver.mode = "redirect"
    await wait_for(lambda: receiver.attempts >= 3, timeout=15, what="a redirected attempt")

    async def redirected() -> bool:
        rows = await deliveries(api, hook["id"])
        return any(a["status_code"] == 307 for a in rows[0]["history"])

    await wait_for(redirected, what="the 307 to be recorded")
    assert receiver.received == []  # the Location was never followed


async def test_a_refusing_receiver_that_comes_back_gets_everything(
    api: httpx.AsyncClient,
) -> None:
    receiver = await Receiver().start()
    hook = await subscribe(api, receiver, "message.cancelled")
    await receiver.stop()  # the port now refuses connections
    ids = await cancelled_messages(api, 3)

    async def refused() -> bool:
        rows = await deliveries(api, hook["id"])
        return any(a["error"] and "Connect" in a["error"] for d in rows for a in d["history"])

    await wait_for(refused, what="refused attempts")
    await receiver.start()  # same port, back again
    try:
        await wait_for(lambda: len(receiver.received) == 3, what="all three after recovery")
        assert sorted(e["data"]["message_id"] for e in receiver.events()) == sorted(ids)
        assert receiver.duplicates() == []
    finally:
        await receiver.stop()


async def test_dead_letter_then_replay_with_the_same_event_id(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver, "message.cancelled")
    receiver.mode = "fail"
    await cancelled_messages(api, 1)

    async def dead() -> list[dict[str, Any]]:
        return await deliveries(api, hook["id"], status="dead")

    await wait_for(lambda: _truthy(dead()), what="the dead letter")
    [d] = await dead()
    assert d["attempts"] == 4 and len(d["history"]) == 4  # 1 + the 3 retries configured
    assert d["next_attempt_at"] is None
    receiver.mode = "ok"
    r = await api.post(f"/webhooks/deliveries/{d['id']}/replay")
    assert r.status_code == 202 and r.json()["status"] == "pending"
    await wait_for(lambda: bool(receiver.received), what="the replayed delivery")
    assert receiver.received[0].event["id"] == d["event_id"] == d["payload"]["id"]
    assert receiver.received[0].headers["x-smsgw-attempt"] == "5"
    [one] = await settled(api, hook["id"])
    assert one["status"] == "succeeded" and one["history"][-1]["status_code"] == 204
    assert (await api.get(f"/webhooks/deliveries/{d['id']}")).json() == one


async def _truthy(value: Any) -> bool:
    return bool(await value)


async def test_an_endpoint_failing_for_long_is_disabled_visibly_and_can_be_re_enabled(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Many retries left: the endpoint is disabled (after 0.5 s) long before any delivery
    # runs out of attempts.
    fast = {**FAST, "webhook_retry_schedule": [0.2] * 30}
    hub = await HubServer(tmp_path / "hub.db", **fast, webhook_disable_after=0.5).start()
    try:
        async with hub.client() as api:
            hook = await subscribe(api, receiver, "message.cancelled")
            receiver.mode = "fail"
            await cancelled_messages(api, 2)

            async def disabled() -> bool:
                return not (await api.get(f"/webhooks/{hook['id']}")).json()["enabled"]

            await wait_for(disabled, what="the endpoint to be disabled")
            off = (await api.get(f"/webhooks/{hook['id']}")).json()
            assert off["disabled_reason"].startswith("disabled by the hub")
            assert off["disabled_at"] and off["failing_since"]
            # Nothing is queued for it while it is off; what waited is kept.
            await cancelled_messages(api, 1)
            rows = await deliveries(api, hook["id"])
            assert len(rows) == 2 and all(d["status"] == "pending" for d in rows)
            receiver.mode = "ok"
            r = await api.patch(f"/webhooks/{hook['id']}", json={"enabled": True})
            assert r.status_code == 200 and r.json()["disabled_reason"] is None
            await wait_for(lambda: len(receiver.received) == 2, what="the waiting deliveries")
    finally:
        await hub.stop()


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver, "message.cancelled")
    old = receiver.secrets[0]
    r = await api.post(f"/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 3600})
    assert r.status_code == 200
    new = r.json()["secret"]
    assert new != old and r.json()["previous_secret_expires_at"]
    assert (await api.get(f"/webhooks/{hook['id']}")).json()["previous_secret_expires_at"]
    receiver.secrets = [new]  # a receiver already on the new secret verifies...
    await cancelled_messages(api, 1)
    await wait_for(lambda: bool(receiver.received), what="a delivery after rotation")
    first = receiver.received[0]
    assert first.signatures == 2
    body = _body(first.event)
    # ...and one still on the old secret would too: the header carries both.
    verify(first.headers["x-smsgw-signature"], body, old)
    verify(first.headers["x-smsgw-signature"], body, new)
    r = await api.post(f"/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 0})
    receiver.secrets = [r.json()["secret"]]
    await cancelled_messages(api, 1)
    await wait_for(lambda: len(receiver.received) == 2, what="a delivery after the grace")
    assert receiver.received[1].signatures == 1


def _body(event: dict[str, Any]) -> bytes:
    import json

    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


async def test_callback_url_gets_that_messages_events_only(
    hub: HubServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.secrets.append((await api.get("/webhooks/callback-secret")).json()["secret"])
    farm = Farm(lambda: hub.url)
    try:
        await farm.add()
        r = await api.post(
            "/sms/dispatch", json={"to": TO, "message": "cb", "callback_url": receiver.url}
        )
        mid = r.json()["message_id"]
        other = await api.post("/sms/dispatch", json={"to": TO, "message": "no callback"})
        assert other.json()["status"] == "SENT"
        msg = (await api.get(f"/sms/{mid}")).json()
        assert msg["callback_url"] == receiver.url
        await wait_for(lambda: len(receiver.received) == 3, what="the callback events")
    finally:
        await farm.close()
    assert {e["data"]["message_id"] for e in receiver.events()} == {mid}
    assert [e["type"] for e in receiver.events()] == [
        "message.queued",
        "message.sent",
        "message.delivered",
    ]


async def test_nothing_is_lost_when_the_hub_is_killed_in_the_middle_of_retries(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Retries spread over seconds, so the kill lands while they are still pending.
    slow = {**FAST, "webhook_retry_schedule": [0.5] * 20}
    hub = await HubProcess(tmp_path / "hub.db", **slow).start()
    try:
        async with hub.client() as api:
            await subscribe(api, receiver, "message.cancelled")
            receiver.mode = "fail"
            ids = await cancelled_messages(api, 5)
            await wait_for(lambda: receiver.attempts >= 5, what="failing attempts")
        hub.kill()  # SIGKILL: no shutdown, retries pending in the database
        receiver.mode = "ok"
        await hub.start(hub.port)
        # Claimed when killed: back once the lease (3 x timeout + 5 s) runs out.
        await wait_for(
            lambda: len(receiver.received) >= 5, timeout=20, what="every event after restart"
        )
        await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
        assert sorted(e["data"]["message_id"] for e in receiver.events()) == sorted(ids)
        assert receiver.duplicates() == []
    finally:
        await hub.stop()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.org/h", "events": ["*"]}, 422),
        ({"url": "not a url", "events": ["*"]}, 422),
        ({"url": "http://127.0.0.1:9/h", "events": ["message.exploded"]}, 422),
        ({"url": "http://127.0.0.1:9/h", "events": []}, 422),
        ({"url": "http://127.0.0.1:9/h"}, 422),
        ({"url": "http://127.0.0.1:9/h", "events": ["*"], "secret": "mine"}, 422),
    ],
)
async def test_bad_webhook_bodies_are_refused(
    api: httpx.AsyncClient, body: dict[str, Any], code: int
) -> None:
    r = await api.post("/webhooks", json=body)
    assert r.status_code == code and r.json()["error"]["code"]
    assert (await api.get("/webhooks")).json()["items"] == []


async def test_unknown_ids_scopes_and_bad_callback_urls(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    for method, path in [
        ("GET", "/webhooks/nope"),
        ("PATCH", "/webhooks/nope"),
        ("DELETE", "/webhooks/nope"),
        ("GET", "/webhooks/nope/deliveries"),
        ("POST", "/webhooks/nope/rotate-secret"),
        ("GET", "/webhooks/deliveries/nope"),
        ("POST", "/webhooks/deliveries/nope/replay"),
    ]:
        r = await api.request(method, path, json={} if method in ("PATCH", "POST") else None)
        assert r.status_code == 404, (method, path, r.text)
    r = await api.post("/webhooks", content=b"{not json", headers={"Content-Type": "x"})
    assert r.status_code == 400
    key = (await api.post("/keys", json={"name": "s", "scopes": ["send", "read"]})).json()
    async with hub.client(key["key"]) as limited:
        assert (await limited.get("/webhooks")).status_code == 403
        assert (await limited.get("/webhooks/callback-secret")).status_code == 403
    r = await api.post(
        "/sms/dispatch", json={"to": TO, "message": "x", "callback_url": "javascript:alert(1)"}
    )
    assert r.status_code == 422
    hook = (
        await api.post("/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["*"]})
    ).json()
    r = await api.patch(f"/webhooks/{hook['id']}", json={"events": None})
    assert r.status_code == 422
    r = await api.get(f"/webhooks/{hook['id']}/deliveries", params={"cursor": "garbage"})
    assert r.status_code == 422
    assert "secret" not in (await api.get(f"/webhooks/{hook['id']}")).json()


async def test_an_event_goes_out_at_once_not_at_the_next_poll(
    tmp_path: Path, receiver: Receiver
) -> None:
    hub = await HubServer(tmp_path / "hub.db", **{**FAST, "webhook_poll_interval": 60}).start()
    try:
        async with hub.client() as api:
            await subscribe(api, receiver, "message.cancelled")
            await asyncio.sleep(0.2)  # the worker's first round has passed
            await cancelled_messages(api, 1)
            # The store's commit wakes the worker; a poll would take a minute.
            await wait_for(lambda: bool(receiver.received), timeout=5, what="the event")
    finally:
        await hub.stop()
