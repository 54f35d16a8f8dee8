"""The phones' WebSocket server (smsgw/api/device_ws.py) at the edges of the wire: refusals
before the upgrade, frames that are not whole or not text, pings, and a phone that drops
right after reporting. Real uvicorn, real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from smsgw.api.device_ws import DeviceSocket
from smsgw.protocol import CloseCode
from tests.harness import Farm, HubServer
from tests.smsgw.test_bad_input import HELLO, opened, ws_url

TO = "+12025550999"


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return ws.close_code


async def test_refusals_are_http_errors_with_the_api_error_body(hub: HubServer, farm: Farm) -> None:
    phone = await farm.add(connect=False)
    base = hub.url.replace("http://", "ws://")
    cases = [
        (base + "/ws/other", {"Authorization": f"Bearer {phone.token}"}, 404, "not_found"),
        (base + "/ws/device", {}, 401, "unauthorized"),
        (base + "/ws/device", {"Authorization": "Bearer dev_nope_nope"}, 401, "unauthorized"),
    ]
    for url, headers, status, code in cases:
        with pytest.raises(InvalidStatus) as err:
            async with connect(url, additional_headers=headers):
                pass
        response = err.value.response
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(response.body)["error"]["code"] == code
    # The phone's own socket still works afterwards.
    ws = await opened(hub, phone.token)
    await ws.close()


async def test_a_fragmented_frame_is_assembled_and_pings_are_answered(
    hub: HubServer, farm: Farm
) -> None:
    phone = await farm.add(connect=False)
    headers = {"Authorization": f"Bearer {phone.token}"}
    async with connect(ws_url(hub), additional_headers=headers) as ws:
        text = json.dumps(HELLO)
        await ws.send([text[:10], text[10:25], text[25:]])  # one message in three frames
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and welcome["ref"] == "h"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)


async def test_invalid_utf8_closes_with_1007(hub: HubServer, farm: Farm) -> None:
    phone = await farm.add(connect=False)
    headers = {"Authorization": f"Bearer {phone.token}"}
    async with connect(ws_url(hub), additional_headers=headers) as ws:
        await ws.send(json.dumps(HELLO))
        await ws.recv()
        ws.protocol.send_text(b'{"type": "heartbeat", "id": "\xc3\x28"}')
        ws.send_data()
        assert await closed_with(ws) == 1007


async def test_a_report_sent_just_before_the_phone_drops_is_recorded(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(connect=False)
    ws = await opened(hub, phone.token)
    body = {"to": TO, "message": "last words", "device_id": phone.device_id}
    request = asyncio.create_task(api.post("/sms/send", json=body))
    command = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert command["type"] == "send"
    mid, attempt = command["message_id"], command["attempt"]
    await ws.send(
        json.dumps({"type": "accepted", "id": "a", "message_id": mid, "attempt": attempt})
    )
    ownership = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ownership["type"] == "ownership" and ownership["owner"] is True
    await ws.send(json.dumps({"type": "sent", "id": "s", "message_id": mid, "attempt": attempt}))
    ws.transport.abort()  # the network goes before any ack can come back
    await request
    for _ in range(100):
        msg = (await api.get(f"/sms/{mid}")).json()
        if msg["status"] == "SENT":
            break
        await asyncio.sleep(0.05)
    assert msg["status"] == "SENT" and msg["device_id"] == phone.device_id
    for _ in range(100):
        if not (await api.get(f"/devices/{phone.device_id}")).json()["online"]:
            break
        await asyncio.sleep(0.05)
    assert (await api.get(f"/devices/{phone.device_id}")).json()["online"] is False


def _inbound(i: int) -> str:
    return json.dumps(
        {
            "type": "inbound",
            "id": f"i{i}",
            "local_id": f"L{i}",
            "from": "+12025550111",
            "body": f"hello {i}",
            "received_at": "2026-01-01T00:00:00Z",
        }
    )


@pytest.mark.parametrize("end", ["fin", "close_frame"])
async def test_every_frame_sent_before_the_phone_goes_is_handled(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, end: str
) -> None:
    # Once the socket is gone, writing the held-back acks fails; the frames still waiting
    # to be handled must be handled anyway (they were lost here before, 7 to 15 of 40).
    phone = await farm.add(connect=False)
    ws = await opened(hub, phone.token)
    for i in range(40):
        ws.protocol.send_text(_inbound(i).encode())
    if end == "close_frame":
        ws.protocol.send_close(1000, "bye")
    ws.send_data()
    if end == "fin":
        ws.transport.close()
    items: list[object] = []
    for _ in range(100):
        items = (await api.get("/sms/inbound", params={"limit": 200})).json()["items"]
        if len(items) == 40:
            break
        await asyncio.sleep(0.05)
    assert len(items) == 40


async def test_duplicate_credential_headers_are_refused_with_400(hub: HubServer) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws/device HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5)  # the hub answers and hangs up
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "bad_request"


async def test_a_phone_that_stopped_reading_cannot_hold_up_its_close(
    hub: HubServer, farm: Farm
) -> None:
    phone = await farm.add(connect=False)
    ws = await opened(hub, phone.token)
    [conn] = [c for c in hub.hub.connections if c.device_id == phone.device_id]
    sock = conn.transport
    assert isinstance(sock, DeviceSocket) and sock.transport is not None
    # Small kernel buffers on both ends, so that what is not read piles up in the hub.
    server_socket = sock.transport.get_extra_info("socket")
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    ws.transport.pause_reading()  # the phone's app stalls; its downlink fills up
    for _ in range(8):  # pings make the hub write (pongs) without the phone reading
        for _ in range(1000):
            ws.protocol.send_ping(b"x" * 125)
        ws.send_data()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    # The hub stopped reading too, rather than buffer a megabyte of replies...
    assert sock.transport.get_write_buffer_size() < 256 * 1024
    heartbeat = {"type": "heartbeat", "id": "hb", "battery": 80, "signal": 3}
    ws.protocol.send_text(json.dumps(heartbeat).encode())
    ws.send_data()
    await asyncio.sleep(0.005)  # its ack may be queued now
    # ...and a close (watchdog, drain, a newer session) returns at once, whatever is queued,
    # and hangs up on the phone after CLOSE_TIMEOUT if it never answers.
    await asyncio.wait_for(conn.close(CloseCode.HEARTBEAT_TIMEOUT, "silent"), 2)
    assert conn.closed and sock._close_timer is not None
    ws.transport.abort()


# -- back-pressure, without a network: the protocol class over a recording transport ----


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _open_socket() -> tuple[DeviceSocket, _Recording]:
    from types import SimpleNamespace

    from websockets.protocol import State

    state = SimpleNamespace(connections=set(), tasks=set())
    config = SimpleNamespace(root_path="", ws_max_size=65536)
    sock = DeviceSocket(config, state)
    transport = _Recording()
    sock.connection_made(transport)
    assert sock.ws is not None
    sock.ws.state = State.OPEN  # as after a handshake
    return sock, transport


async def test_a_full_transport_holds_the_writer_until_there_is_room() -> None:
    sock, transport = _open_socket()
    await sock.send_texts(["a", "b"])
    assert len(transport.written) == 1  # both frames in one write
    sock.pause_writing()
    assert not transport.reading  # a phone that does not read is not read from either
    writer = asyncio.create_task(sock.send_texts(["c"]))
    await asyncio.sleep(0.01)
    assert not writer.done() and len(transport.written) == 2  # written, then waits
    sock.resume_writing()
    await asyncio.wait_for(writer, 1)
    assert transport.reading


async def test_a_writer_waiting_for_room_learns_the_connection_is_gone() -> None:
    sock, _ = _open_socket()
    sock.pause_writing()
    writer = asyncio.create_task(sock.send_texts(["c"]))
    await asyncio.sleep(0.01)
    sock.connection_lost(None)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(writer, 1)
    with pytest.raises(ConnectionError):
        await sock.send_texts(["d"])
