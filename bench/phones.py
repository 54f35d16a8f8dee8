"""A fleet of lean simulated phones in one process, for benchmarks.

Speaks the hub's device protocol (``--mode hub``: accept at once, report ``sent`` as soon
as the hub confirms ownership) or the bare relay's one-step protocol (``--mode relay``:
answer ``sent`` at once). Leaner than ``android_client`` on purpose: the load side shares
one core, and what is measured is the hub.

Controlled over stdin, one command per line: ``storm`` (every socket drops and reconnects
at once), ``stats``, ``quit``. Reports JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from typing import Any, cast
from urllib.parse import urlsplit

import bench
from bench.wire import TEXT, ClientCodec, WireError, frame, upgrade_request

HELLO = json.dumps(
    {
        "type": "hello",
        "id": "h",
        "protocol": "1.0",
        "app_version": "bench",
        "battery": 90,
        "charging": True,
        "signal": 4,
        "sims": [{"slot": 0}],
    }
).encode()


class Phone(asyncio.Protocol):
    """One phone's connection: a WebSocket client on a bare asyncio protocol
    (bench/wire.py), the cheapest way this process has to hold thousands of them."""

    def __init__(self, fleet: Fleet, i: int, lost: asyncio.Future[None]) -> None:
        self.fleet, self.i, self.lost = fleet, i, lost
        self.transport: asyncio.Transport | None = None
        self.codec: ClientCodec | None = None
        self.welcomed = False
        self.beat: asyncio.TimerHandle | None = None
        self.beats = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        request, accept = upgrade_request(
            self.fleet.host,
            self.fleet.path,
            {"Authorization": f"Bearer {self.fleet.tokens[self.i]}"},
        )
        self.codec = ClientCodec(accept)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        assert self.codec is not None and self.transport is not None
        was_open = self.codec.open
        try:
            texts, reply = self.codec.receive(data)
        except (WireError, UnicodeDecodeError):
            self.fleet.errors += 1
            self.transport.abort()
            return
        if reply:
            self.transport.write(reply)
        if self.codec.open and not was_open and not self.codec.closed:
            self.transport.write(frame(TEXT, HELLO))
        for text in texts:
            self.fleet.received(self, json.loads(text))

    def send(self, text: str) -> None:
        assert self.transport is not None and self.codec is not None
        if not self.codec.closed:  # no data frames after the closing handshake
            self.transport.write(frame(TEXT, text.encode()))

    def heartbeat(self) -> None:
        self.beats += 1
        self.send(
            f'{{"type":"heartbeat","id":"b{self.beats}","battery":90,"charging":true,"signal":4}}'
        )
        self.beat = asyncio.get_running_loop().call_later(
            self.fleet.heartbeat_interval, self.heartbeat
        )

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.beat is not None:
            self.beat.cancel()
        if not self.lost.done():
            self.lost.set_result(None)


class Fleet:
    def __init__(self, url: str, tokens: list[str], mode: str, mute: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.tokens = tokens
        self.mode = mode
        self.mute = mute  # the first `mute` phones never answer a send
        self.sockets: dict[int, Phone] = {}
        self.online = 0
        self.sent = 0
        self.errors = 0  # connections refused or broken before the phone was welcomed
        self.running = True
        self.all_online = asyncio.Event()
        self.heartbeat_interval = 30.0
        self.frames = 0

    def emit(self, **fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async def phone(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            lost: asyncio.Future[None] = loop.create_future()
            phone: Phone | None = None
            try:
                _, connected = await asyncio.wait_for(
                    loop.create_connection(
                        functools.partial(Phone, self, i, lost), self.host, self.port
                    ),
                    120,
                )
                phone = self.sockets[i] = connected
                await lost
            except Exception:
                self.errors += 1
            if phone is not None and phone.welcomed:
                self.online -= 1
                self.all_online.clear()
            elif phone is not None:
                self.errors += 1  # lost before its welcome
            self.sockets.pop(i, None)
            if self.running:
                await asyncio.sleep(0.05)

    def received(self, phone: Phone, f: dict[str, Any]) -> None:
        kind = f["type"]
        if kind == "welcome":
            phone.welcomed = True
            self.heartbeat_interval = f.get("heartbeat_interval", 30.0)
            self.online += 1
            if self.online == len(self.tokens):
                self.all_online.set()
            phone.beat = asyncio.get_running_loop().call_later(
                self.heartbeat_interval, phone.heartbeat
            )
        elif kind == "send":
            if phone.i < self.mute:
                return
            self.frames += 1
            reply = "sent" if self.mode == "relay" else "accepted"
            phone.send(
                f'{{"type":"{reply}","id":"p{self.frames}","message_id":'
                f'"{f["message_id"]}","attempt":{f.get("attempt", 1)}}}'
            )
            if self.mode == "relay":
                self.sent += 1
        elif kind == "ownership" and f["owner"]:
            self.frames += 1
            phone.send(
                f'{{"type":"sent","id":"p{self.frames}","message_id":'
                f'"{f["message_id"]}","attempt":{f["attempt"]}}}'
            )
            self.sent += 1

    async def storm(self) -> None:
        t0 = time.perf_counter()
        errors_before = self.errors
        for phone in list(self.sockets.values()):
            phone.abort()  # like every phone losing its network at once
        # Wait until the drop is seen, then until everyone is back.
        while self.all_online.is_set():
            await asyncio.sleep(0.01)
        await self.all_online.wait()
        self.emit(
            event="storm",
            seconds=round(time.perf_counter() - t0, 3),
            errors=self.errors - errors_before,
        )

    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line in ("", "quit"):
                self.running = False
                for phone in list(self.sockets.values()):
                    phone.abort()
                return
            if line == "storm":
                await self.storm()
            elif line == "stats":
                self.emit(event="stats", online=self.online, sent=self.sent, errors=self.errors)

    async def run(self, connect_rate: float) -> None:
        t0 = time.perf_counter()
        tasks = []
        for i in range(len(self.tokens)):
            tasks.append(asyncio.create_task(self.phone(i)))
            if connect_rate and i % 50 == 49:
                await asyncio.sleep(50 / connect_rate)
        await self.all_online.wait()
        self.emit(event="online", count=self.online, seconds=round(time.perf_counter() - t0, 3))
        await self.control()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True, help="JSON file with a list of tokens")
    parser.add_argument("--mode", choices=["hub", "relay"], default="hub")
    parser.add_argument("--mute", type=int, default=0)
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=0.0,
        help="phones per second at start (0: all at once)",
    )
    args = parser.parse_args()
    with open(args.tokens) as f:
        tokens = json.load(f)
    await Fleet(args.url, tokens, args.mode, args.mute).run(args.connect_rate)


if __name__ == "__main__":
    bench.run(main())
