"""A live fuzzer of the device socket (issue 21): a real hub under uvicorn serves
well-behaved simulated phones that send a steady stream of dispatches while fuzz clients,
over real loopback sockets, send it everything a phone should not.

The fuzz clients hold valid device tokens of their own (their devices disabled, so the
hub offers them nothing) or invalid ones, and send: valid frames in the wrong order and
about messages they do not own (the ids the hub really dispatched: accepts, reports and
failures of other phones' messages), mutated frames, JSON cut short or nested too deep,
binary frames, fragmented messages, messages over 64 KiB (whole and in fragments),
invalid UTF-8 in a text frame, raw frames that break RFC 6455 (reserved opcodes and bits,
unmasked, oversize or fragmented control frames, a continuation of nothing), floods of
frames and pings, and sockets that stop reading.

What must hold: the hub answers ``/health`` throughout and logs no error; every dispatch
ends SENT or DELIVERED on a well-behaved phone, transmitted once; no fuzz client is ever
told it owns a message; every frame the hub writes passes the agent's validator; every
close has a documented code; memory (tracemalloc, the hub is in this process) is back
near where it started. Bounded by tests/fuzz/budget.py (``SMSGW_FUZZ_SECONDS``).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import random
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidState,
    InvalidStatus,
)
from websockets.protocol import State

from android_client import wire
from tests.fuzz.budget import SCALE, SECONDS, SEED, scaled
from tests.fuzz.mutate import Mutator, raw_frame
from tests.harness import Farm, HubServer, wait_for

# A few phones would reach their default daily quota (90) and one recipient its hourly
# limit (30): neither is what this test is about.
pytestmark = pytest.mark.hub_settings(default_daily_quota=1_000_000, recipient_hourly_limit=None)

GOOD_PHONES = 3
# Fuzz clients of the protocol's content, each with a device of its own, and of the
# WebSocket layer, sharing two devices (so their sessions also replace each other: 4000).
CONTENT_CLIENTS = 4
TRANSPORT_CLIENTS = 2
FUZZ_DEVICES = CONTENT_CLIENTS + 2
DISPATCHES = scaled(200)
MAX_FRAMES = scaled(6000)

# Close codes a fuzz client may see (docs/protocol.md §7): ours echoed (1000), RFC 6455
# violations refused by websockets (1002), binary (1003), invalid UTF-8 (1007), over
# 64 KiB (1009), another session of the device (4000), the version (4002), the protocol
# (4003). Never 1001 or 1011: those are the hub's "internal error".
DOCUMENTED_CLOSES = {1000, 1002, 1003, 1007, 1009, 4000, 4002, 4003}


@dataclass
class Stats:
    frames: int = 0  # WebSocket frames the fuzz clients wrote
    bytes: int = 0
    sessions: int = 0
    refused_upgrades: collections.Counter[int] = field(default_factory=collections.Counter)
    closes: collections.Counter[int] = field(default_factory=collections.Counter)
    # What a session did last before each close: (code, abuse), to tell what closes what.
    closes_after: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_hub_frames: list[str] = field(default_factory=list)
    owned_by_fuzz: list[dict[str, Any]] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    close_wait: float = 0.0  # the longest closing handshake of a fuzz client

    def budget_left(self) -> bool:
        return self.frames < MAX_FRAMES


class ErrorLog(logging.Handler):
    """Every ERROR the hub (or uvicorn) logs: a handler failed, a parser crashed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in self.records]


def ws_url(hub: HubServer) -> str:
    return hub.url.replace("http://", "ws://") + "/ws/device"


async def read_all(ws: ClientConnection, stats: Stats, welcomed: asyncio.Event) -> None:
    """What the hub writes to a fuzz client: each frame checked as the agent would."""
    try:
        async for message in ws:
            if isinstance(message, bytes):
                stats.bad_hub_frames.append(f"binary frame {message[:40]!r}")
                continue
            try:
                raw = json.loads(message)
                wire.check(wire.HUB_FRAMES, raw)
            except (ValueError, wire.WireError) as exc:
                stats.bad_hub_frames.append(f"{exc}: {message[:200]}")
                continue
            stats.received[raw["type"]] += 1
            if raw["type"] == "welcome":
                welcomed.set()
            if raw["type"] == "ownership" and raw["owner"]:
                stats.owned_by_fuzz.append(raw)  # nothing was ever offered to these
    except ConnectionClosed:
        pass


def chunks(text: str, rng: random.Random) -> Iterator[str]:
    """A message in fragments (websockets sends an iterable as one fragmented message)."""
    i = 0
    while i < len(text):
        n = rng.randint(1, max(1, len(text) // 2))
        yield text[i : i + n]
        i += n


async def fuzz_session(
    hub: HubServer, token: str, rng: random.Random, mutator: Mutator, stats: Stats,
    transport: bool,
) -> None:  # fmt: skip
    """One connection of a fuzz client: a hello (usually), then a burst of abuse: of the
    protocol's content (``transport`` false: text frames only, a long session past the
    welcome), or of the WebSocket layer, which mostly ends the session at once."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(
        ws_url(hub), additional_headers=headers, max_size=None, ping_interval=None,
        # A close frame waits behind the frames sent before it: the hub reads a phone
        # only as fast as it handles its frames (back-pressure), a flood of inbound SMS
        # at the store's pace.
        open_timeout=10, close_timeout=15,
    ) as ws:  # fmt: skip
        stats.sessions += 1
        welcomed = asyncio.Event()
        reader = asyncio.create_task(read_all(ws, stats, welcomed))

        async def send(message: str | bytes) -> None:
            await ws.send(message)
            stats.frames += 1
            stats.bytes += len(message)

        last = "hello"
        try:
            if rng.random() < (0.97 if not transport else 0.7):
                hello = mutator.frame("hello")
                hello["held"] = [mutator.message_id() for _ in range(rng.randrange(5))]
                await send(json.dumps(hello))
                if not transport:
                    await asyncio.wait_for(welcomed.wait(), 10)
            for _ in range(rng.randint(1, 60 if transport else 300)):
                if not stats.budget_left():
                    break
                if transport:
                    last = await abuse_transport(ws, rng, mutator, stats, send)
                else:
                    last = await abuse_content(ws, rng, mutator, stats, send)
            await asyncio.sleep(rng.choice([0, 0, 0.05, 0.2]))
        except (ConnectionClosed, InvalidState):  # the hub closed it: what this is about
            pass
        finally:
            started = time.monotonic()
            await ws.close()
            await reader
            stats.close_wait = max(stats.close_wait, time.monotonic() - started)
            code = int(ws.close_code if ws.close_code is not None else 1006)
            stats.closes[code] += 1
            stats.closes_after[code, last] += 1


async def abuse_content(
    ws: ClientConnection, rng: random.Random, mutator: Mutator, stats: Stats, send: Any
) -> str:
    """Abuse in text frames: answered with error frames (20 in a row close with 4003)."""
    roll = rng.random()
    if roll < 0.65:
        await send(mutator.text())
        return "text"
    if roll < 0.8:
        text = mutator.text() if rng.random() < 0.5 else json.dumps(mutator.frame())
        parts = list(chunks(text, rng)) or [""]
        await ws.send(parts)  # one message, several frames
        stats.frames += len(parts)
        stats.bytes += len(text)
        return "fragments"
    if roll < 0.88:
        for _ in range(rng.randint(20, 100)):  # as fast as the socket takes them
            await send(json.dumps(mutator.frame(rng.choice(["heartbeat", "sent", "inbound"]))))
        return "flood"
    if roll < 0.95:
        # A phone that stops reading while it keeps writing: back-pressure, not memory.
        assert ws.transport is not None
        ws.transport.pause_reading()
        for _ in range(rng.randint(10, 100)):
            await send(json.dumps(mutator.frame()))
        await asyncio.sleep(0.05)
        ws.transport.resume_reading()
        return "not_reading"
    await asyncio.sleep(rng.choice([0.01, 0.1]))
    return "pause"


async def abuse_transport(
    ws: ClientConnection, rng: random.Random, mutator: Mutator, stats: Stats, send: Any
) -> str:
    """Abuse of the WebSocket layer: most of it closes (1002, 1003, 1007, 1009)."""
    roll = rng.random()
    if roll < 0.3:
        await send(mutator.text())
        return "text"
    if roll < 0.4:
        await send(rng.randbytes(rng.randrange(1, 100)))  # binary: 1003
        return "binary"
    if roll < 0.5:
        size = wire.MAX_FRAME_BYTES + rng.randint(1, 10_000)  # over 64 KiB: 1009
        if rng.random() < 0.5:
            await send("x" * size)
        else:
            parts = ["y" * 16_384] * (size // 16_384 + 1)
            await ws.send(parts)
            stats.frames += len(parts)
            stats.bytes += size
        return "oversize"
    if roll < 0.6:
        # Invalid UTF-8 in a text frame (websockets' sans-I/O layer writes what it is given).
        payload = rng.choice([b"\xc3\x28", b'{"type":"heartbeat","id":"\xff"}', b"\xed\xa0\x80"])
        ws.protocol.send_text(payload)
        ws.send_data()
        stats.frames += 1
        return "invalid_utf8"
    if roll < 0.85:
        return await send_raw(ws, rng, stats)
    for _ in range(rng.randint(10, 100)):
        ws.protocol.send_ping(rng.randbytes(rng.randrange(126)))
    ws.send_data()
    stats.frames += 1
    return "pings"


async def send_raw(ws: ClientConnection, rng: random.Random, stats: Stats) -> str:
    """A frame built by hand, breaking RFC 6455 in one way (the hub must close with 1002
    and go on), or a legal one websockets would not write this way."""
    text = b'{"type":"heartbeat","id":"r","battery":5,"signal":1}'
    frames = {
        "reserved_opcode": raw_frame(0x3, b"reserved opcode", rng=rng),
        "reserved_control": raw_frame(0xB, b"reserved control", rng=rng),
        "rsv_bits": raw_frame(0x1, text, rsv=rng.randint(1, 7), rng=rng),
        "unmasked": raw_frame(0x1, text, masked=False),
        "long_ping": raw_frame(0x9, b"p" * 126, rng=rng),
        "fragmented_ping": raw_frame(0x9, b"p", fin=False, rng=rng),
        "lone_continuation": raw_frame(0x0, b"continuation of nothing", rng=rng),
        "close_1_byte": raw_frame(0x8, b"\x03", rng=rng),
        "close_999": raw_frame(0x8, b"\x03\xe7", rng=rng),
        # Legal: a text message in three frames, a ping between them.
        "ping_amid_fragments": raw_frame(0x1, text[:10], fin=False, rng=rng)
        + raw_frame(0x9, b"mid", rng=rng)
        + raw_frame(0x0, text[10:30], fin=False, rng=rng)
        + raw_frame(0x0, text[30:], rng=rng),
        # A new text message while one is still in fragments.
        "text_amid_fragments": raw_frame(0x1, text[:10], fin=False, rng=rng)
        + raw_frame(0x1, text, rng=rng),
    }
    name = rng.choice(sorted(frames))
    if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
        raise InvalidState("closed")  # the hub closed it already: the session ends
    ws.transport.write(frames[name])
    stats.frames += 1
    stats.bytes += len(frames[name])
    await asyncio.sleep(0)
    return f"raw:{name}"


async def fuzz_client(
    hub: HubServer, tokens: list[str], rng: random.Random, mutator: Mutator,
    stats: Stats, deadline: float, transport: bool,
) -> None:  # fmt: skip
    """Sessions one after another until the time or the frame budget is spent."""
    while time.monotonic() < deadline and stats.budget_left():
        try:
            await fuzz_session(hub, rng.choice(tokens), rng, mutator, stats, transport)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            stats.bad_hub_frames.append(f"session failed: {exc!r}")


async def bad_credentials(
    hub: HubServer, rng: random.Random, stats: Stats, deadline: float
) -> None:
    """Upgrades with no, invalid or malformed credentials, and TCP garbage: refused over
    HTTP (401, then 429 once the address has failed too often), never a socket."""
    while time.monotonic() < deadline:
        headers = rng.choice(
            [{}, {"Authorization": "Bearer dev_nope_nope"}, {"Authorization": "Bearer"},
             {"X-API-Key": "sk_000000000000_nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}]
        )  # fmt: skip
        try:
            async with connect(ws_url(hub), additional_headers=headers, open_timeout=10):
                stats.bad_hub_frames.append(f"upgrade accepted with {headers}")
        except InvalidStatus as exc:
            stats.refused_upgrades[exc.response.status_code] += 1
        if rng.random() < 0.3:
            _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            writer.write(rng.choice([rng.randbytes(200), b"GET /ws/device HTTP/1.1\r\n\r\n"]))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def watch_health(hub: HubServer, stats: Stats, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = await client.get("/health")
                if r.status_code != 200:
                    stats.health_failures.append(f"{r.status_code} {r.text[:100]}")
            except httpx.HTTPError as exc:
                stats.health_failures.append(repr(exc))
            stats.health.append(time.monotonic() - started)
            await asyncio.sleep(0.1)


async def dispatch_all(api: httpx.AsyncClient, ids: list[str], seconds: float) -> None:
    """DISPATCHES through POST /sms/dispatch, spread over the fuzzing, a few at a time;
    one in four waits for SENT (the synchronous path), the rest return 202 at once."""
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with limit:
            body = {"to": f"+1202555{100 + i % 100:04d}", "message": f"fuzz {i}",
                    "wait": i % 4 == 0}  # fmt: skip
            r = await api.post("/sms/dispatch", json=body)
            assert r.status_code in (200, 202), r.text
            ids.append(r.json()["message_id"])

    tasks = []
    for i in range(DISPATCHES):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(seconds / DISPATCHES)
    await asyncio.gather(*tasks)


async def messages(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Every message of the hub, by id (GET /sms/, page by page)."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = (await api.get("/sms/", params=params)).json()
        found.update((m["id"], m) for m in page["items"])
        if not page["next_cursor"]:
            return found
        params["cursor"] = page["next_cursor"]


async def test_the_device_socket_survives_a_fuzzer_beside_well_behaved_phones(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    rng = random.Random(SEED)
    good = [await farm.add(f"good-{i}") for i in range(GOOD_PHONES)]
    fuzz_tokens = []
    for i in range(FUZZ_DEVICES):
        phone = await farm.add(f"fuzz-{i}", connect=False)
        r = await api.patch(f"/devices/{phone.device_id}", json={"enabled": False})
        assert r.status_code == 200, r.text
        fuzz_tokens.append(phone.token)
    errors = ErrorLog()
    watched = [logging.getLogger("smsgw"), logging.getLogger("uvicorn")]
    for logger in watched:
        logger.addHandler(errors)
    stats = Stats()
    ids: list[str] = []
    mutator = Mutator(rng, ids)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        stop = asyncio.Event()
        health = asyncio.create_task(watch_health(hub, stats, stop))
        deadline = time.monotonic() + SECONDS
        started = time.monotonic()
        fuzzers = [
            asyncio.create_task(
                fuzz_client(
                    hub,
                    [token],
                    random.Random(rng.random()),
                    mutator,
                    stats,
                    deadline,
                    transport=False,
                )
            )
            for token in fuzz_tokens[:CONTENT_CLIENTS]
        ]
        fuzzers += [
            asyncio.create_task(
                fuzz_client(
                    hub,
                    fuzz_tokens[CONTENT_CLIENTS:],
                    random.Random(rng.random()),
                    mutator,
                    stats,
                    deadline,
                    transport=True,
                )
            )
            for _ in range(TRANSPORT_CLIENTS)
        ]
        fuzzers.append(
            asyncio.create_task(bad_credentials(hub, random.Random(rng.random()), stats, deadline))
        )
        await dispatch_all(api, ids, SECONDS)
        await asyncio.wait_for(asyncio.gather(*fuzzers), SECONDS + 60)
        fuzzed = time.monotonic() - started

        # Every dispatch ends SENT or DELIVERED, on a well-behaved phone.
        async def finished() -> bool:
            found = await messages(api)
            return all(found[mid]["status"] in ("SENT", "DELIVERED") for mid in ids)

        await wait_for(finished, 60, "every dispatch SENT or DELIVERED")
        stop.set()
        await health
        # The hub handles what the last fuzz sockets sent before they closed, then forgets
        # them: only the well-behaved phones' sessions are left.
        good_ids = {p.device_id for p in good}

        def only_good() -> bool:
            return {c.device_id for c in hub.hub.connections} == good_ids

        await wait_for(only_good, 60, "the fuzz sessions to end")
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
        for logger in watched:
            logger.removeHandler(errors)

    owners: collections.Counter[str] = collections.Counter()
    found = await messages(api)
    assert len(found) == len(ids)  # the fuzzers created nothing
    for mid in ids:
        assert found[mid]["device_id"] in good_ids, found[mid]
        owners[found[mid]["device_id"]] += 1
    transmitted = collections.Counter(m for p in good for m in p.transmitted_ids)
    assert set(transmitted) == set(ids)
    assert max(transmitted.values()) == 1, "a message left on the radio twice"

    print(
        f"\ndevice fuzz (seed {SEED}, {SECONDS:g} s budget, scale {SCALE:g}): "
        f"{stats.frames} frames ({stats.bytes / 1e6:.1f} MB) in {stats.sessions} sessions "
        f"over {fuzzed:.1f} s; closes {dict(stats.closes)} ({dict(stats.closes_after)}); "
        f"refused upgrades "
        f"{dict(stats.refused_upgrades)}; hub frames to fuzzers {dict(stats.received)}; "
        f"{len(ids)} dispatches on {sorted(owners.values())}; /health max "
        f"{max(stats.health) * 1000:.0f} ms over {len(stats.health)} checks; longest close "
        f"{stats.close_wait:.1f} s; "
        f"memory +{grown / 1e6:.1f} MB after (peak +{peak / 1e6:.1f} MB)"
    )
    assert stats.frames >= 500, "the fuzzer hardly ran"
    assert not errors.records, "\n".join(errors.lines()[:5])
    assert not stats.health_failures, stats.health_failures[:5]
    assert max(stats.health) < 5.0, "the hub stalled"
    assert not stats.bad_hub_frames, stats.bad_hub_frames[:5]
    assert not stats.owned_by_fuzz, stats.owned_by_fuzz[:5]
    assert set(stats.closes) <= DOCUMENTED_CLOSES, stats.closes
    assert set(stats.refused_upgrades) <= {401, 429}, stats.refused_upgrades
    # The fuzz sessions are gone, with what they held (a generous bound: a leak of a
    # few KiB per session or frame would show as tens of MB).
    assert grown < 32e6, f"memory grew by {grown / 1e6:.1f} MB"


RAW_VIOLATIONS = {
    # name: (what the phone writes after its hello, the close code it must read)
    "reserved_opcode": (lambda r: raw_frame(0x3, b"x", rng=r), 1002),
    "reserved_control": (lambda r: raw_frame(0xB, b"x", rng=r), 1002),
    "rsv_bits": (lambda r: raw_frame(0x1, b"{}", rsv=4, rng=r), 1002),
    "unmasked": (lambda r: raw_frame(0x1, b"{}", masked=False), 1002),
    "long_ping": (lambda r: raw_frame(0x9, b"p" * 126, rng=r), 1002),
    "fragmented_ping": (lambda r: raw_frame(0x9, b"p", fin=False, rng=r), 1002),
    "lone_continuation": (lambda r: raw_frame(0x0, b"x", rng=r), 1002),
    "text_amid_fragments": (
        lambda r: raw_frame(0x1, b"{", fin=False, rng=r) + raw_frame(0x1, b"{}", rng=r),
        1002,
    ),
    "binary": (lambda r: raw_frame(0x2, b"\x00binary", rng=r), 1003),
    "invalid_utf8": (lambda r: raw_frame(0x1, b'{"id":"\xff"}', rng=r), 1007),
    "oversize": (lambda r: raw_frame(0x1, b"x" * (wire.MAX_FRAME_BYTES + 1), rng=r), 1009),
    "oversize_in_fragments": (
        lambda r: b"".join(
            raw_frame(0x1 if i == 0 else 0x0, b"y" * 16_384, fin=i == 4, rng=r) for i in range(5)
        ),
        1009,
    ),
}


@pytest.mark.parametrize("name", sorted(RAW_VIOLATIONS))
async def test_each_violation_closes_with_its_code_while_the_phone_keeps_sending(
    hub: HubServer, farm: Farm, name: str
) -> None:
    """The phone reads its close code even when it goes on writing after its mistake:
    before the hub's lingering close, the kernel answered the unread data with a reset
    that destroyed the close frame, and the phone saw 1006 (found by the fuzzer above)."""
    build, code = RAW_VIOLATIONS[name]
    rng = random.Random(name)
    phone = await farm.add(connect=False)
    headers = {"Authorization": f"Bearer {phone.token}"}
    async with connect(ws_url(hub), additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "id": "h", "protocol": "1.0",
                                  "battery": 5, "signal": 1}))  # fmt: skip
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        assert ws.transport is not None
        heartbeat = raw_frame(0x1, b'{"type":"heartbeat","id":"b","battery":5,"signal":1}', rng=rng)
        # The mistake, then the phone goes on writing for a while before it reads again:
        # a write that meets a reset ends the connection before the close frame is read.
        ws.transport.pause_reading()
        ws.transport.write(build(rng))
        for _ in range(30):
            if ws.transport.is_closing():
                break
            ws.transport.write(heartbeat * 50)
            await asyncio.sleep(0.01)
        ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == code
