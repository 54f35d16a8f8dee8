"""enroll(): request shape, success and the hub's error body, over a mock transport."""

from __future__ import annotations

import json

import httpx
import pytest

from android_client.backend import SimInfo
from android_client.enroll import Enrollment, EnrollmentError, enroll


def transport(status: int, body: object, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


OK = {"device_id": "d-1", "device_token": "dev_abc", "ws_url": "ws://hub/ws/device"}


async def test_enroll_with_admin_key() -> None:
    seen: list[httpx.Request] = []
    result = await enroll(
        "http://hub:9000/",
        name="pixel",
        hardware_id="hw-1",
        api_key="sk_admin",
        sims=[SimInfo(0, "Acme"), {"slot": 1}],
        transport=transport(201, OK, seen),
    )
    assert result == Enrollment("d-1", "dev_abc", "ws://hub/ws/device")
    [request] = seen
    assert request.method == "POST" and str(request.url) == "http://hub:9000/devices/register"
    assert request.headers["X-API-Key"] == "sk_admin"
    assert json.loads(request.content) == {
        "name": "pixel",
        "hardware_id": "hw-1",
        "sims": [{"slot": 0, "carrier": "Acme"}, {"slot": 1}],
        "fcm_token": None,
    }


async def test_enroll_with_code_sends_it_in_the_body() -> None:
    seen: list[httpx.Request] = []
    await enroll(
        "http://hub",
        name="p",
        hardware_id="h",
        enrollment_code="ABCD-EFGH-JKLM",
        transport=transport(201, OK, seen),
    )
    assert "X-API-Key" not in seen[0].headers
    assert json.loads(seen[0].content)["enrollment_code"] == "ABCD-EFGH-JKLM"


async def test_enroll_error_carries_the_hub_error() -> None:
    error = {"error": {"code": "invalid_enrollment_code", "message": "code expired"}}
    with pytest.raises(EnrollmentError) as info:
        await enroll(
            "http://hub",
            name="p",
            hardware_id="h",
            enrollment_code="X",
            transport=transport(403, error, []),
        )
    assert (info.value.status, info.value.code, info.value.message) == (
        403,
        "invalid_enrollment_code",
        "code expired",
    )
    assert "code expired" in str(info.value) and "403" in str(info.value)


async def test_enroll_error_without_json_body() -> None:
    with pytest.raises(EnrollmentError, match=r"502.*bad gateway"):
        await enroll(
            "http://hub",
            name="p",
            hardware_id="h",
            api_key="k",
            transport=transport(502, "bad gateway", []),
        )


async def test_enroll_rejects_an_unexpected_success_body() -> None:
    with pytest.raises(EnrollmentError, match="bad_response"):
        await enroll(
            "http://hub",
            name="p",
            hardware_id="h",
            api_key="k",
            transport=transport(201, {"device_id": "x"}, []),
        )


async def test_enroll_needs_a_credential() -> None:
    with pytest.raises(ValueError):
        await enroll("http://hub", name="p", hardware_id="h")
