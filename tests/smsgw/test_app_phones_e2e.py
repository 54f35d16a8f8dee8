"""Phones running the stock "SMS Gateway for Android" app, end to end: a real hub under
uvicorn, driven by ``tests/fakes/smsgate_app.py`` (the app's requests as its source makes
them) alone and next to WebSocket phones.

Registration and re-registration, offers pushed over the event stream and claimed by the
pull, failover both ways between app phones and agents, state reports up to DELIVERED,
pinned messages waiting for a phone without a stream, cancellation, received SMS through
the hub's own signed webhook, and the bad input of every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from smsgw import app_session
from smsgw.app_phones import issue_app_token
from smsgw.clock import utcnow
from tests.app_farm import MOBILE, Apps, app_token
from tests.fakes.push_relay import PushRelay
from tests.fakes.smsgate_app import APP_EVENTS, FakeApp, gson
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.receiver import Receiver

TO = "+12025550999"
APP_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def message(api: httpx.AsyncClient, mid: str) -> dict[str, Any]:
    r = await api.get(f"/sms/{mid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def status_is(api: httpx.AsyncClient, mid: str, status: str) -> None:
    async def reached() -> bool:
        return (await message(api, mid))["status"] == status

    await wait_for(reached, what=f"{mid} {status}")


def device_headers(app: FakeApp) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.token}", "Content-Type": "application/json"}


# -- registration ---------------------------------------------------------------------------


async def test_app_tokens_are_shown_once_listed_and_revoked(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    forever = await app_token(api, name="office")
    assert forever["token"].startswith("apt_") and forever["expires_at"] is None
    timed = await app_token(api, ttl_seconds=3600)
    assert timed["expires_at"] is not None and timed["name"] is None
    listed = (await api.get("/devices/app-tokens")).json()["items"]
    assert [t["id"] for t in listed] == [forever["id"], timed["id"]]
    assert all("token" not in t for t in listed)  # shown once, at creation
    assert listed[0]["name"] == "office" and listed[0]["last_used_at"] is None
    assert (await api.delete(f"/devices/app-tokens/{timed['id']}")).status_code == 204
    assert (await api.delete(f"/devices/app-tokens/{timed['id']}")).status_code == 404
    listed = (await api.get("/devices/app-tokens")).json()["items"]
    assert [t["id"] for t in listed] == [forever["id"]]
    # Admin only, and bad bodies refused whole.
    async with hub.client(key=None) as anonymous:
        assert (await anonymous.post("/devices/app-tokens", json={})).status_code == 401
    for bad in ({"ttl_seconds": 0}, {"ttl_seconds": "60"}, {"ttl_seconds": 1.5}, {"name": 7}):
        r = await api.post("/devices/app-tokens", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    r = await api.post(
        "/devices/app-tokens", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert len((await api.get("/devices/app-tokens")).json()["items"]) == 1


async def test_registration_needs_a_live_token_or_code(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    body = {"name": "Google/sdk", "simCards": []}
    url = hub.url + MOBILE + "/device"
    revoked = await app_token(api)
    await api.delete(f"/devices/app-tokens/{revoked['id']}")
    expired = await issue_app_token(hub.hub, "old", 60, utcnow() - timedelta(seconds=120))
    async with httpx.AsyncClient() as c:
        for auth in (
            None,
            "Bearer",
            "Bearer apt_nonsense",
            f"Bearer {revoked['token']}",
            f"Bearer {expired.token}",
            f"Bearer {ADMIN_KEY}",  # an API key is not an app token
            "Basic " + base64.b64encode(b"admin:" + ADMIN_KEY.encode()).decode(),
            "Code 000000",
        ):
            headers = {"Authorization": auth} if auth else {}
            r = await c.post(url, json=body, headers=headers)
            assert r.status_code == 401, (auth, r.text)
            assert r.json()["error"]["code"] in ("unauthorized", "invalid_enrollment_code")
    assert (await api.get("/devices/")).json()["items"] == []
    # A live token registers, and again (it is reusable); each registration is a new phone.
    first = await apps.add(start=False)
    assert (await first.register()).status_code == 201
    again = await apps.add(start=False)
    assert (await again.register()).status_code == 201
    assert first.device_id != again.device_id and first.login == first.device_id
    assert first.password is None  # the login grants nothing: there is no password
    assert first.token is not None and first.token.startswith("dev_")
    tokens = (await api.get("/devices/app-tokens")).json()["items"]
    assert tokens[0]["last_used_at"] is not None


async def test_an_enrollment_code_registers_once(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    code = (await api.post("/devices/enrollment-codes", json={})).json()["code"]
    app = await apps.add(code=code)
    assert app.device_id is not None
    other = await apps.add(code=code, start=False)
    r = await other.register()
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_enrollment_code"


async def test_user_code_for_another_phone_needs_an_admin_key(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    url = hub.url + MOBILE + "/user/code"

    def basic(secret: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"x:{secret}".encode()).decode()}

    async with httpx.AsyncClient() as c:
        for headers in ({}, basic("wrong"), {"Authorization": "Basic !!!"}):
            assert (await c.get(url, headers=headers)).status_code == 401
        r = await c.get(url, headers=basic(ADMIN_KEY))
    assert r.status_code == 200, r.text
    found = r.json()
    assert APP_DATE.match(found["validUntil"])
    app = await apps.add(code=found["code"])
    assert app.device_id is not None


async def test_an_app_phone_is_a_device_like_any_other(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    agent = await farm.add(name="agent")
    app = await apps.add(name="Google/pixel")
    devices = {d["id"]: d for d in (await api.get("/devices/")).json()["items"]}
    mine = devices[app.device_id]
    assert mine["kind"] == "app" and devices[agent.device_id]["kind"] == "agent"
    assert mine["name"] == "Google/pixel" and mine["online"] is True
    assert mine["sims"] == [{"slot": 0, "number": "********1234", "carrier": "****"}]
    assert mine["battery"] is None and mine["signal"] is None  # the app does not say
    assert mine["last_seen"] is not None and mine["sent_today"] == 0
    r = await api.patch(f"/devices/{app.device_id}", json={"name": "desk", "daily_quota": 5})
    assert r.status_code == 200 and r.json()["daily_quota"] == 5 and r.json()["kind"] == "app"
    # Its SIM cards change at the next app start (PATCH /device).
    app.sim_cards.append({"slotIndex": 1, "simNumber": 2})
    await app.drop_stream()
    await app.start()
    sims = (await api.get(f"/devices/{app.device_id}")).json()["sims"]
    assert [s["slot"] for s in sims] == [0, 1]
    # GET /device: its address, and with its token the phone.
    async with httpx.AsyncClient() as c:
        r = await c.get(hub.url + MOBILE + "/device", headers=device_headers(app))
        assert r.json()["externalIp"] == "127.0.0.1" and r.json()["device"]["id"] == app.device_id
        assert APP_DATE.match(r.json()["device"]["createdAt"])
        r = await c.patch(
            hub.url + MOBILE + "/device",
            json={"id": agent.device_id, "simCards": []},
            headers=device_headers(app),
        )
        assert r.status_code == 403  # not its own id
        r = await c.get(
            hub.url + MOBILE + "/message", headers={"Authorization": f"Bearer {agent.token}"}
        )
        assert r.status_code == 401  # an agent's token is not an app phone's


async def test_a_removed_app_phone_loses_its_stream_and_registers_again(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add()
    old = app.device_id
    assert (await api.delete(f"/devices/{old}")).status_code == 204

    async def stream_ended() -> bool:
        return app._stream is not None and app._stream.done()

    await wait_for(stream_ended, what="the stream closed by the removal")
    async with httpx.AsyncClient() as c:
        for method, path in (("GET", "message"), ("GET", "settings"), ("GET", "events")):
            r = await c.request(method, f"{hub.url}{MOBILE}/{path}", headers=device_headers(app))
            assert r.status_code == 401, (path, r.text)
    await app.start()  # PATCH /device answers 401: the app registers again
    assert app.registrations == 2 and app.device_id != old
    devices = (await api.get("/devices/")).json()["items"]
    assert [d["id"] for d in devices] == [app.device_id] and devices[0]["online"]


async def test_a_server_url_typed_with_a_trailing_slash_works(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(base=hub.url + MOBILE + "/")  # every path gets "//"
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "slash"})
    assert r.json()["status"] == "SENT" and r.json()["device_id"] == app.device_id


# -- sending ---------------------------------------------------------------------------------


async def test_dispatch_through_an_app_phone_reaches_sent_then_delivered(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add()
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "code <4821> & more"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "SENT" and body["device_id"] == app.device_id
    mid = body["message_id"]
    assert app.local[mid].text == "code <4821> & more"
    assert app.local[mid].phone_numbers == [TO]
    assert APP_DATE.match(app.local[mid].valid_until or "")
    await status_is(api, mid, "DELIVERED")
    msg = await message(api, mid)
    assert [(a["device_id"], a["outcome"]) for a in msg["attempts"]] == [(app.device_id, "sent")]
    assert "MessageEnqueued" in app.events
    devices = (await api.get("/devices/")).json()["items"]
    assert devices[0]["sent_today"] == 1
    # A later pull returns nothing: the phone took it in hand (Processed).
    assert await app.pull() == []


async def test_a_pulled_message_is_returned_again_until_the_phone_reports(
    api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "hold", "device_id": app.device_id, "wait": False}
    )
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in app.local, what="the pull")
    await status_is(api, mid, "QUEUED")  # the pull was the accept
    again = await app.pull()
    assert [i["id"] for i in again] == [mid]  # the app drops the duplicate by id
    item = again[0]
    assert item["phoneNumbers"] == [TO] and item["textMessage"] == {"text": "hold"}
    assert APP_DATE.match(item["createdAt"]) and APP_DATE.match(item["validUntil"])
    assert "ttl" not in item
    await app.send_pending()
    await status_is(api, mid, "DELIVERED")
    assert await app.pull() == []


async def test_failover_from_an_app_that_does_not_pull_to_an_agent(
    api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    deaf = await apps.add(ignore_enqueued=True)  # healthy-looking, best ranked
    agent = await farm.add(signal=1, deliver=False)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "over"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "SENT" and r.json()["device_id"] == agent.device_id
    mid = r.json()["message_id"]
    msg = await message(api, mid)
    assert [(a["device_id"], a["outcome"]) for a in msg["attempts"]] == [
        (deaf.device_id, "timeout"),
        (agent.device_id, "sent"),
    ]
    # Its late pull gets nothing: the offer is over, the message is the agent's.
    assert await deaf.pull() == []
    assert (await message(api, mid))["device_id"] == agent.device_id
    assert agent.transmitted_ids == [mid]


async def test_failover_from_an_agent_that_never_accepts_to_an_app(
    api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    mute = await farm.add(never_accept=True, signal=4, battery=100, charging=True)
    app = await apps.add(deliver=False)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "over"})
    assert r.json()["status"] == "SENT", r.text
    assert r.json()["device_id"] == app.device_id
    attempts = (await message(api, r.json()["message_id"]))["attempts"]
    assert [a["device_id"] for a in attempts] == [mute.device_id, app.device_id]


async def test_a_failed_report_is_final(api: httpx.AsyncClient, apps: Apps, farm: Farm) -> None:
    error = "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"
    app = await apps.add(fail_with=error)
    agent = await farm.add(signal=1)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x"})
    body = r.json()
    assert body["status"] == "FAILED" and body["device_id"] == app.device_id, body
    msg = await message(api, body["message_id"])
    assert msg["error_code"] == "error_generic_failure" and msg["error"] == error
    await asyncio.sleep(0.5)  # an outbox round or two: nobody else gets it
    assert agent.transmitted_ids == []
    assert (await message(api, body["message_id"]))["status"] == "FAILED"


async def test_app_phones_and_agents_share_a_burst_with_no_message_owned_twice(
    api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    app_phones = [await apps.add(deliver=False) for _ in range(2)]
    agents = [await farm.add(deliver=False) for _ in range(2)]
    results = await asyncio.gather(
        *(
            api.post("/sms/dispatch", json={"to": f"+1202555{i:04d}", "message": f"m{i}"})
            for i in range(24)
        )
    )
    ids = [r.json()["message_id"] for r in results]
    assert all(r.json()["status"] == "SENT" for r in results), [r.json() for r in results]
    by_app = {a.device_id: set(a.local) for a in app_phones}
    by_agent = {p.device_id: set(p.transmitted_ids) for p in agents}
    owners: dict[str, list[str]] = {}
    for device, held in {**by_app, **by_agent}.items():
        for mid in held:
            owners.setdefault(mid, []).append(device)
    assert sorted(owners) == sorted(ids)
    assert all(len(o) == 1 for o in owners.values()), owners
    for r in results:
        assert owners[r.json()["message_id"]] == [r.json()["device_id"]]
    assert all(by_app.values()) and all(by_agent.values())  # everyone took a share


async def test_pinned_messages_wait_for_a_phone_without_a_stream(
    api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    app = await apps.add(sse=False)  # registered, polling on its own schedule
    agent = await farm.add()
    devices = {d["id"]: d for d in (await api.get("/devices/")).json()["items"]}
    assert devices[app.device_id]["online"] is False
    pinned = [
        (
            await api.post(
                "/sms/send",
                json={"to": TO, "message": f"p{i}", "device_id": app.device_id, "wait": False},
            )
        ).json()["message_id"]
        for i in range(3)
    ]
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "free", "wait": False})
    free = r.json()["message_id"]
    await status_is(api, free, "DELIVERED")  # the agent took the unpinned one
    await asyncio.sleep(0.5)
    for mid in pinned:
        assert (await message(api, mid))["status"] == "PENDING"
    assert set(agent.transmitted_ids) == {free}
    await app.pull_and_send()  # the 15-minute pull
    for mid in pinned:
        await status_is(api, mid, "DELIVERED")
        assert (await message(api, mid))["device_id"] == app.device_id
    # A send that waits for it gets the message's state at its deadline: still PENDING.
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "now", "device_id": app.device_id, "wait": False}
    )
    assert r.status_code == 202 and r.json()["status"] == "PENDING", r.text


@pytest.mark.hub_settings(max_in_flight=2, default_daily_quota=3)
async def test_a_pull_without_a_stream_respects_in_flight_and_quota(
    api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(sse=False, auto_send=False)
    ids = [
        (
            await api.post(
                "/sms/send",
                json={"to": TO, "message": f"q{i}", "device_id": app.device_id, "wait": False},
            )
        ).json()["message_id"]
        for i in range(5)
    ]
    assert len(await app.pull()) == 2  # its in-flight limit
    assert len(await app.pull()) == 2  # the same two: what it holds counts
    await app.send_pending()
    assert len(await app.pull()) == 1  # 2 sent today, a quota of 3
    await app.send_pending()
    assert await app.pull() == []
    statuses = [(await message(api, mid))["status"] for mid in ids]
    assert sorted(statuses) == ["DELIVERED"] * 3 + ["PENDING"] * 2


async def test_cancelling_before_the_pull_withdraws_the_message(
    api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(sse=False)
    pinned = {"to": TO, "device_id": app.device_id, "wait": False}
    r = await api.post("/sms/send", json={**pinned, "message": "no"})
    mid = r.json()["message_id"]
    r = await api.delete(f"/sms/{mid}")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    assert await app.pull() == []
    # Once the phone owns a message it is too late, as for every phone.
    r = await api.post("/sms/send", json={**pinned, "message": "yes"})
    mid = r.json()["message_id"]
    app.auto_send = False
    await app.pull()
    r = await api.delete(f"/sms/{mid}")
    assert r.status_code == 409, r.text


async def test_a_stream_dropped_mid_offer_fails_over(
    api: httpx.AsyncClient, apps: Apps, farm: Farm
) -> None:
    agent = await farm.add(signal=1, deliver=False)
    app = await apps.add(ignore_enqueued=True)
    task = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "drop"}))
    await wait_for(lambda: "MessageEnqueued" in app.events, what="the offer")
    await app.drop_stream()
    r = await task
    assert r.json()["status"] == "SENT" and r.json()["device_id"] == agent.device_id, r.text
    attempts = (await message(api, r.json()["message_id"]))["attempts"]
    assert [a["outcome"] for a in attempts] == ["disconnected", "sent"]
    assert await app.pull() == []  # its pull after the drop gets nothing


async def test_the_hub_restarted_while_an_app_holds_messages(
    tmp_path: Path, api: httpx.AsyncClient, hub: HubServer
) -> None:
    token = (await app_token(api))["token"]
    app = FakeApp(hub.url + MOBILE, token, auto_send=False)
    try:
        await app.start()
        ids = [
            (
                await api.post("/sms/dispatch", json={"to": TO, "message": f"r{i}", "wait": False})
            ).json()["message_id"]
            for i in range(2)
        ]
        await wait_for(lambda: len(app.local) == 2, what="both pulled")
        await app.drop_stream()
        await hub.stop()
        await hub.start()
        app.base = hub.url + MOBILE
        async with hub.client() as c:
            for mid in ids:
                m = (await c.get(f"/sms/{mid}")).json()
                assert m["status"] == "QUEUED" and m["device_id"] == app.device_id
            await app.start()  # PATCH /device, its syncs, a new stream
            assert app.registrations == 1
            assert {i["id"] for i in await app.pull()} == set(ids)  # still its own
            await app.send_pending()
            for mid in ids:

                async def delivered(mid: str = mid) -> bool:
                    return (await c.get(f"/sms/{mid}")).json()["status"] == "DELIVERED"

                await wait_for(delivered, what="DELIVERED after the restart")
    finally:
        await app.close()


# -- state reports ------------------------------------------------------------------------


async def test_state_reports_only_move_forward_and_only_from_the_owner(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    other = await apps.add(auto_send=False)
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "m", "device_id": app.device_id, "wait": False}
    )
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in app.local, what="the pull")
    msg = app.local[mid]
    # Another phone's report about it changes nothing, and is answered 204 as the app needs.
    other.local[mid] = msg
    await other.set_state(msg, "Delivered")
    assert (await message(api, mid))["status"] == "QUEUED"
    # Delivered overtaking Sent counts as sent; the late Sent changes nothing.
    await app.set_state(msg, "Delivered")
    await status_is(api, mid, "DELIVERED")
    await app.set_state(msg, "Sent")
    await app.set_state(msg, "Processed")
    await app.set_state(msg, "Failed", error="late")
    await app.report(msg)  # a duplicate
    found = await message(api, mid)
    assert found["status"] == "DELIVERED" and found["error"] is None
    assert found["sent_at"] is not None
    # Unknown ids are ignored with a 204 (the spec's answer).
    async with httpx.AsyncClient() as c:
        item = {"id": "nope", "state": "Sent", "recipients": [{"phoneNumber": TO, "state": "Sent"}]}
        r = await c.patch(
            f"{hub.url}{MOBILE}/message", content=gson([item]), headers=device_headers(app)
        )
        assert r.status_code == 204


async def test_a_mix_of_good_and_malformed_reports_is_refused_whole(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "m", "device_id": app.device_id, "wait": False}
    )
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in app.local, what="the pull")
    good = {"id": mid, "state": "Sent", "recipients": [{"phoneNumber": TO, "state": "Sent"}]}
    bad = {"id": mid, "state": "Exploded", "recipients": [{"phoneNumber": TO, "state": "Sent"}]}
    r = await httpx.AsyncClient().patch(
        f"{hub.url}{MOBILE}/message", content=gson([good, bad]), headers=device_headers(app)
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert (await message(api, mid))["status"] == "QUEUED"  # nothing half-applied


async def test_every_mobile_call_refuses_bad_input_cleanly(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(auto_send=False)
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "m", "device_id": app.device_id, "wait": False}
    )
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in app.local, what="the pull")
    recipients = [{"phoneNumber": TO, "state": "Sent"}]
    cases: list[tuple[str, str, bytes, int]] = [
        ("PATCH", "message", b"{not json", 400),
        ("PATCH", "message", b'{"id": "x"}', 400),  # not an array
        ("PATCH", "message", gson([{"id": mid, "state": "Sent"}]), 400),  # no recipients
        ("PATCH", "message", gson([{"id": mid, "state": 3, "recipients": recipients}]), 400),
        ("PATCH", "message", gson([{"id": 5, "state": "Sent", "recipients": recipients}]), 400),
        (
            "PATCH",
            "message",
            gson([{"id": mid, "state": "Sent", "recipients": recipients, "states": {"Sent": "x"}}]),
            400,
        ),
        (
            "PATCH",
            "message",
            gson([{"id": "x" * 37, "state": "Sent", "recipients": recipients}]),
            400,
        ),
        ("PATCH", "message", b"[" + b" " * (2 * 1024 * 1024) + b"]", 413),
        ("PATCH", "device", b"[]", 400),
        ("PATCH", "device", gson({"id": app.device_id, "simCards": [{"slotIndex": "a"}]}), 400),
        ("POST", "device", b"nope", 401),  # no credential is checked first
    ]
    async with httpx.AsyncClient() as c:
        for method, path, content, status in cases:
            r = await c.request(
                method, f"{hub.url}{MOBILE}/{path}", content=content, headers=device_headers(app)
            )
            assert r.status_code == status, (path, content[:80], r.text)
            assert set(r.json()) == {"error"} and r.json()["error"]["message"]
        token = await apps.token()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for content in (b"{", b"[]", gson({"name": ""}), gson({"name": "x", "simCards": "no"})):
            r = await c.post(f"{hub.url}{MOBILE}/device", content=content, headers=auth)
            assert r.status_code == 400, (content, r.text)
        r = await c.get(f"{hub.url}{MOBILE}/message?order=sideways", headers=device_headers(app))
        assert r.status_code == 400
    assert (await message(api, mid))["status"] == "QUEUED"
    assert len((await api.get("/devices/")).json()["items"]) == 1  # no half-registered phone


# -- settings, webhooks and received SMS -------------------------------------------------


@pytest.mark.hub_settings(app_ping_interval=60, app_webhooks_internet_required=False)
async def test_settings_and_webhooks_the_phone_syncs(hub: HubServer, apps: Apps) -> None:
    app = await apps.add()
    webhooks = app.settings["webhooks"]
    assert len(webhooks["signing_key"]) >= 16 and webhooks["internet_required"] is False
    assert app.settings["ping"] == {"interval_seconds": 60}
    assert "gateway" not in app.settings  # never reconfigures the app's server
    assert app.signing_key == webhooks["signing_key"]
    assert [h["event"] for h in app.webhooks] == ["sms:received"]
    assert all(h["event"] in APP_EVENTS for h in app.webhooks)
    assert app.webhooks[0]["url"].startswith(hub.url + MOBILE + "/webhooks/")
    other = await apps.add()
    assert other.signing_key != app.signing_key
    assert other.webhooks[0]["url"] != app.webhooks[0]["url"]


async def test_received_sms_arrive_once_signed_and_as_ordinary_inbound(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    receiver = await Receiver().start()
    try:
        hook = await api.post("/webhooks", json={"url": receiver.url, "events": ["sms.received"]})
        receiver.secrets.append(hook.json()["secret"])
        app = await apps.add()
        answers = await app.receive_sms("+12025550123", "hello <there> & 'you'")
        assert [a.status_code for a in answers] == [204]
        items = (await api.get("/sms/inbound")).json()["items"]
        assert len(items) == 1
        got = items[0]
        assert got["from"] == "+12025550123" and got["body"] == "hello <there> & 'you'"
        assert got["device_id"] == app.device_id and got["sim_slot"] == 0
        await wait_for(lambda: bool(receiver.received), what="sms.received")
        assert receiver.received[0].event["type"] == "sms.received"
        # A retry of the same envelope is answered 2xx and stored once.
        hook_url = app.webhooks[0]["url"]
        envelope = app.envelope("+12025550124", "once", app.webhooks[0])
        assert (await app.post_webhook(hook_url, envelope)).status_code == 204
        assert (await app.post_webhook(hook_url, envelope)).status_code == 204
        items = (await api.get("/sms/inbound")).json()["items"]
        assert sorted(i["body"] for i in items) == ["hello <there> & 'you'", "once"]
        # Forged: another key, another phone's path, a made-up path, no headers, bad body.
        fresh = app.envelope("+12025550125", "forged", app.webhooks[0])
        r = await app.post_webhook(hook_url, fresh, key="not-the-key")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"
        forged_path = hook_url.rsplit(".", 1)[0] + ".0123456789abcdef0123456789abcdef"
        assert (await app.post_webhook(forged_path, fresh)).status_code == 401
        assert (await app.post_webhook(hub.url + MOBILE + "/webhooks/x", fresh)).status_code == 401
        async with httpx.AsyncClient() as c:
            r = await c.post(hook_url, content=gson(fresh))
            assert r.status_code == 401
            stamp = "1767254400"
            from smsgw.appwire import sign

            body = b'{"id": "x", "event": "sms:received", "payload": {"message": 5}}'
            r = await c.post(
                hook_url,
                content=body,
                headers={"X-Timestamp": stamp, "X-Signature": sign(app.signing_key, body, stamp)},
            )
            assert r.status_code == 400, r.text
        assert len((await api.get("/sms/inbound")).json()["items"]) == 2
        # STOP through an app phone opts the sender out.
        await app.receive_sms("+12025550126", "STOP")

        async def opted_out() -> bool:
            items = (await api.get("/opt-outs")).json()["items"]
            return "+12025550126" in [i["number"] for i in items]

        await wait_for(opted_out, what="opt-out from STOP")
    finally:
        await receiver.stop()


# -- the event stream ------------------------------------------------------------------------


async def test_the_event_stream_is_framed_as_the_app_reads_it(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_session, "KEEPALIVE_SECONDS", 0.2)
    app = await apps.add(start=False)
    await app.register()
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=10) as c,
        c.stream(
            "GET", f"{hub.url}{MOBILE}/events", headers={"Authorization": f"Bearer {app.token}"}
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"

        async def online() -> bool:
            devices = (await api.get("/devices/")).json()["items"]
            return bool(devices[0]["online"])

        await wait_for(online, what="online while the stream is open")
        await api.post("/sms/dispatch", json={"to": TO, "message": "x", "wait": False})
        async for line in r.aiter_lines():
            lines.append(line)
            if "event: MessageEnqueued" in lines and ":keepalive" in lines:
                break
    at = lines.index("event: MessageEnqueued")
    assert lines[at + 1] == "data: null" and lines[at + 2] == ""

    async def offline() -> bool:
        return not (await api.get("/devices/")).json()["items"][0]["online"]

    await wait_for(offline, what="offline when the stream ends")


async def test_a_second_stream_replaces_the_first(hub: HubServer, apps: Apps) -> None:
    app = await apps.add()
    first = app._stream
    twin = FakeApp(hub.url + MOBILE)
    twin.device_id, twin.token = app.device_id, app.token
    try:
        await twin.start()  # the same phone, reconnected (the old socket half-open)
        assert first is not None
        await wait_for(first.done, what="the old stream closed")
        assert json.dumps(app.events)  # it got no offers after being replaced
    finally:
        await twin.close()


# -- phones in FCM mode, woken through the push relay ---------------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[PushRelay]:
    r = await PushRelay().start()
    yield r
    await r.stop()


async def test_the_relay_is_off_by_default(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    app = await apps.add(sse=False, push_token="fcm-token-1")
    assert hub.hub.waker.relay is None
    r = await api.post(
        "/sms/send", json={"to": TO, "message": "m", "device_id": app.device_id, "wait": False}
    )
    assert r.status_code == 202  # the message waits for the phone's own pull
    await app.pull_and_send()
    await status_is(api, r.json()["message_id"], "DELIVERED")


async def test_a_phone_in_fcm_mode_is_woken_through_the_relay(
    tmp_path: Path, relay: PushRelay
) -> None:
    hub = await HubServer(
        tmp_path / "hub.db", app_push_relay_url=relay.url, app_push_relay_interval=0.3
    ).start()
    apps = Apps(hub, hub.client())
    try:
        app = await apps.add(sse=False, push_token="fcm-token-1")  # AUTO mode with FCM
        other = await apps.add(sse=False, push_token="fcm-token-2")
        woken = asyncio.Event()

        def deliver(item: dict[str, Any]) -> None:  # what FCM would do with it
            if item["token"] == "fcm-token-1" and item["event"] == "MessageEnqueued":
                woken.set()

        relay.on_push = deliver
        ids = []
        for i in range(3):  # a burst: one push for the phone, not three
            r = await apps.api.post(
                "/sms/send",
                json={"to": TO, "message": f"w{i}", "device_id": app.device_id, "wait": False},
            )
            ids.append(r.json()["message_id"])
        await asyncio.wait_for(woken.wait(), 10)
        await app.pull_and_send()  # the woken app pulls
        for mid in ids:
            await status_is(apps.api, mid, "DELIVERED")
        assert [p["token"] for p in relay.pushes] == ["fcm-token-1"]
        assert relay.pushes[0] == {"token": "fcm-token-1", "event": "MessageEnqueued", "data": None}
        assert relay.headers[0]["content-type"] == "application/json"
        # Routed work is not a reason to wake it: without a stream it takes only its own.
        r = await apps.api.post("/sms/dispatch", json={"to": TO, "message": "any", "wait": False})
        await asyncio.sleep(1.0)
        assert [p["token"] for p in relay.pushes] == ["fcm-token-1"]
        assert (await message(apps.api, r.json()["message_id"]))["status"] == "PENDING"
        assert other.local == {}
    finally:
        await apps.close()
        await apps.api.aclose()
        await hub.stop()


async def test_a_failing_relay_never_holds_up_a_dispatch(tmp_path: Path, relay: PushRelay) -> None:
    relay.status = 500
    hub = await HubServer(
        tmp_path / "hub.db", app_push_relay_url=relay.url, app_push_relay_interval=0.2
    ).start()
    apps = Apps(hub, hub.client())
    farm = Farm(lambda: hub.url)
    try:
        app = await apps.add(sse=False, push_token="fcm-token-1")
        agent = await farm.add(deliver=False)
        r = await apps.api.post(
            "/sms/send", json={"to": TO, "message": "p", "device_id": app.device_id, "wait": False}
        )
        pinned = r.json()["message_id"]
        await wait_for(lambda: len(relay.rejected) >= 3, what="three failed rounds")
        r = await apps.api.post("/sms/dispatch", json={"to": TO, "message": "routed"})
        assert r.json()["status"] == "SENT" and r.json()["device_id"] == agent.device_id
        # After three failed rounds the token rests: no more tries for it for a while.
        tries = len(relay.requests)
        await asyncio.sleep(1.0)
        assert len(relay.requests) == tries
        assert (await message(apps.api, pinned))["status"] == "PENDING"  # waits for a pull
        await app.pull_and_send()
        await status_is(apps.api, pinned, "DELIVERED")
    finally:
        await farm.close()
        await apps.close()
        await apps.api.aclose()
        await hub.stop()


async def test_the_stream_raises_device_online_and_offline(
    api: httpx.AsyncClient, apps: Apps
) -> None:
    receiver = await Receiver().start()
    try:
        hook = await api.post(
            "/webhooks", json={"url": receiver.url, "events": ["device.online", "device.offline"]}
        )
        receiver.secrets.append(hook.json()["secret"])
        app = await apps.add()
        await wait_for(lambda: bool(receiver.events("device.online")), what="device.online")
        online = receiver.events("device.online")[0]["data"]
        assert online["device_id"] == app.device_id and online["online"] is True
        await app.drop_stream()
        await wait_for(lambda: bool(receiver.events("device.offline")), what="device.offline")
        assert receiver.events("device.offline")[0]["data"]["device_id"] == app.device_id
        assert len(receiver.events("device.online")) == 1  # the pulls are not "online"
    finally:
        await receiver.stop()
