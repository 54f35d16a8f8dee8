"""Failed authentications limited per client address (issue 21), over real HTTP and real
sockets: past ``SMSGW_AUTH_FAILURE_LIMIT`` failures a minute, an address's further
failures get 429 with ``Retry-After`` instead of 401 on every path that checks a
credential, while valid credentials from that address are still served; and OTP
verification's per-number limit across codes."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.app_farm import MOBILE, app_token
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.smsgw.test_bad_input import ws_url
from tests.smsgw.ui.dash import csrf_of

LIMIT = 20  # the default, SMSGW_AUTH_FAILURE_LIMIT
WRONG_KEY = "sk_000000000000_not-a-key"
WRONG_DEVICE = "dev_000000000000_not-a-token"
ELSEWHERE = {"X-Forwarded-For": "203.0.113.7"}  # the harness's 127.0.0.1 is a trusted proxy
TO = "+12025550123"

Attempt = Callable[[], Awaitable[tuple[int, dict[str, str], Any]]]


async def past_the_limit(attempt: Attempt, failed: int = 401, limit: int = LIMIT) -> Any:
    """``limit`` failed attempts answered ``failed``; the next one is 429 with Retry-After.
    Returns the 429's body."""
    for n in range(limit):
        status, _, body = await attempt()
        assert status == failed, f"attempt {n + 1}: {status} {body}"
    status, headers, body = await attempt()
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit"] == f"{limit}/min"
    return body


def http(call: Callable[[], Awaitable[httpx.Response]]) -> Attempt:
    async def attempt() -> tuple[int, dict[str, str], Any]:
        r = await call()
        return r.status_code, dict(r.headers), r.json()

    return attempt


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


async def test_wrong_api_keys_past_the_limit_get_429_and_a_valid_key_is_served(
    hub: HubServer,
) -> None:
    async with hub.client(key=WRONG_KEY) as wrong, hub.client() as admin:
        body = await past_the_limit(http(lambda: wrong.get("/devices/")))
        assert body["error"]["code"] == "too_many_auth_failures"
        # The same address with a valid key: served, again and again.
        for _ in range(3):
            assert (await admin.get("/devices/")).status_code == 200
        # Failures stay refused; a missing key is not a guess and keeps its 401.
        assert (await wrong.get("/sms/")).status_code == 429
        r = await wrong.post("/sms/dispatch", json={}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 429
        async with hub.client(key=None) as anonymous:
            assert (await anonymous.get("/devices/")).status_code == 401
        # Counted per address: another client (as a trusted proxy names it) is not limited.
        assert (await wrong.get("/devices/", headers=ELSEWHERE)).status_code == 401


@pytest.mark.hub_settings(auth_failure_limit=3, auth_failure_window=1.0)
async def test_the_window_slides(hub: HubServer) -> None:
    async with hub.client(key=WRONG_KEY) as wrong:
        for _ in range(3):
            assert (await wrong.get("/sms/")).status_code == 401
        r = await wrong.get("/sms/")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.headers["x-ratelimit-limit"] == "3/1s"
        await asyncio.sleep(1.1)
        assert (await wrong.get("/sms/")).status_code == 401


@pytest.mark.hub_settings(auth_failure_limit=0)
async def test_zero_turns_the_limit_off(hub: HubServer) -> None:
    async with hub.client(key=WRONG_KEY) as wrong:
        for _ in range(LIMIT + 5):
            assert (await wrong.get("/sms/")).status_code == 401


@pytest.mark.hub_settings(metrics_token="scrape-me")
async def test_failures_of_every_kind_count_together(hub: HubServer) -> None:
    """One limiter: wrong keys, device tokens, app phones' tokens and the metrics token
    add up."""
    async with hub.client(key=None) as c:
        for _ in range(5):
            assert (await c.get("/sms/", headers={"X-API-Key": WRONG_KEY})).status_code == 401
            r = await c.post(
                "/devices/heartbeat",
                json={"battery": 50, "charging": False, "signal": 3},
                headers={"Authorization": f"Bearer {WRONG_DEVICE}"},
            )
            assert r.status_code == 401
            headers = {"Authorization": f"Bearer {WRONG_DEVICE}"}
            assert (await c.get(MOBILE + "/settings", headers=headers)).status_code == 401
            assert (await c.get("/metrics", headers=headers)).status_code == 401
        r = await c.get(MOBILE + "/message", headers={"Authorization": f"Bearer {WRONG_DEVICE}"})
        assert r.status_code == 429 and "retry-after" in r.headers


async def test_device_token_upgrades(hub: HubServer, farm: Farm) -> None:
    phone = await farm.add(connect=False)

    async def upgrade(token: str, extra: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}", **(extra or {})}
        try:
            async with connect(ws_url(hub), additional_headers=headers):
                return 101, {}, None
        except InvalidStatus as exc:
            response = exc.response
            return response.status_code, dict(response.headers), response.body

    body = await past_the_limit(lambda: upgrade(WRONG_DEVICE))
    assert b'"too_many_auth_failures"' in body  # the API's error body, before any socket
    # The phone's own token from the same address still opens its socket.
    await farm.connect(phone)
    assert phone.client.connected.is_set()
    # The upgrade reads X-Forwarded-For as HTTP requests do: another client is not limited.
    assert (await upgrade(WRONG_DEVICE, ELSEWHERE))[0] == 401


async def test_enrollment_codes(hub: HubServer, api: httpx.AsyncClient) -> None:
    def register(code: str, hardware_id: str = "hw-guess") -> Awaitable[httpx.Response]:
        body = {"name": "p", "hardware_id": hardware_id, "enrollment_code": code}
        return api.post("/devices/register", json=body)  # the code, not the client's key

    body = await past_the_limit(http(lambda: register("ABCD-EFGH-JKLM")))
    assert body["error"]["code"] == "too_many_auth_failures"
    code = (await api.post("/devices/enrollment-codes", json={})).json()["code"]
    r = await register(code, "hw-real")
    assert r.status_code == 201, r.text


async def test_app_tokens_and_app_device_tokens(hub: HubServer, api: httpx.AsyncClient) -> None:
    token = (await app_token(api, name="t"))["token"]
    url = MOBILE + "/device"
    body = {"name": "phone", "simCards": []}

    def register(secret: str) -> Awaitable[httpx.Response]:
        return api.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})

    await past_the_limit(http(lambda: register("apt_000000000000_not-a-token")))
    r = await register(token)
    assert r.status_code == 201, r.text
    device_token = r.json()["token"]
    # The app phone's own token is served; a wrong one is refused with 429 now.
    ok = await api.get(MOBILE + "/settings", headers={"Authorization": f"Bearer {device_token}"})
    assert ok.status_code == 200
    wrong = await api.get(MOBILE + "/settings", headers={"Authorization": f"Bearer {WRONG_DEVICE}"})
    assert wrong.status_code == 429


async def test_smsgate_basic_and_tokens(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url + "/api/3rdparty/v1") as c:
        body = await past_the_limit(http(lambda: c.get("/devices", headers=basic(WRONG_KEY))))
        # SMSGate's own error body on its paths.
        assert body == {"message": body["message"], "code": "too_many_auth_failures"}
        assert (await c.get("/devices", headers=basic(ADMIN_KEY))).status_code == 200
        r = await c.get("/devices", headers={"Authorization": "Bearer a.b.c"})  # a bad JWT
        assert r.status_code == 429
        r = await c.post("/auth/token", json={"scopes": ["devices:list"]}, headers=basic(ADMIN_KEY))
        assert r.status_code == 201, r.text
        jwt_headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await c.get("/devices", headers=jwt_headers)).status_code == 200


async def test_dashboard_sign_in(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as browser:
        csrf = csrf_of((await browser.get("/ui/sign-in")).text)

        async def sign_in(key: str) -> tuple[int, dict[str, str], str]:
            r = await browser.post("/ui/sign-in", data={"csrf": csrf, "key": key})
            return r.status_code, dict(r.headers), r.text

        text = await past_the_limit(sign_in_attempt(sign_in, WRONG_KEY))
        assert "failed authentications from this address" in text
        assert "smsgw_session" not in browser.cookies
        status, headers, _ = await sign_in(ADMIN_KEY)
        assert status == 303 and headers["location"] == "/ui/"
        assert "smsgw_session" in browser.cookies


def sign_in_attempt(
    sign_in: Callable[[str], Awaitable[tuple[int, dict[str, str], str]]], key: str
) -> Attempt:
    async def attempt() -> tuple[int, dict[str, str], Any]:
        return await sign_in(key)

    return attempt


@pytest.mark.hub_settings(forwarded_allow_ips="192.0.2.1")
async def test_a_proxy_is_believed_only_when_trusted(hub: HubServer) -> None:
    """SMSGW_FORWARDED_ALLOW_IPS names the proxies; the harness's 127.0.0.1 is not one of
    them here, so whatever X-Forwarded-For it sends, it is one client."""
    async with hub.client(key=WRONG_KEY) as wrong:
        for n in range(LIMIT):
            forged = {"X-Forwarded-For": f"198.51.100.{n}"}
            assert (await wrong.get("/sms/", headers=forged)).status_code == 401
        assert (await wrong.get("/sms/", headers=ELSEWHERE)).status_code == 429


# -- OTP: failed verifications per number, across codes ------------------------------------


@pytest.mark.hub_settings(otp_max_failures_per_hour=3, otp_resend_cooldown=0)
async def test_otp_failed_verifications_are_limited_per_number(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False)
    first = (await api.post("/otp/send", json={"to": TO})).json()
    for remaining in (4, 3):
        r = await api.post("/otp/verify", json={"otp_id": first["otp_id"], "code": "000000x"})
        wrong = {"verified": False, "attempts_remaining": remaining, "reason": "wrong_code"}
        assert r.json() == wrong
    # A new code to the same number: the failures of the first still count (3 in all).
    second = await api.post("/otp/send", json={"to": TO})
    assert second.status_code == 201
    await wait_for(lambda: len(phone.backend.transmitted) == 2, what="both OTP texts")
    code = re.search(r"\b(\d{6})\b", phone.backend.transmitted[1][2])
    assert code is not None
    r = await api.post("/otp/verify", json={"to": TO, "code": "000000x"})
    assert r.json()["reason"] == "wrong_code"
    # Past the limit: 429 for any attempt on this number, even the right code (a guesser
    # must learn nothing), and the code's own attempts are not used up by it.
    r = await api.post("/otp/verify", json={"to": TO, "code": code.group(1)})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "otp_verify_rate_limited"
    assert 3500 < int(r.headers["retry-after"]) <= 3600
    assert r.headers["x-ratelimit-limit"] == "3/hour"
    r = await api.post("/otp/verify", json={"otp_id": first["otp_id"], "code": "1"})
    assert r.status_code == 429
    # Another number is not affected; unknown codes are 404 as before.
    other = (await api.post("/otp/send", json={"to": "+12025550124"})).json()
    r = await api.post("/otp/verify", json={"otp_id": other["otp_id"], "code": "000000x"})
    assert r.status_code == 200 and r.json()["reason"] == "wrong_code"
    assert (await api.post("/otp/verify", json={"otp_id": "nope", "code": "1"})).status_code == 404


@pytest.mark.hub_settings(otp_max_failures_per_hour=2)
async def test_concurrent_otp_guesses_cannot_pass_the_limit(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    otp = (await api.post("/otp/send", json={"to": TO})).json()
    body = {"otp_id": otp["otp_id"], "code": "000000x"}
    answers = await asyncio.gather(*(api.post("/otp/verify", json=body) for _ in range(10)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200] + [429] * 8
    assert (await api.post("/otp/verify", json=body)).status_code == 429


async def test_a_used_code_does_not_count_as_a_failure(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False)
    otp = (await api.post("/otp/send", json={"to": TO})).json()
    await wait_for(lambda: bool(phone.backend.transmitted), what="the OTP text")
    code = re.search(r"\b(\d{6})\b", phone.backend.transmitted[0][2])
    assert code is not None
    body = {"otp_id": otp["otp_id"], "code": code.group(1)}
    assert (await api.post("/otp/verify", json=body)).json()["verified"] is True
    for _ in range(15):  # more than the default 10, all "used"
        assert (await api.post("/otp/verify", json=body)).json()["reason"] == "used"
