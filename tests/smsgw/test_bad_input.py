"""Bad input on REST and on the device socket: a clear error, nothing half-written, and the
hub keeps serving everyone else."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from smsgw import lingering
from tests.harness import ADMIN_KEY, Farm, HubServer

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


# -- a client that uploads its whole body before it reads (urllib, requests, PHP's curl) --

BIG = json.dumps({"to": TO, "message": "x" * 3_000_000}).encode()  # 3 MB: over the 1 MiB limit


def head(path: str, *lines: str, length: int | None = None) -> bytes:
    """A request head; ``Connection: close`` as urllib sends it (then an unread body left
    in the socket when the hub closes is a reset)."""
    fields = ["Host: hub", "Connection: close", "Content-Type: application/json", *lines]
    if length is not None:
        fields.append(f"Content-Length: {length}")
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def upload_then_read(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """What urllib does: sendall the whole request, then read (blocking: run in a thread,
    the hub serves from this test's event loop)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        return read_answer(sock)


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


async def test_oversize_body_reaches_a_client_that_uploads_before_reading(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    """The hub reads and drops the rest of a refused body before answering (a lingering
    close): without it, about 4 in 5 of these got a reset instead of the 413."""
    key = f"X-API-Key: {ADMIN_KEY}"
    for _ in range(20):
        status, _, body = await asyncio.to_thread(
            upload_then_read, hub.port, head("/sms/dispatch", key, length=len(BIG)) + BIG
        )
        assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    # No Content-Length: refused while streaming, then the rest drained just the same.
    request = head("/sms/dispatch", key, "Transfer-Encoding: chunked") + chunked(BIG)
    for _ in range(3):
        status, _, _ = await asyncio.to_thread(upload_then_read, hub.port, request)
        assert status == 413
    # Refused before the body is even read (a bad key): the same drain.
    request = head("/sms/dispatch", "X-API-Key: sk_nope", length=len(BIG)) + BIG
    for _ in range(5):
        status, _, _ = await asyncio.to_thread(upload_then_read, hub.port, request)
        assert status == 401
    # SMSGate's API and the mobile API read bodies through the same reader.
    basic = "Authorization: Basic " + base64.b64encode(f"u:{ADMIN_KEY}".encode()).decode()
    request = head("/api/3rdparty/v1/messages", basic, length=len(BIG)) + BIG
    status, _, body = await asyncio.to_thread(upload_then_read, hub.port, request)
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    request = head("/api/mobile/v1/device", "Authorization: Bearer nope", length=len(BIG)) + BIG
    status, _, _ = await asyncio.to_thread(upload_then_read, hub.port, request)
    assert status == 401
    assert await count_messages(api) == 0


async def test_a_drained_connection_stays_usable(hub: HubServer) -> None:
    """Kept alive, a connection whose refused body was drained serves the next request."""

    def two_requests() -> tuple[int, int]:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=20) as sock:
            first = head("/sms/dispatch", f"X-API-Key: {ADMIN_KEY}", length=len(BIG))
            sock.sendall(first.replace(b"Connection: close", b"Connection: keep-alive") + BIG)
            status, headers, _ = read_answer(sock)
            assert headers.get("connection") != "close"
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
            return status, read_answer(sock)[0]

    assert await asyncio.to_thread(two_requests) == (413, 200)


async def test_a_body_past_the_drain_bound_is_answered_at_once_and_closed(
    hub: HubServer, api: httpx.AsyncClient
) -> None:
    """Nobody makes the hub read without end: a body declared larger than the limit plus
    lingering.DRAIN_BYTES is answered at once, with Connection: close, before a byte of it
    is read (a client still uploading may then see a reset: documented)."""
    length = 1024 * 1024 + lingering.DRAIN_BYTES + 1

    def headers_only(*extra: str) -> tuple[int, dict[str, str], bytes]:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=20) as sock:
            sock.sendall(head("/sms/dispatch", f"X-API-Key: {ADMIN_KEY}", *extra, length=length))
            return read_answer(sock)

    status, headers, _ = await asyncio.to_thread(headers_only)
    assert status == 413 and headers["connection"] == "close"
    # Expect: 100-continue: the client waits to be told to upload; it is told 413 instead.
    status, headers, _ = await asyncio.to_thread(headers_only, "Expect: 100-continue")
    assert status == 413 and headers["connection"] == "close"

    def upload_all() -> int | str:
        try:
            request = head("/sms/dispatch", f"X-API-Key: {ADMIN_KEY}", length=length)
            return upload_then_read(hub.port, request + b"x" * length)[0]
        except OSError as exc:  # the hub closed while we were writing
            return type(exc).__name__

    assert await asyncio.to_thread(upload_all) in (413, "BrokenPipeError", "ConnectionResetError")
    assert (await api.get("/health")).status_code == 200
    assert await count_messages(api) == 0


async def test_a_stalled_body_is_drained_for_a_bounded_time(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that stops arriving holds the drain at most lingering.DRAIN_SECONDS; then the
    413 goes out and the connection is closed."""
    monkeypatch.setattr(lingering, "DRAIN_SECONDS", 0.5)

    def stall() -> tuple[int, dict[str, str], float]:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=20) as sock:
            started = time.monotonic()
            sock.sendall(head("/sms/dispatch", f"X-API-Key: {ADMIN_KEY}", length=len(BIG)))
            sock.sendall(BIG[:100_000])
            status, headers, _ = read_answer(sock)
            return status, headers, time.monotonic() - started

    status, headers, took = await asyncio.to_thread(stall)
    assert status == 413 and headers["connection"] == "close"
    assert 0.4 < took < 5


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


async def test_json_nested_too_deep_is_400_not_500(api: httpx.AsyncClient) -> None:
    for path in ("/sms/dispatch", "/webhooks", "/opt-outs"):
        r = await api.post(path, content=b"[" * 100_000 + b"]" * 100_000)
        assert r.status_code in (400, 413), (path, r.status_code, r.text)
        r = await api.post(path, content=b"[" * 20_000)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_json"


async def test_nul_in_text_is_422_on_every_engine(api: httpx.AsyncClient) -> None:
    """PostgreSQL cannot store U+0000 in text (it answered 500); refused alike everywhere."""
    r = await api.post("/templates", content=b'{"name": "n", "body": "a\\u0000b"}')
    assert r.status_code == 422 and "U+0000" in r.json()["error"]["message"], r.text
    r = await api.get("/sms/", params={"custom_id": "a\x00b"})
    assert r.status_code == 422, r.text
    assert (await api.get("/templates")).json()["items"] == []
