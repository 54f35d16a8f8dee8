"""Numbers, encoding, templates, OTP and opt-out, end to end through a real hub."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.harness import Farm, HubServer, wait_for

TO = "+12025550999"


async def test_preview_and_messages_carry_encoding_and_segments(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post("/sms/preview", json={"message": "a" * 161})
    assert r.json()["encoding"] == "GSM-7" and r.json()["segments"] == 2
    r = await api.post("/sms/preview", json={"message": "héllo 😀"})
    assert r.json()["encoding"] == "UCS-2" and r.json()["units"] == 8
    r = await api.post(
        "/sms/preview", json={"message": "“smart” — quotes…", "smart_encoding": True}
    )
    body = r.json()
    assert body["encoding"] == "GSM-7" and body["text"] == '"smart" - quotes...'
    assert set(body["replaced"]) == {"“", "”", "—", "…"}
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "😀" * 40, "wait": False})
    assert r.json()["encoding"] == "UCS-2" and r.json()["segments"] == 2
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["encoding"] == "UCS-2" and msg["segments"] == 2
    r = await api.post(
        "/sms/dispatch", json={"to": TO, "message": "“x”", "wait": False, "smart_encoding": True}
    )
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["body"] == '"x"' and msg["encoding"] == "GSM-7"


async def test_too_many_segments_is_refused(api: httpx.AsyncClient) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "😀" * 400})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_segments"
    assert (await api.get("/sms/")).json()["items"] == []


async def test_phone_validate(api: httpx.AsyncClient) -> None:
    r = await api.get("/phone/validate/+44 7400 123456")
    body = r.json()
    assert body["valid"] and body["e164"] == "+447400123456" and body["country"] == "GB"
    assert body["number_type"] == "mobile" and body["can_receive_sms"] is True
    r = await api.get("/phone/validate/+442071838750")
    assert r.json()["number_type"] == "fixed_line" and r.json()["can_receive_sms"] is False
    r = await api.get("/phone/validate/+15550100999")
    assert r.status_code == 200 and r.json()["valid"] is False
    r = await api.get("/phone/validate/not-a-number")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_number"


async def test_national_numbers_use_the_default_region(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    r = await api.post("/sms/dispatch", json={"to": "(202) 555-0999", "message": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_region"
    hub.hub.settings.default_region = "US"
    r = await api.post(
        "/sms/dispatch", json={"to": "(202) 555-0999", "message": "x", "wait": False}
    )
    assert r.status_code == 202
    assert (await api.get(f"/sms/{r.json()['message_id']}")).json()["recipient"] == TO


async def test_templates_crud_and_sending(api: httpx.AsyncClient, farm: Farm) -> None:
    phone = await farm.add(deliver=False)
    r = await api.post(
        "/templates",
        json={
            "name": "welcome",
            "category": "onboarding",
            "body": "Hi {{name}}, your code is {{ code }}.",
        },
    )
    assert r.status_code == 201 and r.json()["variables"] == ["name", "code"]
    tid = r.json()["id"]
    dup = await api.post("/templates", json={"name": "welcome", "body": "x"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "template_name_taken"
    r = await api.post(
        "/sms/dispatch",
        json={"to": TO, "template_id": tid, "variables": {"name": "Ada", "code": 42}},
    )
    assert r.status_code == 200, r.text
    assert phone.backend.transmitted[0][2] == "Hi Ada, your code is 42."
    r = await api.post(
        "/sms/dispatch", json={"to": TO, "template_id": tid, "variables": {"name": "Ada"}}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_variable"
    assert "code" in r.json()["error"]["message"]
    r = await api.post("/sms/dispatch", json={"to": TO, "template_id": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "template_not_found"
    assert (await api.get(f"/templates/{tid}")).json()["usage_count"] == 1
    r = await api.patch(f"/templates/{tid}", json={"active": False})
    assert r.json()["active"] is False
    r = await api.post(
        "/sms/dispatch", json={"to": TO, "template_id": tid, "variables": {"name": "A", "code": 1}}
    )
    assert r.json()["error"]["code"] == "template_inactive"
    listed = (await api.get("/templates", params={"category": "onboarding"})).json()["items"]
    assert [t["id"] for t in listed] == [tid]
    assert (await api.get("/templates", params={"active": "true"})).json()["items"] == []
    assert (await api.delete(f"/templates/{tid}")).status_code == 204
    assert (await api.get(f"/templates/{tid}")).status_code == 404


async def test_otp_send_and_verify(hub: HubServer, api: httpx.AsyncClient, farm: Farm) -> None:
    phone = await farm.add(deliver=False)
    r = await api.post("/otp/send", json={"to": TO, "length": 6})
    assert r.status_code == 201, r.text
    otp = r.json()
    await wait_for(lambda: bool(phone.backend.transmitted), what="the OTP SMS")
    text = phone.backend.transmitted[0][2]
    code = re.search(r"\b(\d{6})\b", text)
    assert code is not None
    # The code is never shown by the API.
    shown = (await api.get(f"/sms/{otp['message_id']}")).json()
    assert code.group(1) not in str(shown) and "not shown" in shown["body"]
    listed = (await api.get("/sms/")).json()
    assert code.group(1) not in str(listed)
    wrong = "000000" if code.group(1) != "000000" else "111111"
    r = await api.post("/otp/verify", json={"otp_id": otp["otp_id"], "code": wrong})
    assert r.json() == {"verified": False, "attempts_remaining": 4, "reason": "wrong_code"}
    r = await api.post("/otp/verify", json={"to": TO, "code": code.group(1)})
    assert r.json()["verified"] is True
    r = await api.post("/otp/verify", json={"otp_id": otp["otp_id"], "code": code.group(1)})
    assert r.json() == {"verified": False, "attempts_remaining": 0, "reason": "used"}


async def test_otp_attempts_cooldown_and_hourly_cap(hub: HubServer, api: httpx.AsyncClient) -> None:
    otp = (await api.post("/otp/send", json={"to": TO})).json()
    for remaining in (4, 3, 2, 1, 0):
        r = await api.post("/otp/verify", json={"otp_id": otp["otp_id"], "code": "abc"})
        assert r.json()["attempts_remaining"] == remaining
    r = await api.post("/otp/verify", json={"otp_id": otp["otp_id"], "code": "abc"})
    assert r.json()["reason"] == "too_many_attempts"
    again = await api.post("/otp/send", json={"to": TO})
    assert again.status_code == 429 and again.json()["error"]["code"] == "otp_cooldown"
    assert 0 < int(again.headers["retry-after"]) <= 60
    hub.hub.settings.otp_resend_cooldown = 0
    for _ in range(4):
        assert (await api.post("/otp/send", json={"to": TO})).status_code == 201
    capped = await api.post("/otp/send", json={"to": TO})
    assert capped.status_code == 429 and capped.json()["error"]["code"] == "otp_rate_limited"
    assert int(capped.headers["retry-after"]) > 3000
    # A new code supersedes the old one.
    r = await api.post("/otp/verify", json={"otp_id": otp["otp_id"], "code": "abc"})
    assert r.json()["verified"] is False
    r = await api.post("/otp/verify", json={"otp_id": "nope", "code": "1"})
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"to": TO, "length": 2}, "invalid_request"),
        ({"to": TO, "expiry_seconds": 5}, "invalid_request"),
        ({"to": TO, "template": "no placeholder"}, "invalid_request"),
        ({"to": "+15550100999"}, "invalid_number"),
    ],
)
async def test_otp_bad_input(api: httpx.AsyncClient, body: dict[str, object], code: str) -> None:
    r = await api.post("/otp/send", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == code


async def test_otp_goes_ahead_of_ordinary_traffic(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    hub.hub.settings.max_in_flight = 1
    for i in range(3):
        await api.post("/sms/dispatch", json={"to": TO, "message": f"bulk {i}", "wait": False})
    await api.post("/otp/send", json={"to": "+12025550888"})
    phone = await farm.add(deliver=False)
    await wait_for(lambda: len(phone.transmitted_ids) == 4, what="all four")
    assert "verification code" in phone.backend.transmitted[0][2]


async def test_inbound_stop_opts_out_and_start_opts_back_in(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False)
    await phone.backend.receive_sms(TO, " Stop. ")

    async def opted_out() -> bool:
        items = (await api.get("/opt-outs")).json()["items"]
        return [i["number"] for i in items] == [TO]

    await wait_for(opted_out, what="opt-out from STOP")
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "opted_out"
    r = await api.post("/otp/send", json={"to": TO})
    assert r.status_code == 422 and r.json()["error"]["code"] == "opted_out"
    await phone.backend.receive_sms(TO, "please don't stop")  # not a keyword
    await phone.backend.receive_sms(TO, "START")

    async def opted_in() -> bool:
        return (await api.get("/opt-outs")).json()["items"] == []

    await wait_for(opted_in, what="opt-in from START")
    assert (await api.post("/sms/dispatch", json={"to": TO, "message": "x"})).status_code == 200
    assert len(phone.transmitted_ids) == 1


async def test_opt_out_admin_api(hub: HubServer, api: httpx.AsyncClient) -> None:
    r = await api.post("/opt-outs", json={"number": "+1 202 555 0777", "reason": "asked by phone"})
    assert r.status_code == 201 and r.json()["number"] == "+12025550777"
    assert (await api.post("/opt-outs", json={"number": "+12025550777"})).status_code == 200
    assert (await api.post("/opt-outs", json={"number": "x"})).status_code == 422
    send_only = (await api.post("/keys", json={"name": "s", "scopes": ["send"]})).json()["key"]
    async with hub.client(send_only) as c:
        assert (await c.get("/opt-outs")).status_code == 403
    assert (await api.delete("/opt-outs/+12025550777")).status_code == 204
    assert (await api.delete("/opt-outs/+12025550777")).status_code == 404


async def test_cancel_racing_a_dispatch_leaves_one_outcome(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False, accept_delay=0.05)
    for i in range(10):
        r = await api.post("/sms/dispatch", json={"to": TO, "message": f"r{i}", "wait": False})
        mid = r.json()["message_id"]
        cancel = await api.delete(f"/sms/{mid}")
        final = (await api.get(f"/sms/{mid}")).json()
        if cancel.status_code == 200:
            assert final["status"] == "CANCELLED"
        else:
            assert cancel.status_code == 409 and final["status"] != "CANCELLED"
    await asyncio.sleep(0.3)
    statuses = [m["status"] for m in (await api.get("/sms/")).json()["items"]]
    cancelled = statuses.count("CANCELLED")
    assert len(phone.transmitted_ids) == 10 - cancelled  # a cancelled one never went out


async def test_stats_over_a_period(api: httpx.AsyncClient, farm: Farm) -> None:
    ok = await farm.add(deliver=True, signal=4)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "a"})
    assert r.json()["device_id"] == ok.device_id
    await api.post(
        "/sms/dispatch",
        json={
            "to": TO,
            "message": "b",
            "ttl": 0.1,
            "wait": False,
            "send_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        },
    )
    await api.patch(f"/devices/{ok.device_id}", json={"enabled": False})
    expiring = await api.post("/sms/dispatch", json={"to": TO, "message": "c", "ttl": 0.2})

    async def settled() -> bool:
        s = (await api.get("/stats")).json()
        return s["by_status"].get("DELIVERED") == 1 and s["by_status"].get("FAILED") == 1

    await wait_for(settled, what="delivery and expiry")
    await ok.backend.receive_sms("+12025550111", "hello")
    await api.post("/otp/send", json={"to": "+12025550222"})

    async def inbound_counted() -> bool:
        return bool((await api.get("/stats")).json()["inbound"] == 1)

    await wait_for(inbound_counted, what="the inbound SMS")
    s = (await api.get("/stats")).json()
    assert s["total"] == 4  # the scheduled one counts as PENDING
    assert s["by_status"] == {"DELIVERED": 1, "FAILED": 1, "PENDING": 2}
    assert s["failure_reasons"] == {"expired": 1}
    assert s["by_device"] == {ok.device_id: {"DELIVERED": 1}}
    assert s["delivery_rate"] == 1.0 and s["success_rate"] == 0.5
    assert s["otp"] == {"sent": 1, "verified": 0, "verification_rate": 0.0}
    assert list(s["by_day"]) == [s["to"][:10]]
    assert expiring.json()["status"] in ("PENDING", "FAILED")
    empty = (
        await api.get(
            "/stats", params={"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"}
        )
    ).json()
    assert empty["total"] == 0 and empty["delivery_rate"] is None
    bad = await api.get(
        "/stats", params={"from": "2000-01-02T00:00:00Z", "to": "2000-01-01T00:00:00Z"}
    )
    assert bad.status_code == 422


async def test_rate_limits_per_key_and_per_recipient(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    limited = (
        await api.post(
            "/keys",
            json={
                "name": "l",
                "scopes": ["send", "read"],
                "rate_limit_rpm": 3,
                "daily_message_limit": 2,
            },
        )
    ).json()
    assert limited["rate_limit_rpm"] == 3 and limited["daily_message_limit"] == 2
    async with hub.client(limited["key"]) as c:
        body = {"message": "x", "wait": False}
        assert (await c.post("/sms/dispatch", json={**body, "to": TO})).status_code == 202
        assert (
            await c.post("/sms/dispatch", json={**body, "to": "+12025550101"})
        ).status_code == 202
        r = await c.post("/sms/dispatch", json={**body, "to": "+12025550102"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "daily_limit_reached"
        assert r.headers["x-ratelimit-limit"] == "2/day" and int(r.headers["retry-after"]) > 0
        r = await c.get("/sms/")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.headers["x-ratelimit-limit"] == "3/min"
    # Other keys are not affected; per-recipient hourly cap applies to everyone.
    hub.hub.settings.recipient_hourly_limit = 2
    assert (
        await api.post("/sms/dispatch", json={"to": "+12025550103", "message": "x", "wait": False})
    ).status_code == 202
    await api.post("/sms/dispatch", json={"to": "+12025550103", "message": "x", "wait": False})
    r = await api.post("/sms/dispatch", json={"to": "+12025550103", "message": "x"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "recipient_rate_limited"
    assert r.headers["x-ratelimit-limit"] == "2/hour"
    items = (await api.get("/sms/", params={"limit": 50})).json()["items"]
    assert len(items) == 4  # nothing was written for the refused ones


def test_sliding_window_unit() -> None:
    from smsgw.ratelimit import SlidingWindow

    w = SlidingWindow(10.0)
    assert w.acquire("k", 2, now=0.0) is None
    assert w.acquire("k", 2, now=1.0) is None
    assert w.acquire("k", 2, now=2.0) == 8.0
    assert w.acquire("k", 2, now=10.5) is None  # the first hit left the window
    assert w.acquire("other", 2, now=2.0) is None
    assert w.acquire("k", None, now=0.0) is None


async def test_the_opt_out_list_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    first = await HubServer(db).start()
    async with first.client() as c:
        assert (await c.post("/opt-outs", json={"number": TO})).status_code == 201
    await first.stop()
    second = await HubServer(db).start()
    try:
        async with second.client() as c:
            r = await c.post("/sms/dispatch", json={"to": TO, "message": "x"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "opted_out"
    finally:
        await second.stop()
