"""The hub under chaos: steady load, misbehaving phones, kills and restarts, then an audit.

    python -m bench.chaos --minutes 10                      # one node on SQLite
    python -m bench.chaos --minutes 10 --cluster            # two nodes, PostgreSQL + Redis

Loopback only, bounded by ``--minutes``; it stops by itself. What runs:

- hub nodes as ``python -m smsgw serve`` processes (short heartbeats, so a silent phone is
  noticed in seconds);
- ``--phones`` simulated phones in chaos mode (android_client/chaos.py: drops, slow
  accepts, duplicate and out-of-order reports, silences), each logging every transmission
  to its own file;
- a steady load of ``POST /sms/dispatch`` (``wait: false``) at ``--rate`` per second;
  a message is *acknowledged* when its 202 arrived;
- a webhook receiver subscribed to every event;
- ``--kills`` SIGKILLs of a hub node at random moments, each restarted on its port; with
  ``--cluster`` also one restart of PostgreSQL and one of Redis (the commands are
  options: they restart this machine's services, so run it when nothing else uses them).

Then the load stops, the farm drains, and the audit reads the database, the phones' logs
and the receiver: every acknowledged message exists and is final or still waiting; no
message was transmitted by two phones, or twice; every event the hub wrote reached the
receiver; the surviving node's memory before and after. The figures go to stdout as JSON
(and to ``--out``); the exit status is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from android_client.chaos import ChaosClient, ChaosConfig
from android_client.enroll import enroll
from android_client.outbox import MemoryPhoneStore
from android_client.simulated import SimulatedBackend, SimulatedConfig

ADMIN_KEY = "sk_000000000000_chaos-admin-key"
HUB_SETTINGS = {
    "admin_key": ADMIN_KEY,
    "heartbeat_interval": 2.0,  # a silent phone is closed after 5 s
    "accept_timeout": 1.5,
    "outbox_interval": 0.2,
    "retry_backoff": 0.5,
    "webhook_poll_interval": 0.1,
    "log_level": "warning",
    "key_rate_limit_rpm": 1_000_000,
    "recipient_hourly_limit": 1_000_000,
    "default_daily_quota": 1_000_000,  # the phones' default (90 a day) would end the run early
}
PG_RESTART = "pg_ctlcluster 15 main restart"
REDIS_RESTART = (
    "redis-cli -p 6379 shutdown nosave; sleep 1; "
    "redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save ''"
)
FINAL = {"SENT", "DELIVERED", "FAILED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Node:
    """One hub process, restartable on its port."""

    name: str
    database_url: str
    log: Path
    extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = dict(os.environ)
        env.update({f"SMSGW_{k.upper()}": str(v) for k, v in HUB_SETTINGS.items()})
        env.update(self.extra)
        env.update(
            SMSGW_DATABASE_URL=self.database_url, SMSGW_HOST="127.0.0.1", SMSGW_PORT=str(self.port)
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smsgw", "serve"], env=env, stdout=out, stderr=out
            )
        self.starts += 1
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(self.url + "/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start (see {self.log})")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def rss(self) -> int:
        return rss_kib(self.proc.pid) if self.proc is not None else 0


class Receiver:
    """Every webhook event's id, as received (duplicates are fine: at least once)."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.port = free_port()
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def hook(self, request: Request) -> Response:
        event = json.loads(await request.body())
        self.ids[event["id"]] += 1
        return Response(status_code=204)

    async def start(self) -> None:
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    nodes: list[Node]
    rng: random.Random
    acked: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    phones: list[tuple[ChaosClient, SimulatedBackend, Path]] = field(default_factory=list)

    def note(self, what: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp} {what}")
        print(f"[chaos {stamp}] {what}", file=sys.stderr, flush=True)


async def start_phones(run: Run) -> list[asyncio.Task[None]]:
    tasks = []
    for i in range(run.args.phones):
        node = run.nodes[i % len(run.nodes)]
        log = run.work / f"phone-{i}.jsonl"
        enrolled = await enroll(
            node.url, name=f"chaos-{i}", hardware_id=f"chaos-{i}", api_key=ADMIN_KEY
        )
        backend = SimulatedBackend(
            SimulatedConfig(
                failure_rate=0.02,
                delivery_delay=0.2,
                send_delay=0.05,
                seed=run.args.seed + i,
                transmit_log=log,
                signal=1 + i % 4,
            )
        )
        chaos = ChaosConfig(
            drop_every=run.args.drop_every,
            silence_every=run.args.silence_every,
            seed=run.args.seed * 1000 + i,
        )
        client = ChaosClient(
            node.url, enrolled.device_token, backend, MemoryPhoneStore(),
            backoff_base=0.2, backoff_max=2.0, chaos=chaos,
        )  # fmt: skip
        run.phones.append((client, backend, log))
        tasks.append(asyncio.create_task(client.run()))
    return tasks


async def load(run: Run, until: float) -> None:
    """Dispatch at a steady rate; round-robin over the nodes."""
    interval = 1.0 / run.args.rate
    n = 0
    async with httpx.AsyncClient(headers={"X-API-Key": ADMIN_KEY}, timeout=10) as c:
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            node = run.nodes[i % len(run.nodes)]
            body = {"to": f"+1202555{i % 10000:04d}", "message": f"chaos {i}", "wait": False}
            try:
                r = await c.post(node.url + "/sms/dispatch", json=body)
            except httpx.HTTPError as exc:
                run.refused += 1
                run.errors[type(exc).__name__] += 1
                return
            if r.status_code == 202:
                run.acked[r.json()["message_id"]] = time.time()
            else:
                run.refused += 1
                run.errors[f"HTTP {r.status_code}"] += 1

        start = time.monotonic()
        while time.monotonic() < until:
            task = asyncio.create_task(one(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        await asyncio.gather(*pending, return_exceptions=True)


async def chaos_monkey(run: Run, start: float, until: float) -> None:
    """The kills and restarts, at random moments spread over the run."""
    plan: list[tuple[float, str]] = []
    span = until - start
    for _ in range(run.args.kills):
        plan.append((start + run.rng.uniform(0.1, 0.85) * span, "kill"))
    if run.args.cluster:
        plan.append((start + run.rng.uniform(0.2, 0.8) * span, "postgres"))
        plan.append((start + run.rng.uniform(0.2, 0.8) * span, "redis"))
    for at, what in sorted(plan):
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if what == "kill":
            # With several nodes the last one is never killed: its memory is the yardstick.
            node = run.rng.choice(run.nodes[:-1] or run.nodes)
            node.kill()
            run.note(f"SIGKILL {node.name}")
            await asyncio.sleep(run.rng.uniform(0.5, 3.0))
            await node.start()
            run.note(f"restarted {node.name}")
        else:
            command = run.args.pg_restart if what == "postgres" else run.args.redis_restart
            run.note(f"restarting {what}: {command}")
            proc = await asyncio.create_subprocess_shell(command)
            await proc.wait()
            run.note(f"{what} restarted (exit {proc.returncode})")


async def rows(run: Run, sql: str) -> list[tuple[Any, ...]]:
    url = run.nodes[0].database_url
    if url.startswith("sqlite"):
        import sqlite3

        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return [tuple(r) for r in db.execute(sql)]
    import asyncpg

    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema} if schema else {})
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def drain(run: Run, receiver: Receiver, timeout: float) -> float:
    """Wait until no acknowledged message is in flight and every delivery is done."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        open_ = await rows(
            run, "SELECT count(*) FROM messages WHERE status IN ('PENDING', 'QUEUED')"
        )
        pending = await rows(
            run, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )
        if open_[0][0] == 0 and pending[0][0] == 0:
            break
        await asyncio.sleep(1.0)
    return time.monotonic() - start


async def audit(run: Run, receiver: Receiver) -> dict[str, Any]:
    found = {r[0]: r[1] for r in await rows(run, "SELECT id, status FROM messages")}
    missing = [m for m in run.acked if m not in found]
    statuses = Counter(found[m] for m in run.acked if m in found)
    senders: dict[str, set[int]] = defaultdict(set)
    sends: Counter[str] = Counter()
    for i, (_, _, log) in enumerate(run.phones):
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["event"] == "sent":
                senders[entry["message_id"]].add(i)
                sends[entry["message_id"]] += 1
    two_phones = [m for m, who in senders.items() if len(who) > 1]
    twice = [m for m, n in sends.items() if n > 1]
    written = {r[0] for r in await rows(run, "SELECT id FROM events")}
    lost_events = sorted(written - set(receiver.ids))
    dead = await rows(run, "SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")
    chaos = Counter[str]()
    for client, _, _ in run.phones:
        for k, v in vars(client.counts).items():
            chaos[k] += v
    return {
        "acknowledged": len(run.acked),
        "refused_or_unanswered": run.refused,
        "refusals": dict(run.errors),
        "acknowledged_by_status": dict(statuses),
        "acknowledged_missing": len(missing),
        "acknowledged_not_final": sum(n for s, n in statuses.items() if s not in FINAL),
        "transmitted": len(sends),
        "transmitted_by_two_phones": len(two_phones),
        "transmitted_twice": len(twice),
        "events_written": len(written),
        "events_not_received": len(lost_events),
        "events_received_more_than_once": sum(1 for n in receiver.ids.values() if n > 1),
        "dead_deliveries": dead[0][0],
        "phone_chaos": dict(chaos),
        "examples": {"missing": missing[:5], "two_phones": two_phones[:5], "twice": twice[:5],
                     "lost_events": lost_events[:5]},
    }  # fmt: skip


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="smsgw-chaos-"))
    rng = random.Random(args.seed)
    if args.cluster:
        schema = f"chaos_{os.getpid()}"
        url = f"{args.postgres_url}?schema={schema}"
        extra = {"SMSGW_REDIS_URL": args.redis_url}
        nodes = [Node(f"node{i}", url, work / f"node{i}.log", extra) for i in (1, 2)]
    else:
        nodes = [Node("node1", f"sqlite:///{work}/hub.db", work / "node1.log")]
    run = Run(args, work, nodes, rng)
    run.note(f"work directory {work}")
    receiver = Receiver()
    await receiver.start()
    for node in nodes:
        await node.start()
    async with httpx.AsyncClient(headers={"X-API-Key": ADMIN_KEY}) as c:
        hook = {"url": f"http://127.0.0.1:{receiver.port}/hook", "events": ["*"]}
        r = await c.post(nodes[0].url + "/webhooks", json=hook)
        r.raise_for_status()
    phone_tasks = await start_phones(run)
    await asyncio.sleep(3)
    yardstick = nodes[-1]
    rss_before = yardstick.rss
    start = time.monotonic()
    until = start + args.minutes * 60
    restarts = ", PostgreSQL and Redis restarts" if args.cluster else ""
    run.note(
        f"load {args.rate}/s, {args.minutes} min, {args.phones} phones, {args.kills} kills"
        + restarts
    )
    await asyncio.gather(load(run, until), chaos_monkey(run, start, until))
    run.note(f"load done: {len(run.acked)} acknowledged; draining")
    for client, _, _ in run.phones:
        client.chaos.drop_every = client.chaos.silence_every = 0  # calm, so the farm drains
        client.chaos.slow_accept_rate = 0
    drained = await drain(run, receiver, args.drain_timeout)
    await asyncio.sleep(2)
    rss_after = yardstick.rss
    result = await audit(run, receiver)
    result.update(
        minutes=args.minutes,
        rate=args.rate,
        phones=args.phones,
        nodes=len(nodes),
        engine="postgres+redis" if args.cluster else "sqlite",
        node_starts={n.name: n.starts for n in nodes},
        drain_seconds=round(drained, 1),
        yardstick=yardstick.name,
        # Single node: "before" is the first process, "after" the last restarted one.
        yardstick_restarted=yardstick.starts > 1,
        yardstick_rss_kib={"before": rss_before, "after": rss_after},
        timeline=run.events,
    )
    for client, _, _ in run.phones:
        await client.stop()
    await asyncio.gather(*phone_tasks, return_exceptions=True)
    for _, backend, _ in run.phones:
        await backend.aclose()
    for node in nodes:
        node.stop()
    await receiver.stop()
    ok = (
        result["acknowledged_missing"] == 0
        and result["transmitted_by_two_phones"] == 0
        and result["transmitted_twice"] == 0
        and result["events_not_received"] == 0
    )
    result["ok"] = ok
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text + "\n")
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=10.0, help="dispatches per second")
    p.add_argument("--phones", type=int, default=8)
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs of a hub node")
    p.add_argument("--drop-every", type=float, default=40.0, help="mean s between a phone's drops")
    p.add_argument("--silence-every", type=float, default=150.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cluster", action="store_true", help="two nodes on PostgreSQL and Redis")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    p.add_argument("--pg-restart", default=PG_RESTART)
    p.add_argument("--redis-restart", default=REDIS_RESTART)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--out", help="also write the JSON result here")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
