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
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

import bench


class Fleet:
    def __init__(self, url: str, tokens: list[str], mode: str, mute: int) -> None:
        self.url = url
        self.tokens = tokens
        self.mode = mode
        self.mute = mute  # the first `mute` phones never answer a send
        self.sockets: dict[int, ClientConnection] = {}
        self.online = 0
        self.sent = 0
        self.errors = 0
        self.running = True
        self.all_online = asyncio.Event()
        self.heartbeat_interval = 30.0

    def emit(self, **fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async def phone(self, i: int) -> None:
        token = self.tokens[i]
        headers = {"Authorization": f"Bearer {token}"}
        n = 0
        while self.running:
            welcomed = False
            try:
                async with connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    max_size=65536,
                    ping_interval=None,
                    open_timeout=120,
                    close_timeout=1,
                ) as ws:
                    self.sockets[i] = ws
                    await ws.send(
                        json.dumps(
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
                        )
                    )
                    beat: asyncio.Task[None] | None = None
                    try:
                        async for text in ws:
                            f = json.loads(text)
                            kind = f["type"]
                            if kind == "welcome":
                                welcomed = True
                                self.heartbeat_interval = f.get("heartbeat_interval", 30.0)
                                self.online += 1
                                if self.online == len(self.tokens):
                                    self.all_online.set()
                                beat = asyncio.create_task(self.heartbeats(ws))
                            elif kind == "send":
                                if i < self.mute:
                                    continue
                                n += 1
                                reply = "sent" if self.mode == "relay" else "accepted"
                                await ws.send(
                                    f'{{"type":"{reply}","id":"p{n}","message_id":'
                                    f'"{f["message_id"]}","attempt":{f.get("attempt", 1)}}}'
                                )
                                if self.mode == "relay":
                                    self.sent += 1
                            elif kind == "ownership" and f["owner"]:
                                n += 1
                                await ws.send(
                                    f'{{"type":"sent","id":"p{n}","message_id":'
                                    f'"{f["message_id"]}","attempt":{f["attempt"]}}}'
                                )
                                self.sent += 1
                    finally:
                        if beat is not None:
                            beat.cancel()
            except Exception:
                self.errors += 1
            if welcomed:
                self.online -= 1
                self.all_online.clear()
            self.sockets.pop(i, None)
            if self.running:
                await asyncio.sleep(0.05)

    async def heartbeats(self, ws: ClientConnection) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            n += 1
            await ws.send(
                json.dumps(
                    {
                        "type": "heartbeat",
                        "id": f"b{n}",
                        "battery": 90,
                        "charging": True,
                        "signal": 4,
                    }
                )
            )

    async def storm(self) -> None:
        t0 = time.perf_counter()
        errors_before = self.errors
        for ws in list(self.sockets.values()):
            ws.transport.abort()  # like every phone losing its network at once
        # Wait until the drop is seen, then until everyone is back.
        while self.all_online.is_set():
            await asyncio.sleep(0.01)
        await self.all_online.wait()
        self.emit(
            event="storm",
            seconds=round(time.perf_counter() - t0, 3),
            errors=self.errors - errors_before - len(self.tokens),
        )

    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line in ("", "quit"):
                self.running = False
                for ws in list(self.sockets.values()):
                    ws.transport.abort()
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
