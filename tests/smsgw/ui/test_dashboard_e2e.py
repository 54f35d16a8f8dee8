"""The dashboard over real HTTP against a real hub and simulated phones: sign-in and its
sessions, CSRF, scopes as in the API, every page, the actions, the live grid's stream,
and pages that stay one page with thousands of messages and hundreds of phones."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from android_client.enroll import enroll
from smsgw.clock import new_id, utcnow
from smsgw.store import Status
from tests.builders import new_message
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.receiver import Receiver
from tests.smsgw.ui.dash import csrf_of, post_form, sign_in

TO = "+12025550123"
pytestmark = pytest.mark.hub_settings(
    webhook_poll_interval=0.05, webhook_retry_schedule=[0.2], webhook_timeout=1.0
)


async def make_key(api: httpx.AsyncClient, *scopes: str) -> tuple[str, str]:
    r = await api.post("/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


@pytest.fixture
async def admin(hub: HubServer) -> AsyncIterator[httpx.AsyncClient]:
    client = await sign_in(hub, ADMIN_KEY)
    yield client
    await client.aclose()


# -- sign-in and sessions ------------------------------------------------------------------


async def test_pages_need_a_session_and_a_wrong_key_is_refused(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as anon:
        r = await anon.get("/ui/phones")
        assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in?next=/ui/phones"
        assert (await anon.post("/ui/send", data={"to": TO})).status_code == 401
        page = await anon.get("/ui/sign-in")
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        wrong = await anon.post(
            "/ui/sign-in", data={"csrf": csrf_of(page.text), "key": "sk_000000000000_nope"}
        )
        assert wrong.status_code == 401 and "invalid or revoked API key" in wrong.text
        assert "smsgw_session" not in anon.cookies
        # The sign-in form itself needs its token (a login CSRF), bound to its cookie.
        forged = await anon.post("/ui/sign-in", data={"csrf": "x" * 43, "key": ADMIN_KEY})
        assert forged.status_code == 403 and "smsgw_session" not in anon.cookies
    async with httpx.AsyncClient(base_url=hub.url) as other:
        # A token lifted from someone else's form is no good without their cookie.
        r = await other.post("/ui/sign-in", data={"csrf": csrf_of(page.text), "key": ADMIN_KEY})
        assert r.status_code == 403


async def test_sign_in_sets_a_strict_session_cookie_and_redirects_only_inside(
    hub: HubServer,
) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as c:
        page = await c.get("/ui/sign-in?next=https://evil.example/ui/x")
        r = await c.post(
            "/ui/sign-in",
            data={"csrf": csrf_of(page.text), "key": ADMIN_KEY, "next": "//evil.example/"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("smsgw_session=")
        assert all(a in cookie.lower() for a in ("httponly", "samesite=strict", "max-age="))
        assert "secure" not in cookie.lower()  # plain HTTP here
        page = await c.get("/ui/")
        assert page.status_code == 200 and "SMSGW_ADMIN_KEY" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        # Behind a TLS proxy the cookie is Secure.
        page = await c.get("/ui/sign-in")
        r = await c.post(
            "/ui/sign-in",
            data={"csrf": csrf_of(page.text), "key": ADMIN_KEY},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert "secure" in r.headers["set-cookie"].lower()


async def test_sign_out_ends_the_session_on_the_server(hub: HubServer) -> None:
    client = await sign_in(hub, ADMIN_KEY)
    copied = dict(client.cookies)
    r = await post_form(client, "/ui/", "/ui/sign-out")
    assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
    await client.aclose()
    async with httpx.AsyncClient(base_url=hub.url, cookies=copied) as thief:
        assert (await thief.get("/ui/")).status_code == 303  # the copy no longer works


async def test_revoking_the_key_ends_its_sessions(hub: HubServer, api: httpx.AsyncClient) -> None:
    secret, key_id = await make_key(api, "read")
    client = await sign_in(hub, secret)
    assert (await client.get("/ui/phones")).status_code == 200
    assert (await api.delete(f"/keys/{key_id}")).status_code == 204
    assert (await client.get("/ui/phones")).status_code == 303
    await client.aclose()
    # Signing in with a revoked key fails as in the API.
    await (await sign_in(hub, secret, expect=401)).aclose()


async def test_a_forged_or_tampered_cookie_is_no_session(hub: HubServer) -> None:
    client = await sign_in(hub, ADMIN_KEY)
    value = client.cookies["smsgw_session"]
    session_id, _, mac = value.rpartition(".")
    for bad in (f"{session_id}.{'A' * len(mac)}", f"{'B' * len(session_id)}.{mac}", "x", ""):
        async with httpx.AsyncClient(base_url=hub.url, cookies={"smsgw_session": bad}) as c:
            assert (await c.get("/ui/")).status_code == 303, bad
    await client.aclose()


@pytest.mark.hub_settings(ui_session_ttl=1.0)
async def test_a_session_expires(hub: HubServer) -> None:
    client = await sign_in(hub, ADMIN_KEY)
    assert (await client.get("/ui/")).status_code == 200
    await asyncio.sleep(1.3)
    assert (await client.get("/ui/")).status_code == 303
    await client.aclose()


async def test_a_new_admin_key_in_the_environment_ends_the_old_ones_sessions(
    hub: HubServer,
) -> None:
    client = await sign_in(hub, ADMIN_KEY)
    hub.hub.settings.admin_key = "sk_000000000000_rotated"
    try:
        assert (await client.get("/ui/")).status_code == 303
    finally:
        hub.hub.settings.admin_key = ADMIN_KEY
    await client.aclose()


# -- CSRF and scopes ---------------------------------------------------------------------------


async def test_a_form_without_its_csrf_token_changes_nothing(
    hub: HubServer, admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add("p1")
    for token in (None, "wrong"):
        data = {"enabled": "false"} | ({"csrf": token} if token else {})
        r = await admin.post(f"/ui/phones/{phone.device_id}", data=data)
        assert r.status_code == 403 and "csrf_failed" in r.text
    assert (await api.get(f"/devices/{phone.device_id}")).json()["enabled"] is True
    # Another session's token is not this session's.
    other = await sign_in(hub, ADMIN_KEY)
    foreign = csrf_of((await other.get("/ui/phones")).text)
    r = await admin.post(
        f"/ui/phones/{phone.device_id}", data={"csrf": foreign, "enabled": "false"}
    )
    assert r.status_code == 403
    await other.aclose()


async def test_a_read_key_sees_every_page_and_acts_only_as_the_api_lets_it(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add("p1")
    secret, _ = await make_key(api, "read")
    reader = await sign_in(hub, secret)
    pages = ["/ui/", "/ui/phones", "/ui/messages", "/ui/inbox", "/ui/webhooks", "/ui/keys"]
    pages += ["/ui/templates", "/ui/opt-outs", f"/ui/phones/{phone.device_id}"]
    for page in pages:
        r = await reader.get(page)
        assert r.status_code == 200, (page, r.text)
    phones = (await reader.get("/ui/phones")).text
    assert "Disable" not in phones and "Add a phone" not in phones  # no admin controls
    r = await post_form(reader, "/ui/phones", f"/ui/phones/{phone.device_id}", enabled="false")
    assert r.status_code == 403 and "insufficient_scope" in r.text
    r = await post_form(reader, "/ui/phones", "/ui/send", to=TO, message="hi")
    assert r.status_code == 403 and "insufficient_scope" in r.text
    assert (await api.get(f"/devices/{phone.device_id}")).json()["enabled"] is True
    await reader.aclose()
    # A key without read cannot sign in to the dashboard at all.
    sender, _ = await make_key(api, "send")
    await (await sign_in(hub, sender, expect=403)).aclose()


# -- pages and actions -----------------------------------------------------------------------


async def test_send_through_the_form_and_follow_the_message(
    hub: HubServer, admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add("p1")
    receiver = await Receiver(mode="fail").start()
    try:
        r = await api.post("/webhooks", json={"url": receiver.url, "events": ["message.sent"]})
        assert r.status_code == 201
        receiver.secrets.append(r.json()["secret"])
        preview = await post_form(admin, "/ui/send", "/ui/send/preview", message="héllo ✓")
        assert preview.status_code == 200 and "UCS-2" in preview.text
        r = await post_form(admin, "/ui/send", "/ui/send", to=TO, message="hello from the form")
        assert r.status_code == 200, r.text
        found = re.search(r'href="/ui/messages/([^"]+)">[^<]+</a>: <b>(\w+)</b>', r.text)
        assert found and found.group(2) in ("SENT", "DELIVERED")
        message_id = found.group(1)
        assert phone.transmitted_ids == [message_id]
        # The receiver refuses: the delivery dies after its retry and shows as such.
        hook_id = (await api.get("/webhooks")).json()["items"][0]["id"]

        async def dead() -> bool:
            page = await api.get(f"/webhooks/{hook_id}/deliveries?status=dead")
            return bool(page.json()["items"])

        await wait_for(dead, what="a dead delivery")
        page = await admin.get(f"/ui/messages/{message_id}")
        assert page.status_code == 200
        assert "offered to" in page.text and "accepted" in page.text
        assert "message.sent" in page.text and "Replay" in page.text
        delivery_id = re.search(r'id="delivery-([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        receiver.mode = "ok"
        r = await post_form(
            admin, f"/ui/messages/{message_id}", f"/ui/deliveries/{delivery_id}/replay"
        )
        assert r.status_code == 303 and "queued+again" in r.headers["location"]

        async def delivered() -> bool:
            d = (await api.get(f"/webhooks/deliveries/{delivery_id}")).json()
            return bool(d["status"] == "succeeded")

        await wait_for(delivered, what="the replayed delivery")
        assert len(receiver.received) == 1
    finally:
        await receiver.stop()


async def test_a_send_the_api_refuses_shows_the_api_error(admin: httpx.AsyncClient) -> None:
    r = await post_form(admin, "/ui/send", "/ui/send", to="12", message="x")
    assert r.status_code == 422 and "<code>missing_region</code>" in r.text
    assert 'value="12"' in r.text  # the form keeps what was typed


async def test_phone_actions_disable_quota_remove(
    admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add("p1")
    page = f"/ui/phones/{phone.device_id}"
    r = await post_form(admin, page, page, enabled="false", daily_quota="25", name="renamed")
    assert r.status_code == 303
    got = (await api.get(f"/devices/{phone.device_id}")).json()
    assert (got["enabled"], got["daily_quota"], got["name"]) == (False, 25, "renamed")
    r = await post_form(admin, page, page, daily_quota="lots")
    assert r.status_code == 422 and "whole number" in r.text
    r = await post_form(admin, page, page, daily_quota="-1")
    assert r.status_code == 422  # the API's own model refuses it
    r = await post_form(admin, page, f"{page}/remove")
    assert r.status_code == 303
    assert (await api.get(f"/devices/{phone.device_id}")).status_code == 404
    assert (await admin.get(page)).status_code == 404


async def test_add_a_phone_shows_a_code_that_enrolls(
    hub: HubServer, admin: httpx.AsyncClient
) -> None:
    r = await post_form(admin, "/ui/phones", "/ui/phones/add", kind="agent")
    assert r.status_code == 200 and "<svg" in r.text and "smsgw-agent.pyz" in r.text
    code = re.search(r'<code id="secret">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    enrolled = await enroll(hub.url, name="from-ui", hardware_id=new_id(), enrollment_code=code)
    assert enrolled.device_id
    r = await post_form(admin, "/ui/phones", "/ui/phones/add", kind="app", name="pixel")
    assert r.status_code == 200 and "/api/mobile/v1" in r.text
    token = re.search(r'<code id="secret">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=hub.url) as app:
        reg = await app.post(
            "/api/mobile/v1/device",
            json={"name": "pixel", "simCards": []},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert reg.status_code == 201, reg.text


async def test_keys_templates_and_opt_outs(
    hub: HubServer, admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    r = await post_form(admin, "/ui/keys", "/ui/keys", name="ci", scopes="read")
    assert r.status_code == 201 or r.status_code == 200
    secret = re.search(r'<code id="secret">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    async with hub.client(secret) as c:
        assert (await c.get("/sms/")).status_code == 200
    key_id = re.search(r'id="key-([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    r = await post_form(admin, "/ui/keys", f"/ui/keys/{key_id}/revoke")
    assert r.status_code == 303
    async with hub.client(secret) as c:
        assert (await c.get("/sms/")).status_code == 401
    r = await post_form(admin, "/ui/keys", "/ui/keys", name="bad", scopes="root")
    assert r.status_code == 422
    r = await post_form(
        admin, "/ui/templates", "/ui/templates", name="otp", body="Code {{code}}", category="auth"
    )
    assert r.status_code == 303
    templates = (await api.get("/templates")).json()["items"]
    assert [t["variables"] for t in templates] == [["code"]]
    r = await post_form(admin, "/ui/templates", f"/ui/templates/{templates[0]['id']}/delete")
    assert r.status_code == 303 and (await api.get("/templates")).json()["items"] == []
    r = await post_form(admin, "/ui/opt-outs", "/ui/opt-outs", number=TO, reason="asked")
    assert r.status_code == 303
    assert (await api.post("/sms/dispatch", json={"to": TO, "message": "x"})).status_code == 422
    # The inbox marks a sender who opted out.
    phone = await farm.add("p1")
    await phone.backend.receive_sms(TO, "STOP please")
    await phone.backend.receive_sms("+12025550999", "hello")

    async def both() -> bool:
        return len((await api.get("/sms/inbound")).json()["items"]) == 2

    await wait_for(both, what="two inbound SMS")
    inbox = (await admin.get("/ui/inbox")).text
    row = next(line for line in inbox.split("<tr>") if TO in line)
    assert "opted out" in row
    other = next(line for line in inbox.split("<tr>") if "+12025550999" in line)
    assert "opted out" not in other
    r = await post_form(admin, "/ui/opt-outs", "/ui/opt-outs/%2B12025550123/remove")
    assert r.status_code == 303
    assert (await api.get("/opt-outs")).json()["items"] == []


async def test_message_search_and_cancel(
    hub: HubServer, admin: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    ids = []
    for i, to in enumerate((TO, "+12025550124", TO)):
        r = await api.post(
            "/sms/dispatch",
            json={"to": to, "message": f"m{i}", "wait": False, "custom_id": f"c{i}"},
        )
        ids.append(r.json()["message_id"])
    page = (await admin.get("/ui/messages", params={"recipient": TO})).text
    assert ids[0] in page and ids[2] in page and ids[1] not in page
    page = (await admin.get("/ui/messages", params={"custom_id": "c1"})).text
    assert ids[1] in page and ids[0] not in page
    page = (await admin.get("/ui/messages", params={"status": "SENT"})).text
    assert "No messages." in page
    bad = await admin.get("/ui/messages", params={"status": "NOPE"})
    assert bad.status_code == 422
    r = await post_form(admin, f"/ui/messages/{ids[1]}", f"/ui/messages/{ids[1]}/cancel")
    assert r.status_code == 303
    assert (await api.get(f"/sms/{ids[1]}")).json()["status"] == "CANCELLED"
    page = (await admin.get(f"/ui/messages/{ids[1]}")).text
    assert "CANCELLED" in page and "Cancel this message" not in page
    assert (await admin.get("/ui/messages/nope")).status_code == 404


async def test_the_overview_counts_what_happened(
    admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    await farm.add("flaky", failure_rate=1.0, failure_retryable=True, signal=4)
    await farm.add("good", signal=1, deliver=False)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x"})
    assert r.status_code == 200 and r.json()["attempts"] == 2
    page = (await admin.get("/ui/")).text
    assert re.search(r'<b id="online-agent">2</b>', page)
    assert re.search(r"<b>1</b> failovers", page)
    assert re.search(r"<b>1</b> sent today", page)
    assert page.count("<rect ") >= 1  # the chart has this hour's bar


# -- the live grid ---------------------------------------------------------------------------


async def test_the_phone_grid_streams_changed_rows(
    hub: HubServer, admin: httpx.AsyncClient, api: httpx.AsyncClient, farm: Farm
) -> None:
    first = await farm.add("first")
    events: list[tuple[str, str]] = []

    async def read() -> None:
        async with admin.stream("GET", "/ui/phones/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name, data = "", []
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and name:
                    events.append((name, "\n".join(data)))
                    name, data = "", []

    task = asyncio.create_task(read())
    try:
        await wait_for(lambda: any(first.device_id in d for _, d in events), what="first row")
        shown = len(events)
        await asyncio.sleep(1.5)
        assert len(events) == shown  # nothing changed: nothing sent
        second = await farm.add("second")
        await wait_for(lambda: any(second.device_id in d for _, d in events), what="new row")
        await api.patch(f"/devices/{first.device_id}", json={"enabled": False})
        await wait_for(
            lambda: any(first.device_id in d and "disabled" in d for _, d in events),
            what="the disabled row",
        )
        await api.delete(f"/devices/{second.device_id}")
        await wait_for(lambda: ("gone", second.device_id) in events, what="the removed row")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- size -------------------------------------------------------------------------------------


async def test_pages_stay_one_page_with_thousands_of_messages_and_hundreds_of_phones(
    hub: HubServer, admin: httpx.AsyncClient
) -> None:
    store = hub.hub.store
    now = utcnow()
    messages = [
        new_message(
            recipient=f"+1202555{i % 10000:04d}",
            created_at=now - timedelta(seconds=i),
            status=Status.FAILED if i % 7 == 0 else Status.PENDING,
        )
        for i in range(3000)
    ]
    await asyncio.gather(*(store.create_message(m) for m in messages))
    for i in range(200):
        await enroll(hub.url, name=f"phone-{i:03d}", hardware_id=f"bulk-{i}", api_key=ADMIN_KEY)
    page = await admin.get("/ui/messages")
    assert page.status_code == 200
    assert page.text.count('<tr class="s-') == 50
    older = re.search(r'class="more" href="([^"]+)"', page.text)
    assert older is not None
    second = await admin.get(older.group(1).replace("&amp;", "&"))
    assert second.text.count('<tr class="s-') == 50
    first_ids = set(re.findall(r'href="/ui/messages/([^"]+)"', page.text))
    second_ids = set(re.findall(r'href="/ui/messages/([^"]+)"', second.text))
    assert first_ids and not first_ids & second_ids
    phones = await admin.get("/ui/phones")
    assert phones.status_code == 200 and phones.text.count('<tr id="phone-') == 200
    overview = await admin.get("/ui/")
    assert overview.status_code == 200 and '<b id="waiting">' in overview.text
