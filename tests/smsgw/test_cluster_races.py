"""Cross-node races found in review, each pinned by a test: ClusterRegistry + LocalBroker +
the real Dispatcher on the store of the pass's engine (a SQLite file, or PostgreSQL),
phones simulated as plain Sessions (no sockets), so each race can be staged step by step:
busy remote phones must not use up a message's attempts, a stalled broker must not
outlast a dispatch's deadline, slots reserved on another node's phone must come back when
its answer is lost, and a phone that moved must not be reported offline by the node it
left."""

from __future__ import annotations

import asyncio
import time

from smsgw.broker import LocalBroker
from smsgw.broker.local import LocalBus
from smsgw.clock import utcnow
from smsgw.cluster import ClusterRegistry
from smsgw.config import Settings
from smsgw.dispatcher import Dispatcher
from smsgw.protocol import CloseCode
from smsgw.registry import LiveDevice
from smsgw.session import Session
from smsgw.store import Message, Status, Store
from tests.builders import live_device, new_message


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "admin_key": "x" * 32,
        "accept_timeout": 0.5,
        "outbox_interval": 60.0,
        "presence_interval": 60.0,  # no sweeps during the test: only envelopes
        "max_in_flight": 1,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


class FakePhone(Session):
    """What DeviceConnection does with a phone's frames, minus the socket."""

    def __init__(self, node: Node, device_id: str) -> None:
        self.node = node
        self.device_id = device_id
        self.offers: list[tuple[str, int]] = []
        self.closed = False

    async def send_command(self, message: Message, attempt: int) -> None:
        self.offers.append((message.id, attempt))

    async def close(self, code: CloseCode, reason: str) -> None:
        self.closed = True

    async def accept(self, message_id: str, attempt: int) -> bool:
        owner = await self.node.store.accept(message_id, self.device_id, attempt, utcnow())
        self.node.dispatcher.accepted(message_id, self.device_id, attempt, owner)
        return owner

    async def sent(self, message_id: str) -> None:
        recipient = await self.node.store.mark_sent(message_id, self.device_id, utcnow())
        self.node.dispatcher.reported(
            message_id, self.device_id, Status.SENT if recipient else None, recipient=recipient
        )


class Node:
    def __init__(self, bus: LocalBus, name: str, store: Store, s: Settings) -> None:
        self.store = store
        self.broker = LocalBroker(bus, name)
        self.registry = ClusterRegistry(self.broker, s)
        self.dispatcher = Dispatcher(store, self.registry, s)

    async def start(self) -> Node:
        await self.registry.start(self.dispatcher)
        return self

    async def connect(self, device_id: str) -> tuple[FakePhone, LiveDevice]:
        phone = FakePhone(self, device_id)
        live = live_device(phone, device_id)
        await self.registry.attach(live)
        return phone, live


def message() -> Message:
    return new_message(recipient="+12025550100")


async def first_offer(phone: FakePhone) -> tuple[str, int]:
    """The first offer the phone gets (within a second)."""
    for _ in range(100):
        if phone.offers:
            break
        await asyncio.sleep(0.01)
    return phone.offers[0]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_slow_broker_hangs_a_dispatch_past_its_deadline(engine_store: Store) -> None:
    """dispatcher._offer awaits session.send_command() *before* the accept timer can
    help; RemoteSession.send_command awaits a Redis PUBLISH with no timeout (redis-py's
    socket_timeout defaults to None). A stalled Redis connection therefore holds the
    synchronous dispatch (and the HTTP request, the phone's slot and ``_active``) forever,
    whatever deadline the client asked for."""
    bus, store, s = LocalBus(), engine_store, settings()
    a = await Node(bus, "a", store, s).start()
    b = await Node(bus, "b", store, s).start()
    await b.connect("P")
    await settle()
    assert a.registry.get("P") is not None  # a sees P (held by b)

    stalled = asyncio.Event()

    async def to_phone_stalled(device_id: str, envelope: dict[str, object]) -> int:
        await stalled.wait()  # a black-holed TCP connection: no answer, no error
        return 1

    a.broker.to_phone = to_phone_stalled  # type: ignore[method-assign]
    started = time.monotonic()
    task = asyncio.create_task(a.dispatcher.submit(message(), deadline=1.0))
    done, _ = await asyncio.wait({task}, timeout=4.0)
    elapsed = time.monotonic() - started
    remote = a.registry.get("P")
    held = set(remote.holding) if remote else set()
    task.cancel()
    assert done, (
        f"dispatch with a 1 s deadline still running after {elapsed:.1f} s; "
        f"a's view of P holds {held}"
    )


async def test_remote_slot_leaks_when_the_phone_moves_before_its_old_node_lets_go(
    engine_store: Store,
) -> None:
    """A offers M to P on node B; P accepts (A's view of P now holds M). P's network
    changes and it reconnects to node C before B noticed the old socket died: C's claim
    fences B, so B's release() returns False and no "down" is published; A learns of C's
    claim through "up" and ``_upsert_remote`` updates the *same* LiveDevice (same holding
    set, same RemoteSession). P then reports M SENT to C, which has no origin for it and
    tells nobody. A's view of P keeps M in ``holding`` for as long as P stays connected:
    each such move eats one of P's slots on A, until A never offers to P again."""
    bus, store, s = LocalBus(), engine_store, settings()
    a = await Node(bus, "a", store, s).start()
    b = await Node(bus, "b", store, s).start()
    c = await Node(bus, "c", store, s).start()
    phone_b, _ = await b.connect("P")
    await settle()

    msg = message()
    dispatch = asyncio.create_task(a.dispatcher.submit(msg, deadline=2.0))
    mid, attempt = await first_offer(phone_b)
    assert await phone_b.accept(mid, attempt)
    await settle()
    assert mid in a.registry.get("P").holding  # type: ignore[union-attr]

    # P reconnects to C while B still holds the half-dead socket; B is fenced and closes.
    phone_c, _ = await c.connect("P")
    await settle()
    assert phone_b.closed
    # (B's DeviceConnection would now detach: release returns False, nothing published.)
    live_b = b.registry._local["P"]
    await b.registry.detach(live_b)
    await settle()

    await phone_c.sent(mid)  # the report reaches C
    await settle()
    await asyncio.wait_for(dispatch, 5)
    assert (await store.get_message(mid)).status is Status.SENT  # type: ignore[union-attr]
    await a.registry.reconcile_remote_slots()  # what A's presence sweep runs
    view = a.registry.get("P")
    assert view is not None
    assert mid not in view.holding, (
        f"A still counts {mid} as in flight on P (in_flight={view.in_flight}, "
        f"max={view.max_in_flight}): A will never offer P anything again"
    )


async def test_late_accept_after_origin_expiry_leaks_a_remote_slot(engine_store: Store) -> None:
    """B forgets the origin of a forwarded offer at accept_timeout + 1 s; A gives up at
    accept_timeout and tries release_offer. If the phone's accept commits in between
    (slow database on A, or A's release failed), A's release loses, A re-reads the row,
    finds P the owner and puts M back in its view's holding. But B no longer has an
    origin, so P's SENT report is never passed to A: the slot stays taken on A."""
    bus, store, s = LocalBus(), engine_store, settings()
    a = await Node(bus, "a", store, s).start()
    b = await Node(bus, "b", store, s).start()
    phone_b, _ = await b.connect("P")
    await settle()

    # A's release_offer is slow (a busy database): the phone's accept wins the row.
    real_release = store.release_offer

    async def slow_release(*args: object, **kw: object) -> Status | None:
        await asyncio.sleep(s.accept_timeout + 1.5)
        return await real_release(*args, **kw)  # type: ignore[arg-type]

    store.release_offer = slow_release  # type: ignore[method-assign]
    msg = message()
    dispatch = asyncio.create_task(a.dispatcher.submit(msg, deadline=5.0))
    mid, attempt = await first_offer(phone_b)
    await asyncio.sleep(s.accept_timeout + 1.2)  # B's origin timer has fired
    assert await phone_b.accept(mid, attempt)  # the accept wins in the database
    await asyncio.sleep(1.0)  # A's release loses; A re-reads: P owns it
    await phone_b.sent(mid)
    await asyncio.wait_for(dispatch, 10)
    await a.registry.reconcile_remote_slots()  # what A's presence sweep runs
    view = a.registry.get("P")
    assert view is not None
    assert (await store.get_message(mid)).status is Status.SENT  # type: ignore[union-attr]
    assert mid not in view.holding, f"A's view of P still holds {mid} after it was SENT"


async def test_old_node_reports_offline_after_the_new_node_reported_online(
    engine_store: Store,
) -> None:
    """P moves from B to C while B's socket is still open (network change): C's hello
    writes device.online; C's claim fences B, B closes, and DeviceConnection._detach asks
    registry.detach(), which returns True even though release() said another node owns
    P now. B then writes record_device_status(offline=True): a device.offline event
    *after* the device.online, and B's stale battery/signal over C's. Webhook receivers
    (and the per-subject order they rely on) end on "offline" for a phone that is online."""
    bus, store, s = LocalBus(), engine_store, settings()
    b = await Node(bus, "b", store, s).start()
    c = await Node(bus, "c", store, s).start()
    _, live_b = await b.connect("P")
    await settle()
    await c.connect("P")  # newer claim on C
    await settle()
    # What DeviceConnection._detach does on B when its (fenced) socket closes:
    offline_written = await b.registry.detach(live_b)
    assert not offline_written, (
        "B would write device.offline for P although C holds P now (after C's online)"
    )


async def test_busy_remote_phones_burn_every_attempt_and_fail_the_message(
    engine_store: Store,
) -> None:
    """A node sees another node's phones as free (its view's in_flight counts only its
    own offers). When those phones are busy on their own node (its outbox filled them,
    e.g. during a batch), each offer from A comes back "busy" -> DISCONNECTED ->
    release_offer, which counts an attempt. With >= max_attempts such phones one
    synchronous dispatch burns every attempt within milliseconds and the message ends
    FAILED (max_attempts) although no phone ever refused it and all are healthy."""
    bus, store, s = LocalBus(), engine_store, settings(max_attempts=10)
    a = await Node(bus, "a", store, s).start()
    b = await Node(bus, "b", store, s).start()
    for i in range(10):
        _, live = await b.connect(f"P{i}")
        live.holding.add(f"b-own-{i}")  # B's outbox keeps each phone busy
    await settle()
    assert len(a.registry.all()) == 10
    msg = await a.dispatcher.submit(message(), deadline=3.0)
    stored = await store.get_message(msg.id)
    assert stored is not None
    assert stored.status is not Status.FAILED, (
        f"FAILED after {stored.attempt} attempts: {stored.error}"
    )
