"""Quick probes for optimisation work, steadier than a full run on a shared 2-core machine.

``python -m bench.probe cpu hub|relay [--seconds 8] [--profile out.txt]``
    One closed-loop dispatch run (20 phones, 50 clients, same set-up as ``bench.run``):
    rate, and CPU per dispatched message for the server process and each of its threads
    (from /proc), plus how busy each core was. CPU per message moves much less from run to
    run than the rate does. ``--profile`` also records the server with py-spy (raw
    collapsed stacks; py-spy must be installed).

``python -m bench.probe latency hub|relay --rates 550,550,550 [--seconds 8]``
    Open-loop runs at the given offered rates: p50 / p95 / p99.

``python -m bench.probe store [--workers 1,4,16,50] [--sync FULL] [--postgres URL]``
    The store alone, in this process (pin it with taskset for steadier figures):
    ``workers`` concurrent coroutines each writing what a dispatch through a phone of
    this node writes (the new message with its first phone's accept, then the sent
    report). Prints CPU per message of each thread of this process and, for SQLite, the
    writes per commit: what a durable transaction costs, and what group commit saves as
    batches grow. ``--postgres`` runs it on a fresh schema of that server instead.

``python -m bench.probe roster``
    What choosing a phone costs, in this process: ``Roster.pick()`` + ``mark_used()``
    against ``routing.pick()`` over the same phones, for farms of several sizes with
    none or most of their phones spent (at their daily quota).

``python -m bench.probe gc``
    A hub started in this process as ``smsgw serve`` starts it: objects the cyclic garbage
    collector tracks, and how long a full collection pauses the loop, before and after
    ``gc.freeze()`` (which ``smsgw serve`` calls once started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvloop

from bench.run import (
    Fleet,
    Server,
    cpu_seconds,
    kernel_seconds,
    load,
    phone_mode,
    postgres_schema,
    proc_stat,
    provision,
    provision_store,
)
from smsgw.store import Store
from smsgw.store.sqlite import SqliteStore

PHONES, CLIENTS = 20, 50


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """(CPU seconds, of which in the kernel) per thread of a process (name:tid)."""
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = f"{raw[raw.index('(') + 1 : raw.rindex(')')]}:{tid}"
        out[name] = (cpu_seconds(raw), kernel_seconds(raw))
    return out


def core_busy() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            vals = [int(v) for v in values]
            out[name] = (sum(vals) - vals[3] - vals[4], sum(vals))
    return out


async def started(kind: str, work: Path) -> tuple[Server, Fleet, str]:
    db = work / "probe.db"
    key, tokens = await provision(db, PHONES) if kind == "hub" else ("", [""] * PHONES)
    server = await Server(kind, db).start()
    fleet = Fleet(server, tokens, phone_mode(kind))
    await fleet.start()
    await load(server, key, "closed", "--concurrency", str(CLIENTS), "--seconds", "2")  # warm
    return server, fleet, key


async def cpu(kind: str, seconds: float, profile: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="smsgw-probe-") as tmp:
        server, fleet, key = await started(kind, Path(tmp))
        try:
            cpu0, _ = proc_stat(server.pid)
            threads0, cores0, t0 = thread_cpu(server.pid), core_busy(), time.monotonic()
            spy = None
            if profile:
                spy_bin = shutil.which("py-spy")
                if spy_bin is None:
                    raise SystemExit("--profile needs py-spy (pip install py-spy)")
                record = ["record", "-p", str(server.pid), "-o", profile, "-f", "raw"]
                spy = subprocess.Popen(
                    [spy_bin, *record, "-d", str(int(seconds)), "-r", "200", "--threads"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            r = await load(
                server, key, "closed", "--concurrency", str(CLIENTS), "--seconds", str(seconds)
            )
            elapsed = time.monotonic() - t0
            cpu1, _ = proc_stat(server.pid)
            threads1, cores1 = thread_cpu(server.pid), core_busy()
            if spy is not None:
                spy.wait()
        finally:
            await fleet.stop()
            server.stop()
    n = max(int(r["ok"]), 1)
    print(
        f"{kind}: {r['per_s']}/s ok={r['ok']} statuses={r['statuses']} "
        f"p50={r['p50_ms']} ms p99={r['p99_ms']} ms; "
        f"CPU {100 * (cpu1 - cpu0) / elapsed:.0f}% of a core, "
        f"{1000 * (cpu1 - cpu0) / n:.3f} ms per message"
    )
    for name, (used, system) in threads1.items():
        before, system_before = threads0.get(name, (0.0, 0.0))
        d = used - before
        if d > 0.05:
            print(
                f"  thread {name}: {100 * d / elapsed:.0f}%, {1000 * d / n:.3f} ms per message "
                f"({100 * (system - system_before) / d:.0f}% of it in the kernel)"
            )
    busy = {
        k: f"{100 * (cores1[k][0] - cores0[k][0]) / max(1, cores1[k][1] - cores0[k][1]):.0f}%"
        for k in cores1
    }
    print(f"  cores busy: {busy}")


async def latency(kind: str, rates: list[str], seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="smsgw-probe-") as tmp:
        server, fleet, key = await started(kind, Path(tmp))
        try:
            for rate in rates:
                r: dict[str, Any] = await load(
                    server,
                    key,
                    "open",
                    "--rate",
                    rate,
                    "--seconds",
                    str(seconds),
                    "--concurrency",
                    str(CLIENTS),
                )
                print(
                    f"{kind} at {rate}/s: {r['per_s']}/s served, p50={r['p50_ms']} "
                    f"p95={r['p95_ms']} p99={r['p99_ms']} ms statuses={r['statuses']}"
                )
        finally:
            await fleet.stop()
            server.stop()


@contextlib.asynccontextmanager
async def probe_store(sync: str, postgres: str | None) -> AsyncIterator[Store]:
    """An open store with the bench's devices: a SQLite file, or a fresh schema on the
    PostgreSQL server at ``postgres`` (dropped afterwards)."""
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="smsgw-probe-") as tmp:
            path = Path(tmp) / "probe.db"
            await provision(path, PHONES)
            db: Store = SqliteStore(path, synchronous=sync)
            await db.open()
            try:
                yield db
            finally:
                await db.close()
        return
    from smsgw.store.postgres import PostgresStore

    async with postgres_schema(postgres) as url:
        pg = PostgresStore(url, max_size=20)
        await pg.open()
        try:
            await provision_store(pg, PHONES)
            yield pg
        finally:
            await pg.close()


async def store(workers: int, sync: str, seconds: float, postgres: str | None) -> None:
    from datetime import timedelta

    from smsgw.clock import new_id, utcnow
    from smsgw.store import Message, Status

    async with probe_store(sync, postgres) as db:
        devices = [d.id for d in await db.list_devices()]
        done = 0
        end = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < end:
                i += 1
                device, t = devices[(w + i) % PHONES], utcnow()
                lease = t + timedelta(seconds=6)
                msg = Message(
                    id=new_id(),
                    recipient=f"+1202555{(w * 1000 + i) % 10_000:04d}",
                    body="probe",
                    status=Status.PENDING,
                    created_at=t,
                    updated_at=t,
                    expires_at=t + timedelta(days=1),
                )
                # What a dispatch through a phone on this node writes: the new message
                # with its first phone's accept, then the phone's sent report.
                assert await db.create_message(
                    msg, offer_to=device, lease_until=lease, accepted_at=utcnow()
                )
                assert await db.mark_sent(msg.id, device, utcnow())
                done += 1

        writer = db.sqlite.writer if isinstance(db, SqliteStore) else None
        batches0, writes0 = (writer.batches, writer.writes) if writer else (0, 0)
        threads0, t0 = thread_cpu(os.getpid()), time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        threads1, elapsed = thread_cpu(os.getpid()), time.monotonic() - t0
        batching = ""
        if writer is not None:
            batches, writes = writer.batches - batches0, writer.writes - writes0
            batching = f", {writes / max(batches, 1):.1f} writes per commit"
    n = max(done, 1)
    per = {
        k: round(1e6 * (v - threads0.get(k, (0.0, 0.0))[0]) / n) for k, (v, _) in threads1.items()
    }
    busy = {k: f"{v} us" for k, v in per.items() if v > 0}
    engine = "postgres" if postgres else f"sqlite synchronous={sync}"
    print(
        f"store ({engine}), {workers} workers: {done / elapsed:.0f} messages/s{batching}; "
        f"CPU per message by thread (this process): {busy}"
    )


async def gc_pause() -> None:
    import gc
    import statistics

    from smsgw.app import create_app
    from smsgw.config import Settings
    from smsgw.numbers import parse_recipient

    def pause_ms() -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            gc.collect()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    with tempfile.TemporaryDirectory(prefix="smsgw-probe-") as tmp:
        app = create_app(Settings(admin_key="x" * 32, database_url=f"sqlite:///{tmp}/gc.db"))
        hub = app.state.hub
        await hub.start()
        parse_recipient("+14155552671", None)  # as a first send would: loads metadata
        try:
            tracked, pause = len(gc.get_objects()), pause_ms()
            print(f"tracked objects {tracked}: a full collection takes {pause:.1f} ms")
            gc.freeze()
            tracked, pause = len(gc.get_objects()), pause_ms()
            print(f"after gc.freeze(): {tracked}: a full collection takes {pause:.1f} ms")
        finally:
            gc.unfreeze()
            await hub.stop()


def roster_picks() -> None:
    import timeit

    from smsgw.clock import today
    from smsgw.registry import LiveDevice
    from smsgw.roster import Roster
    from smsgw.routing import pick
    from smsgw.session import Session

    class Idle(Session):  # nothing is sent: only routing runs
        async def send_command(self, message: object, attempt: int) -> None:
            raise NotImplementedError

        async def close(self, code: object, reason: str) -> None:
            raise NotImplementedError

    for phones, spent in ((20, 0), (1000, 0), (1000, 900), (10_000, 0), (10_000, 9000)):
        roster = Roster()
        for i in range(phones):
            capped = i < spent
            roster.put(
                LiveDevice(
                    session=Idle(),
                    device_id=f"p{i:05d}",
                    name="",
                    enabled=True,
                    daily_quota=5 if capped else 10**9,
                    max_in_flight=10**9,
                    battery=90,
                    charging=True,
                    signal=i % 5,
                    network=None,
                    sims=[],
                    sent_count=5 if capped else 0,
                    sent_day=today(),
                )
            )

        def with_roster(roster: Roster = roster) -> None:
            live = roster.pick()
            assert live is not None
            live.mark_used()

        def with_routing(roster: Roster = roster) -> None:
            live = pick(roster.values())
            assert live is not None
            live.mark_used()

        figures = []
        for fn in (with_roster, with_routing):
            number = 2000 if fn is with_roster else max(5, 20_000 // phones)
            best = min(timeit.repeat(fn, number=number, repeat=5)) / number
            figures.append(f"{best * 1e6:,.1f} us")
        print(
            f"{phones:>6} phones, {spent:>5} spent: Roster.pick {figures[0]}, "
            f"routing.pick {figures[1]} (each with mark_used)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["cpu", "latency", "store", "gc", "roster"])
    parser.add_argument("kind", nargs="?", choices=["hub", "floor", "relay"], default="hub")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rates", default="550", help="latency: comma-separated offered rates")
    parser.add_argument("--profile", default=None, help="cpu: write py-spy raw stacks here")
    parser.add_argument("--workers", default="1,4,16,50", help="store: concurrent writers")
    parser.add_argument("--sync", default="FULL", help="store: SQLite synchronous mode")
    parser.add_argument("--postgres", default=None, help="store: a PostgreSQL URL instead")
    args = parser.parse_args()
    if args.what == "store":
        for workers in args.workers.split(","):
            # on uvloop, as the hub runs
            uvloop.run(store(int(workers), args.sync, min(args.seconds, 6.0), args.postgres))
    elif args.what == "gc":
        asyncio.run(gc_pause())
    elif args.what == "roster":
        roster_picks()
    elif args.what == "cpu":
        asyncio.run(cpu(args.kind, args.seconds, args.profile))
    else:
        asyncio.run(latency(args.kind, args.rates.split(","), args.seconds))


if __name__ == "__main__":
    main()
