"""Slow and idle clients cannot hold the hub's sockets (smsgw/deadlines.py): thousands of
connections that never send a byte, request heads and a WebSocket upgrade sent a byte at a
time, bodies that trickle in. Meanwhile the hub serves a phone and the API as usual, and
afterwards every one of those connections has been closed by the hub."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from tests.harness import Farm, HubServer

pytestmark = pytest.mark.hub_settings(http_head_timeout=1.5, http_body_timeout=1.5)
IDLE = 2000


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the hub closes the connection (EOF or reset) within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:  # before OSError: TimeoutError is one
        return False
    except (ConnectionError, OSError):
        return True


async def trickle(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(pause)


async def test_slow_and_idle_clients_are_cut_off_while_the_hub_serves(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add("steady")
    host, port = "127.0.0.1", hub.port
    idle = [await asyncio.open_connection(host, port) for _ in range(IDLE)]
    heads = [await asyncio.open_connection(host, port) for _ in range(50)]
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    upgrade = (
        b"GET /ws/device HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )  # never finished: no blank line
    bodies = [await asyncio.open_connection(host, port) for _ in range(50)]
    post = b"POST /sms/dispatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: 500\r\n\r\n"
    tricklers = [
        asyncio.create_task(trickle(w, upgrade if i % 5 == 0 else head, 0.1))
        for i, (_, w) in enumerate(heads)
    ]
    for _, w in bodies:
        w.write(post)
        await w.drain()
    tricklers += [asyncio.create_task(trickle(w, b"{" * 500, 0.1)) for _, w in bodies]
    started = time.monotonic()
    try:
        # The hub serves as usual meanwhile: a phone sends, the API answers.
        for i in range(10):
            r = await api.post("/sms/dispatch", json={"to": f"+1202555012{i}", "message": "x"})
            assert r.status_code == 200 and r.json()["status"] in ("SENT", "DELIVERED"), r.text
        assert len(phone.transmitted_ids) == 10
        assert (await api.get("/health")).status_code == 200
        # Every slow or idle connection is closed by the hub, soon after its deadline.
        waited = 4.0 - (time.monotonic() - started)
        results = await asyncio.gather(
            *(closed_by_server(r, max(waited, 0.5) + 3.0) for r, _ in idle + heads + bodies)
        )
        assert all(results), f"{results.count(False)} connections still open"
    finally:
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)
        for _, w in idle + heads + bodies:
            w.close()
    # A slow client that does finish in time is served.
    reader, writer = await asyncio.open_connection(host, port)
    await trickle(writer, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0.01)
    answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_request_that_takes_long_to_answer_is_not_cut(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    """The deadlines are for what the client sends, not for the hub's work: a dispatch
    that waits longer than both for its phone still gets its answer."""
    await farm.add("slow", accept_delay=0.2, send_delay=2.0)
    r = await api.post("/sms/dispatch", json={"to": "+12025550123", "message": "x"})
    assert r.status_code == 200 and r.json()["status"] in ("SENT", "DELIVERED"), r.text
