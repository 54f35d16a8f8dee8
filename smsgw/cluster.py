"""The registry of a node in a cluster: its own phones, and every other node's, via a broker.

``ClusterRegistry`` keeps the ``Registry`` interface, so routing and the dispatcher work
unchanged: a phone held by another node appears as a ``LiveDevice`` whose session is a
``RemoteSession``. Offering a message to it publishes the ``send`` on the phone's channel;
the node holding the socket forwards it and sends the phone's answers (``accepted``,
``reported``) back on the asking node's channel, where they reach this node's dispatcher
exactly like a local phone's. Who *owns a message* is still decided only by the store's
compare-and-set; the broker only carries doorbells, so a lost or duplicated envelope can
delay a message but never give it to two phones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from smsgw.broker import Broker, Envelope, PhoneState
from smsgw.clock import iso, utcnow
from smsgw.config import Settings
from smsgw.protocol import CloseCode
from smsgw.registry import LiveDevice, Registry
from smsgw.roster import Roster
from smsgw.session import Session, SessionClosed
from smsgw.store import Message, Status

if TYPE_CHECKING:
    from smsgw.dispatcher import Dispatcher

log = logging.getLogger("smsgw.cluster")

# Seconds a publish to another node may take before the offer fails over.
BROKER_TIMEOUT = 5.0


class RemoteSession(Session):
    """A phone whose socket another node holds: commands go over the broker."""

    def __init__(self, cluster: ClusterRegistry, device_id: str) -> None:
        self.cluster = cluster
        self.device_id = device_id

    async def send_command(self, message: Message, attempt: int) -> None:
        envelope = {
            "k": "send",
            "from": self.cluster.node_id,
            "dev": self.device_id,
            "mid": message.id,
            "attempt": attempt,
            "to": message.recipient,
            "body": message.body,
            "sim_slot": message.sim_slot,
            "parts": message.parts,
            "expires_at": iso(message.expires_at),
        }
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                receivers = await self.cluster.broker.to_phone(self.device_id, envelope)
        except Exception as exc:  # incl. a stalled broker: fail over like a dead socket
            raise SessionClosed(self.device_id) from exc
        if receivers == 0:
            # Nobody holds the phone any more: forget it now, fail over at once.
            self.cluster.forget_remote(self.device_id)
            raise SessionClosed(self.device_id)

    async def close(self, code: CloseCode, reason: str) -> None:
        envelope = {"k": "close", "dev": self.device_id, "code": int(code), "reason": reason}
        try:
            await self.cluster.broker.to_phone(self.device_id, envelope)
        except Exception:
            log.warning("could not ask for %s to be closed", self.device_id, exc_info=True)


@dataclass(slots=True)
class _Origin:
    """An offer another node made to one of our phones, so its answers go back there."""

    node: str
    device_id: str
    attempt: int
    accepted: bool = False
    timer: asyncio.TimerHandle | None = None


class ClusterRegistry(Registry):
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self._local = Roster()
        # Local and remote phones in one roster, so ``all()`` is a view without a copy.
        self._all = Roster()
        self._origins: dict[str, _Origin] = {}
        self._dispatcher: Dispatcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> str:
        return self.broker.node_id

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "ClusterRegistry.start() was not called"
        return self._dispatcher

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        await self.broker.start(self._on_envelope)
        await self.resync()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="smsgw-cluster-sweep")
        log.info("node %s joined the cluster", self.node_id)

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.broker.close()

    # -- Registry ------------------------------------------------------------------------

    async def attach(self, live: LiveDevice) -> LiveDevice | None:
        # Claim first: if the broker fails, nothing here changed and the hello fails.
        live.epoch = await self.broker.claim(self._state(live), self.settings.ownership_ttl)
        previous = self._local.get(live.device_id)
        seen = self._all.get(live.device_id)
        self._local.put(live)
        self._all.put(live)
        if seen is not None and seen is not previous:
            # It was another node's: offers made through that node get no answer now.
            self.dispatcher.session_closed(seen.session)
        return previous

    async def detach(self, live: LiveDevice) -> bool:
        if self._local.get(live.device_id) is not live:
            return False
        self._local.pop(live.device_id)
        if self._all.get(live.device_id) is live:
            self._all.pop(live.device_id)
        for message_id, origin in list(self._origins.items()):
            if origin.device_id != live.device_id:
                continue
            self._drop_origin(message_id)
            if not origin.accepted:
                # The asking node fails over now instead of waiting for its timeout.
                self._answer(origin, "gone", message_id)
            # An accepted one is forgotten too: the phone reports it wherever it connects
            # next, and the asking node's sweep reconciles its slot with the database.
        try:
            ours = await self.broker.release(live.device_id, live.epoch)
        except Exception:
            log.warning("could not release %s (its TTL will)", live.device_id, exc_info=True)
            ours = True
        if not ours:  # another node took it over: show it as theirs
            self._spawn(self._load(live.device_id))
        # False when the phone is already online on another node: its "offline" (and this
        # socket's stale battery and signal) must not be recorded after that node's hello.
        return ours

    def get(self, device_id: str) -> LiveDevice | None:
        return self._all.get(device_id)

    def all(self) -> Collection[LiveDevice]:
        return self._all.values()

    def local(self) -> Collection[LiveDevice]:
        return self._local.values()

    def is_local(self, live: LiveDevice) -> bool:
        return self._local.get(live.device_id) is live

    def _roster(self, local: bool) -> Roster:
        return self._local if local else self._all

    async def changed(self, live: LiveDevice) -> None:
        if self.is_local(live):
            await self._publish_now(live)
            return
        envelope = {
            "k": "update",
            "dev": live.device_id,
            "name": live.name,
            "enabled": live.enabled,
            "daily_quota": live.daily_quota,
        }
        with contextlib.suppress(Exception):
            await self.broker.to_phone(live.device_id, envelope)

    def accepted(self, message_id: str, device_id: str, attempt: int, owner: bool) -> None:
        origin = self._origins.get(message_id)
        if origin is None or origin.device_id != device_id or origin.attempt != attempt:
            return
        self._answer(origin, "accepted", message_id, owner=owner)
        if owner:
            origin.accepted = True
            if origin.timer is not None:
                origin.timer.cancel()
        else:
            self._drop_origin(message_id)
            self._free_slot(device_id, message_id)

    def reported(
        self,
        message_id: str,
        device_id: str,
        status: Status,
        error_code: str | None,
        error: str | None,
        recipient: str | None,
        attempt: int | None,
    ) -> None:
        origin = self._origins.get(message_id)
        if origin is None or origin.device_id != device_id:
            return
        self._answer(
            origin,
            "reported",
            message_id,
            status=status.value,
            error_code=error_code,
            error=error,
            recipient=recipient,
            report_attempt=attempt,
        )
        if status is not Status.QUEUED:
            self._drop_origin(message_id)  # the asking node has what it waited for

    # -- drain --------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Offers from other nodes are refused from now on (they fail over at once), and
        this node's phones are shown as disabled so nobody routes new work to them."""
        super().start_draining()
        self._spawn(self._refresh())

    async def tell_nodes(self, news: dict[str, Any]) -> None:
        try:
            await self.broker.broadcast({**news, "k": "news", "node": self.node_id})
        except Exception:  # caches expire and the opt-out list is reloaded: they catch up
            log.warning("could not tell the other nodes: %s", news, exc_info=True)

    # -- envelopes ----------------------------------------------------------------------

    def _on_envelope(self, env: Envelope) -> None:
        kind = env.get("k")
        dev = str(env.get("dev", ""))
        if kind == "send":
            self._spawn(self._forward(env))
        elif kind in ("accepted", "reported"):
            self._answered(kind, dev, env)
        elif kind == "answer":
            # A phone of ours answered on another node (relay_answer): on to the dispatcher
            # as if it had come through the session, so the offer's origin hears of it.
            if dev in self._local and env.get("as") in ("accepted", "reported"):
                self._answered(str(env["as"]), dev, env)
        elif kind in ("gone", "busy"):
            self.dispatcher.offer_failed(env["mid"], dev, int(env["attempt"]), busy=kind == "busy")
        elif kind == "fence":
            live = self._local.get(dev)
            if live is not None and env.get("node") != self.node_id and env["epoch"] > live.epoch:
                log.info("device %s moved to node %s: closing here", dev, env.get("node"))
                self._spawn(live.session.close(CloseCode.REPLACED, "replaced on another node"))
        elif kind == "close":
            live = self._local.get(dev)
            if live is not None:
                code = CloseCode(int(env["code"]))
                self._spawn(live.session.close(code, str(env.get("reason", ""))[:120]))
        elif kind == "update":
            live = self._local.get(dev)
            if live is not None:
                self.configure(
                    live,
                    name=str(env["name"]),
                    enabled=bool(env["enabled"]),
                    daily_quota=int(env["daily_quota"]),
                )
                self._spawn(self._publish_now(live))
                self.dispatcher.wake()
        elif kind == "news":
            if env.get("node") != self.node_id and self.on_news is not None:
                self.on_news(env)
        elif kind == "up":
            if env.get("node") != self.node_id:
                self._spawn(self._load(dev))
        elif kind == "down":
            seen = self._all.get(dev)
            if seen is not None and dev not in self._local and seen.epoch <= int(env["epoch"]):
                self.forget_remote(dev)

    def _answered(self, kind: str, dev: str, env: Envelope) -> None:
        if kind == "accepted":
            self.dispatcher.accepted(env["mid"], dev, int(env["attempt"]), bool(env["owner"]))
            return
        self.dispatcher.reported(
            env["mid"],
            dev,
            Status(env["status"]),
            env.get("error_code"),
            env.get("error"),
            recipient=env.get("recipient"),
            attempt=env.get("report_attempt"),
        )

    def relay_answer(self, device_id: str, answer: dict[str, Any]) -> None:
        live = self._all.get(device_id)
        if live is None or device_id in self._local:
            return
        self._spawn(self._relay(device_id, answer))

    async def _relay(self, device_id: str, answer: dict[str, Any]) -> None:
        # Best effort: the database already holds the answer; this only spares the node
        # that made the offer its wait (its timeout reads the database).
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                await self.broker.to_phone(device_id, {**answer, "k": "answer", "dev": device_id})
        except Exception:
            log.warning("could not relay an answer of %s", device_id, exc_info=True)

    async def _forward(self, env: Envelope) -> None:
        """Another node offers a message to a phone whose socket we hold."""
        message_id, dev, attempt = str(env["mid"]), str(env["dev"]), int(env["attempt"])
        origin = _Origin(str(env["from"]), dev, attempt)
        live = self._local.get(dev)
        if live is None:
            self._answer(origin, "gone", message_id)
            return
        full = message_id not in live.holding and live.in_flight >= live.max_in_flight
        if self.draining or full:
            # This node enforces the phone's in-flight limit: other nodes only see their own
            # offers to it.
            self._answer(origin, "busy", message_id)
            return
        now = utcnow()
        expires = env.get("expires_at")
        message = Message(
            id=message_id,
            recipient=str(env["to"]),
            body=str(env["body"]),
            status=Status.PENDING,
            created_at=now,
            updated_at=now,
            expires_at=datetime.fromisoformat(expires) if expires else now,
            sim_slot=env.get("sim_slot"),
            parts=int(env.get("parts") or 1),
            attempt=attempt,
        )
        live.holding.add(message_id)
        self._drop_origin(message_id)  # an older attempt's origin is superseded
        self._origins[message_id] = origin
        # The asking node gives up after accept_timeout; keep the slot a little longer so
        # a late accept is still passed back, then free it.
        timeout = live.session.accept_timeout or self.settings.accept_timeout
        origin.timer = asyncio.get_running_loop().call_later(
            timeout + 1.0, self._origin_expired, message_id, origin
        )
        try:
            await live.session.send_command(message, attempt)
        except SessionClosed:
            if self._origins.get(message_id) is origin:
                self._drop_origin(message_id)
                self._free_slot(dev, message_id)
                self._answer(origin, "gone", message_id)

    def _origin_expired(self, message_id: str, origin: _Origin) -> None:
        if self._origins.get(message_id) is origin and not origin.accepted:
            del self._origins[message_id]
            self._free_slot(origin.device_id, message_id)

    def _drop_origin(self, message_id: str) -> None:
        origin = self._origins.pop(message_id, None)
        if origin is not None and origin.timer is not None:
            origin.timer.cancel()

    def _free_slot(self, device_id: str, message_id: str) -> None:
        live = self._local.get(device_id)
        if live is not None and message_id in live.holding:
            live.holding.discard(message_id)
            self.dispatcher.wake()

    def _answer(self, origin: _Origin, kind: str, message_id: str, **fields: Any) -> None:
        self.broker.to_node(
            origin.node,
            {"k": kind, "mid": message_id, "dev": origin.device_id, "attempt": origin.attempt}
            | fields,
        )

    # -- presence -----------------------------------------------------------------------

    def _state(self, live: LiveDevice) -> PhoneState:
        return PhoneState(
            device_id=live.device_id,
            node=self.node_id,
            epoch=live.epoch,
            name=live.name,
            enabled=live.enabled,
            daily_quota=live.daily_quota,
            max_in_flight=live.max_in_flight,
            battery=live.battery,
            charging=live.charging,
            signal=live.signal,
            network=live.network,
            sims=live.sims,
            sent_count=live.sent_today,
            sent_day=live.sent_day,
            in_flight=live.in_flight,
            connected_at=live.connected_at.timestamp(),
            last_seen=live.last_seen.timestamp(),
            accept_timeout=live.session.accept_timeout,
            kind=live.kind,
        )

    async def _sweep_loop(self) -> None:
        """Keep our phones owned and their state published, and learn everyone else's.
        One pipelined sweep per interval is far cheaper than a write per heartbeat."""
        while True:
            await asyncio.sleep(self.settings.presence_interval)
            try:
                await self._refresh()
                await self.resync()
                await self.reconcile_remote_slots()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cluster sweep failed", exc_info=True)

    async def _refresh(self) -> None:
        lives = list(self._local.values())
        if not lives:
            return
        results = await self.broker.refresh(
            [self._state(live) for live in lives], self.settings.ownership_ttl
        )
        for live, ours in zip(lives, results, strict=True):
            if not ours and self._local.get(live.device_id) is live:
                # A newer claim elsewhere (or our key expired while we were cut off).
                log.info("device %s is no longer ours: closing", live.device_id)
                self._spawn(live.session.close(CloseCode.REPLACED, "ownership moved"))

    async def _publish_now(self, live: LiveDevice) -> None:
        with contextlib.suppress(Exception):
            await self.broker.refresh([self._state(live)], self.settings.ownership_ttl)

    async def resync(self) -> None:
        """Every phone another node holds, from the broker; drop the ones gone."""
        seen: set[str] = set()
        for state in await self.broker.online():
            if state.node == self.node_id:
                continue
            seen.add(state.device_id)
            self._upsert_remote(state)
        for dev in [d for d in self._all if d not in self._local and d not in seen]:
            self.forget_remote(dev)

    async def reconcile_remote_slots(self) -> None:
        """Free slots this node reserved on other nodes' phones for messages that are no
        longer the phone's to report on: their reports go to the node holding the socket
        and are passed back to us, and when that answer is lost (the phone moved nodes,
        the holder forgot the offer, a broker blip) the database still knows."""
        remote = [live for dev, live in list(self._all.items()) if dev not in self._local]
        await self.dispatcher.reconcile_slots(remote)

    async def _load(self, device_id: str) -> None:
        state = await self.broker.phone(device_id)
        if state is not None and state.node != self.node_id:
            self._upsert_remote(state)

    def _upsert_remote(self, state: PhoneState) -> None:
        dev = state.device_id
        if dev in self._local:
            return
        seen = self._all.get(dev)
        if seen is not None and state.epoch < seen.epoch:
            return  # older news
        if seen is None:
            seen = LiveDevice(
                session=RemoteSession(self, dev),
                device_id=dev,
                name=state.name,
                enabled=state.enabled,
                daily_quota=state.daily_quota,
                max_in_flight=state.max_in_flight,
                battery=state.battery,
                charging=state.charging,
                signal=state.signal,
                network=state.network,
                sims=state.sims,
            )
            self._all.put(seen)
            self.dispatcher.wake()  # a phone to route to
        seen.epoch = state.epoch
        seen.kind = state.kind
        seen.session.accept_timeout = state.accept_timeout
        seen.max_in_flight, seen.sims = state.max_in_flight, state.sims
        # The count before configure(): it refiles, and the roster asks whether the
        # phone is spent.
        seen.sent_count, seen.sent_day = state.sent_count, state.sent_day
        seen.configure(name=state.name, enabled=state.enabled, daily_quota=state.daily_quota)
        seen.set_status(state.battery, state.charging, state.signal, state.network)
        seen.connected_at = datetime.fromtimestamp(state.connected_at or 0, UTC)
        seen.last_seen = datetime.fromtimestamp(state.last_seen, UTC)

    def forget_remote(self, device_id: str) -> None:
        """A remote phone is gone: offers through it fail over now."""
        if device_id in self._local:
            return
        seen = self._all.pop(device_id)
        if seen is not None:
            self.dispatcher.session_closed(seen.session)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(_finished)
        task.add_done_callback(self._tasks.discard)


def _finished(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster task failed", exc_info=task.exception())
