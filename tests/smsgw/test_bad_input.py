"""Bad input on REST and on the device socket: a clear error, nothing half-written, and the
hub keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.harness import Farm, HubServer

TO = "+12025550999"


async def count_messages(api: httpx.AsyncClient) -> int:
    return len((await api.get("/sms/", params={"limit": 500})).json()["items"])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (b'{"message": "x"}', 422, "invalid_request"),
        (b'{"to": "+12025550999"}', 422, "invalid_request"),
        (b'{"to": 15550100999, "message": "x"}', 422, "invalid_request"),
        (b'{"to": "12345", "message": "x"}', 422, "missing_region"),
        (b'{"to": "+15550100999", "message": "x"}', 422, "invalid_number"),
        (b'{"to": "+442071838750", "message": "x"}', 422, "not_mobile"),
        (b'{"to": "+18005550100", "message": "x"}', 422, "not_mobile"),
        (b'{"message": "x", "to": "+12025550100", "template_id": "t"}', 422, "invalid_request"),
        (b'{"to": "+12025550999", "message": ""}', 422, "invalid_request"),
        (b'{"to": "+12025550999", "message": "x", "wait": "maybe"}', 422, "invalid_request"),
        (b'{"to": "+12025550999", "message": "x", "surprise": 1}', 422, "invalid_request"),
        (b'{"to": "+12025550999", "message": "x", "timeout": -1}', 422, "invalid_request"),
    ],
)
async def test_bad_dispatch_bodies(
    api: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    r = await api.post("/sms/dispatch", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert await count_messages(api) == 0


async def test_validation_errors_name_the_field(api: httpx.AsyncClient) -> None:
    r = await api.post("/sms/dispatch", json={"to": 5, "message": "x"})
    err = r.json()["error"]
    assert err["details"][0]["field"] == "to" and err["code"] == "invalid_request"
    r = await api.post("/sms/dispatch", json={"to": "abc", "message": "x"})
    assert r.json()["error"]["code"] == "invalid_number"


async def test_recipient_formatting_is_normalised(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/sms/dispatch", json={"to": "00 1 (202) 555-0999", "message": "x", "wait": False}
    )
    assert r.status_code == 202
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["recipient"] == TO


async def test_oversize_body_is_413_and_writes_nothing(api: httpx.AsyncClient) -> None:
    huge = json.dumps({"to": TO, "message": "x" * (2 * 1024 * 1024)})
    r = await api.post("/sms/dispatch", content=huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(40):
            yield b"x" * 65536

    r = await api.post("/sms/dispatch", content=chunks())
    assert r.status_code == 413
    assert await count_messages(api) == 0


async def test_too_long_message_and_unknown_ids(api: httpx.AsyncClient) -> None:
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x" * 1601})
    assert r.status_code == 422
    r = await api.get("/sms/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "message_not_found"
    r = await api.get("/sms/", params={"cursor": "!!!"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    r = await api.get("/sms/", params={"status": "LOST"})
    assert r.status_code == 422
    r = await api.get("/sms/", params={"limit": 0})
    assert r.status_code == 422
    r = await api.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.put("/sms/dispatch")
    assert r.status_code == 405 and "error" in r.json()


async def test_openapi_and_docs_are_served(hub: HubServer) -> None:
    async with hub.client(key=None) as c:
        spec = (await c.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert "/sms/dispatch" in spec["paths"] and "/devices/register" in spec["paths"]
        post = spec["paths"]["/sms/dispatch"]["post"]
        assert set(post["responses"]) >= {"200", "202", "400", "401", "403", "422"}
        assert "DispatchIn" in spec["components"]["schemas"]
        assert "swagger-ui" in (await c.get("/docs")).text
        assert (await c.get("/health")).json() == {"status": "ok"}
        assert (await c.get("/ready")).json() == {"status": "ready"}


# -- the device socket --------------------------------------------------------------


def ws_url(hub: HubServer) -> str:
    return hub.url.replace("http://", "ws://") + "/ws/device"


HELLO = {"type": "hello", "id": "h", "protocol": "1.0", "battery": 90, "signal": 4}


async def opened(hub: HubServer, token: str) -> ClientConnection:
    ws = await connect(
        ws_url(hub), additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    )
    await ws.send(json.dumps(HELLO))
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome" and welcome["ref"] == "h"
    return ws


async def test_bad_frames_get_error_frames_and_the_socket_stays(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    raw = await farm.add(connect=False)
    good = await farm.add(deliver=False)
    ws = await opened(hub, raw.token)
    for text, code in [
        ("nope", "invalid_json"),
        ('{"type": "launch", "id": "1"}', "unknown_type"),
        ('{"type": "sent", "id": "2", "message_id": 5}', "invalid_frame"),
        ('{"type": "heartbeat", "id": "3", "battery": "full", "signal": 2}', "invalid_frame"),
    ]:
        await ws.send(text)
        reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and reply["code"] == code
    await ws.send(json.dumps({"type": "heartbeat", "id": "4", "battery": 5, "signal": 0}))
    ack = json.loads(await ws.recv())
    assert ack["type"] == "ack" and ack["ref"] == "4"
    # A report about a message this phone does not own is acknowledged and ignored.
    await ws.send(json.dumps({"type": "sent", "id": "5", "message_id": "ghost", "attempt": 1}))
    assert json.loads(await ws.recv())["type"] == "ack"
    # Everyone else is still served.
    r = await api.post("/sms/send", json={"to": TO, "message": "x", "device_id": good.device_id})
    assert r.status_code == 200 and r.json()["status"] == "SENT"
    await ws.close()


async def test_protocol_violations_close_with_documented_codes(hub: HubServer, farm: Farm) -> None:
    phone = await farm.add(connect=False)
    headers = {"Authorization": f"Bearer {phone.token}"}

    async def close_code(*frames: str | bytes) -> int | None:
        async with connect(ws_url(hub), additional_headers=headers, max_size=None) as ws:
            for frame in frames:
                await ws.send(frame)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    assert await close_code(json.dumps({**HELLO, "protocol": "2.0"})) == 4002
    assert (
        await close_code(json.dumps({"type": "heartbeat", "id": "1", "battery": 1, "signal": 1}))
        == 4003
    )
    assert await close_code(json.dumps(HELLO), b"\x00binary") == 1003
    assert await close_code(json.dumps(HELLO), "x" * (70 * 1024)) == 1009


async def test_silent_socket_is_closed_and_the_phone_goes_offline(tmp_path: Path) -> None:
    fast = await HubServer(tmp_path / "fast.db", heartbeat_interval=0.2).start()
    try:
        f = Farm(lambda: fast.url)
        phone = await f.add(connect=False)
        async with fast.client() as c:
            ws = await opened(fast, phone.token)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 4004
            d = (await c.get(f"/devices/{phone.device_id}")).json()
            assert d["online"] is False
        await f.close()
    finally:
        await fast.stop()
