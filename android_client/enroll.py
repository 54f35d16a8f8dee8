"""Enrollment: turn an admin key or a one-time code into a device id and token.

``POST /devices/register`` (docs/protocol.md §1). Registering again with the same
``hardware_id`` keeps the device id and rotates the token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .backend import SimInfo


@dataclass(frozen=True, slots=True)
class Enrollment:
    device_id: str
    device_token: str
    ws_url: str


class EnrollmentError(Exception):
    """The hub refused to register the device (or answered something unexpected)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"enrollment refused: HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


async def enroll(
    server_url: str,
    *,
    name: str,
    hardware_id: str,
    api_key: str | None = None,
    enrollment_code: str | None = None,
    sims: Sequence[SimInfo | Mapping[str, Any]] | None = None,
    fcm_token: str | None = None,
    http_timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Enrollment:
    """Register this device with the hub at ``server_url`` (``http(s)://host:port``)."""
    if api_key is None and enrollment_code is None:
        raise ValueError("enroll() needs an admin api_key or an enrollment_code")
    body: dict[str, Any] = {
        "name": name,
        "hardware_id": hardware_id,
        "sims": [s.to_wire() if isinstance(s, SimInfo) else dict(s) for s in sims or []],
        "fcm_token": fcm_token,
    }
    if enrollment_code is not None:
        body["enrollment_code"] = enrollment_code
    headers = {"X-API-Key": api_key} if api_key is not None else {}
    url = server_url.rstrip("/") + "/devices/register"
    async with httpx.AsyncClient(timeout=http_timeout, transport=transport) as http:
        response = await http.post(url, json=body, headers=headers)
    if response.status_code != 201:
        code, message = _error_of(response)
        raise EnrollmentError(response.status_code, code, message)
    try:
        data = response.json()
        return Enrollment(
            device_id=str(data["device_id"]),
            device_token=str(data["device_token"]),
            ws_url=str(data["ws_url"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(
            response.status_code, "bad_response", f"unexpected answer: {response.text[:200]}"
        ) from exc


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The hub's ``{"error": {"code", "message"}}``, or the raw text if it is not that."""
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.text[:200] or response.reason_phrase
