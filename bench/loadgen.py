"""REST load generator: closed-loop (max rate) and open-loop (fixed offered rate) runs of
``POST /sms/dispatch`` over persistent HTTP/1.1 connections.

A minimal client on asyncio streams, because a general-purpose client would spend more CPU
than the server under test and share its core with the simulated phones. Open-loop means
requests are *scheduled* at a fixed rate whatever the server does; latency is measured
from the scheduled time, so a slow server cannot hide its queueing by slowing us down.

Runs as its own process: ``python -m bench.loadgen closed|open ...``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import bench


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def add(self, status: int, ms: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:  # a fast refusal (429, 503) must not improve the figures
            self.latencies_ms.append(ms)

    def summary(self, seconds: float) -> dict[str, object]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else 0.0

        ok = self.statuses.get(200, 0)
        return {
            "requests": sum(self.statuses.values()),
            "ok": ok,
            "per_s": round(ok / seconds, 1),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "errors": self.errors,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(lat), 3) if lat else 0.0,
        }


class Conn:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int, path: str, key: str) -> None:
        self.host, self.port, self.path, self.key = host, port, path, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def body_for(i: int) -> bytes:
    return json.dumps({"to": f"+1202555{i % 10_000:04d}", "message": f"bench {i}"}).encode()


async def closed_loop(conns: list[Conn], seconds: float) -> Stats:
    stats = Stats()
    stop = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = await conn.post(body_for(next(counter)))
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                stats.errors += 1
                conn.close()
                continue
            stats.add(status, (time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(c) for c in conns))
    return stats


async def open_loop(conns: list[Conn], rate: float, seconds: float) -> Stats:
    stats = Stats()
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    extra: list[Conn] = []
    start = time.perf_counter()
    total = int(rate * seconds)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, scheduled: float) -> None:
        # Out of idle connections means the server is behind: open another rather than
        # wait, so the offered rate holds.
        if idle.empty():
            conn = Conn(conns[0].host, conns[0].port, conns[0].path, conns[0].key)
            extra.append(conn)
        else:
            conn = idle.get_nowait()
        try:
            status, _ = await conn.post(body_for(i))
            stats.add(status, (time.perf_counter() - scheduled) * 1000)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            stats.errors += 1
            conn.close()
        idle.put_nowait(conn)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    for c in extra:
        c.close()
    return stats


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--url", default="http://127.0.0.1:9000")
    parser.add_argument("--path", default="/sms/dispatch")
    parser.add_argument("--key", default="")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    host, port = args.url.removeprefix("http://").split(":")
    conns = [Conn(host, int(port), args.path, args.key) for _ in range(args.concurrency)]
    for c in conns:
        await c.open()
    if args.warmup > 0:
        await closed_loop(conns, args.warmup)
    if args.mode == "closed":
        stats = await closed_loop(conns, args.seconds)
    else:
        stats = await open_loop(conns, args.rate, args.seconds)
    for c in conns:
        c.close()
    print(json.dumps({"mode": args.mode, "rate": args.rate, **stats.summary(args.seconds)}))


if __name__ == "__main__":
    bench.run(main())
