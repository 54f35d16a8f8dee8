"""One phone's session on the hub: protocol events applied to the store, registry and
dispatcher, whatever transport carries the frames.

The transport (``smsgw/api/device_ws.py`` for WebSockets) feeds each received text frame
to ``handle_text`` and calls ``finished`` when the connection ends; this class answers
through the ``Transport`` it was given. Every report is written to the store before the
phone gets its ``ack``, so an acknowledged report is never lost.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from datetime import UTC, timedelta
from typing import TYPE_CHECKING

from smsgw.clock import iso, new_id, utcnow
from smsgw.events import battery_crossed_low
from smsgw.numbers import InvalidNumber, parse_recipient
from smsgw.optout import keyword
from smsgw.protocol import (
    AcceptedFrame,
    CloseCode,
    CloseRequested,
    DeliveredFrame,
    DeviceProtocol,
    Event,
    FailedFrame,
    HeartbeatFrame,
    HelloFrame,
    InboundFrame,
    SentFrame,
    idle_timeout,
)
from smsgw.registry import LiveDevice
from smsgw.session import Session, SessionClosed
from smsgw.store import Inbound, Message, OptOut, Status

if TYPE_CHECKING:
    from smsgw.hub import Hub

log = logging.getLogger("smsgw.device")

# Seconds between database writes of a connected phone's heartbeat state.
STATUS_PERSIST_INTERVAL = 300.0

# Seconds an ack may wait for another frame to the same phone to share its socket write.
# Under load nearly every ack goes out with the next offer or ownership answer (one write
# fewer per message); when the phone is quiet it goes alone after this delay.
ACK_DELAY = 0.02

# A held message is the phone's while it owns it (QUEUED) or has sent it (SENT: it keeps it
# for the delivery report, and it will not transmit it again). A final or expired message
# is not: the phone drops it, keeping any reports it still owes.
_OWNED_STATUSES = frozenset({Status.QUEUED, Status.SENT})


class Transport(abc.ABC):
    @abc.abstractmethod
    async def send_texts(self, texts: list[str]) -> None:
        """Write these frames, in order, in as few socket writes as the transport can;
        raise on a dead connection. Returns once the transport has room for more."""

    @abc.abstractmethod
    def close(self, code: int, reason: str, last: list[str]) -> None:
        """Send the frames ``last`` (without waiting for room: a phone that stopped reading
        must not hold the close up), then the close frame, and hang up if the phone does
        not answer it in time."""


class DeviceConnection(Session):
    def __init__(self, hub: Hub, device_id: str, transport: Transport) -> None:
        self.hub = hub
        self.device_id = device_id
        self.transport = transport
        self.protocol = DeviceProtocol()
        self.live: LiveDevice | None = None
        # Nothing more goes to the phone: set when the hub ends the session and when a
        # write fails. What the phone sent before that is still handled unless hung_up.
        self.closed = False
        # The hub ended the session (replaced, revoked, idle, protocol error, draining):
        # frames still arriving from the phone are not handled any more.
        self.hung_up = False
        self.last_frame = time.monotonic()
        self._persisted_at = 0.0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None

    @property
    def idle_timeout(self) -> float:
        return idle_timeout(self.hub.settings.heartbeat_interval)

    # -- transport side -------------------------------------------------------------

    async def handle_text(self, text: str) -> None:
        self.last_frame = time.monotonic()
        await self._handle_events(self.protocol.receive_text(text))

    def idle(self, now: float) -> bool:
        return now - self.last_frame > self.idle_timeout

    async def handle_binary(self) -> None:
        await self._handle_events(self.protocol.receive_binary())

    async def finished(self) -> None:
        """The connection is gone (closed by either side, or dropped)."""
        self.closed = True
        await self._detach()

    async def _detach(self) -> None:
        live, self.live = self.live, None
        if await self.hub.session_ended(self, live) and live is not None:
            log.info("device %s offline", self.device_id)
            # The last state it reported, and when it was last seen, for the device list.
            await self.hub.store.record_device_status(
                self.device_id,
                battery=live.battery,
                charging=live.charging,
                signal=live.signal,
                network=live.network,
                now=utcnow(),
                offline=True,
            )

    async def close(self, code: CloseCode, reason: str) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        was_closed, self.closed = self.closed, True
        if not was_closed:
            try:
                # Acks held back go before the close frame, in the same write.
                self.transport.close(int(code), reason, self.protocol.data_to_send())
            except Exception:  # already gone: nothing left to tell the phone
                log.debug("close of %s failed", self.device_id, exc_info=True)
        # Offline now, not when a dead peer's TCP connection finally times out.
        await self._detach()

    async def send_command(self, message: Message, attempt: int) -> None:
        if self.closed:
            raise SessionClosed(self.device_id)
        self._queue_send(message, attempt)
        await self._flush()

    def _queue_send(self, message: Message, attempt: int) -> None:
        self.protocol.send_command(
            message_id=message.id,
            attempt=attempt,
            to=message.recipient,
            body=message.body,
            sim_slot=message.sim_slot,
            parts=message.parts,
            expires_at=iso(message.expires_at),
        )

    async def _flush(self) -> None:
        # The frames are taken and handed over before any await, so concurrent flushes
        # keep them in the order they were queued without a lock.
        texts = self.protocol.data_to_send()
        if not texts:
            return
        try:
            await self.transport.send_texts(texts)
        except Exception as exc:
            self.closed = True
            raise SessionClosed(self.device_id) from exc

    # -- protocol events ------------------------------------------------------------

    async def _handle_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, CloseRequested):
                await self.close(event.code, event.reason)  # queued frames go first
                return
            frame = event.frame
            if self.live is not None:
                self.live.touch()
            if isinstance(frame, HelloFrame):
                await self._on_hello(frame)
            elif isinstance(frame, AcceptedFrame):
                await self._on_accepted(frame)
            elif isinstance(frame, SentFrame):
                recipient = await self.hub.store.mark_sent(
                    frame.message_id, self.device_id, utcnow()
                )
                self.protocol.ack(frame.id)
                if recipient:
                    self.hub.metrics.reported(self.device_id, Status.SENT)
                self.hub.dispatcher.reported(
                    frame.message_id,
                    self.device_id,
                    Status.SENT if recipient else None,
                    recipient=recipient,
                )
            elif isinstance(frame, DeliveredFrame):
                ok = await self.hub.store.mark_delivered(frame.message_id, self.device_id, utcnow())
                self.protocol.ack(frame.id)
                if ok:
                    self.hub.metrics.reported(self.device_id, Status.DELIVERED)
                self.hub.dispatcher.reported(
                    frame.message_id, self.device_id, Status.DELIVERED if ok else None
                )
            elif isinstance(frame, FailedFrame):
                await self._on_failed(frame)
            elif isinstance(frame, HeartbeatFrame):
                await self._on_heartbeat(frame)
            elif isinstance(frame, InboundFrame):
                await self._on_inbound(frame)
        if self.protocol.urgent:
            await self._flush_quietly()
        else:
            self._schedule_acks()

    def _schedule_acks(self) -> None:
        """Acks alone are queued: send them after ACK_DELAY unless another frame takes
        them along first."""
        if self.protocol.pending and not self.closed and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._acks_due)

    def _acks_due(self) -> None:
        self._ack_timer = None
        if self.protocol.pending and not self.closed and self._ack_task is None:
            self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            await self._flush_quietly()
        finally:
            self._ack_task = None
            # Acks queued while this flush waited for room must not wait for the next frame.
            self._schedule_acks()

    async def _flush_quietly(self) -> None:
        # A dead transport is noticed by the transport itself, which calls finished().
        with contextlib.suppress(SessionClosed):
            await self._flush()

    async def _on_hello(self, hello: HelloFrame) -> None:
        hub, now = self.hub, utcnow()
        sims = [s.model_dump(exclude_none=True) for s in hello.sims]
        online = await hub.store.device_online(
            self.device_id,
            sims=sims,
            app_version=hello.app_version,
            fcm_token=hello.fcm_token,
            battery=hello.battery,
            charging=hello.charging,
            signal=hello.signal,
            network=hello.network,
            now=now,
        )
        if online is None:  # removed between the upgrade and the hello
            await self.close(CloseCode.REVOKED, "device removed")
            return
        device, owned = online
        live = LiveDevice.from_device(
            self,
            device,
            default_quota=hub.settings.default_daily_quota,
            max_in_flight=hub.settings.max_in_flight,
            battery=hello.battery,
            charging=hello.charging,
            signal=hello.signal,
            network=hello.network,
            sims=sims,
        )
        self._persisted_at = time.monotonic()
        self.protocol.welcome(
            hello.id,
            device_id=self.device_id,
            heartbeat_interval=hub.settings.heartbeat_interval,
            server_time=iso(now) or "",
        )
        # Tell the phone which of the messages it holds are really its own.
        held = set(hello.held)
        for message_id in hello.held:
            msg = await hub.store.get_message(message_id)
            owner = (
                msg is not None
                and msg.device_id == self.device_id
                and msg.status in _OWNED_STATUSES
            )
            self.protocol.ownership(
                None, message_id=message_id, attempt=msg.attempt if msg else 0, owner=owner
            )
        # Messages it owns but no longer holds (reinstalled app): send them again.
        live.holding.update(m.id for m in owned)
        for msg in owned:
            if msg.id not in held:
                self._queue_send(msg, msg.attempt)
        await self._flush_quietly()
        self.live = live
        previous = await hub.registry.attach(live)
        if previous is not None and previous.session is not self:
            await previous.session.close(CloseCode.REPLACED, "replaced by a newer session")
        log.info("device %s online (%s)", self.device_id, device.name)
        hub.dispatcher.wake()

    async def _on_accepted(self, frame: AcceptedFrame) -> None:
        dispatcher, now = self.hub.dispatcher, utcnow()
        owner = await dispatcher.accept_unstored(
            frame.message_id, self.device_id, frame.attempt, now
        )
        if owner is None:
            owner = await self.hub.store.accept(
                frame.message_id, self.device_id, frame.attempt, now
            )
        self.protocol.ownership(
            frame.id, message_id=frame.message_id, attempt=frame.attempt, owner=owner
        )
        await self._flush_quietly()
        self.hub.dispatcher.accepted(frame.message_id, self.device_id, frame.attempt, owner)

    async def _on_failed(self, frame: FailedFrame) -> None:
        settings = self.hub.settings
        await self.hub.dispatcher.store_unstored(frame.message_id, self.device_id)
        now = utcnow()
        status = await self.hub.store.mark_failed(
            frame.message_id,
            self.device_id,
            frame.attempt,
            error_code=frame.error_code,
            error=frame.error,
            retryable=frame.retryable,
            now=now,
            retry_at=now + timedelta(seconds=settings.retry_backoff),
            max_attempts=settings.max_attempts,
        )
        self.protocol.ack(frame.id)
        if status is not None:
            self.hub.metrics.reported(self.device_id, status, frame.error_code)
        self.hub.dispatcher.reported(
            frame.message_id,
            self.device_id,
            status,
            frame.error_code,
            frame.error,
            attempt=frame.attempt,
        )

    async def _on_heartbeat(self, frame: HeartbeatFrame) -> None:
        # Routing reads the live copy; the database copy is for showing offline phones, so
        # it is written every few minutes and on disconnect, not on every heartbeat of
        # every phone (10,000 phones at 30 s would be 333 writes a second for nothing).
        now = time.monotonic()
        persist = now - self._persisted_at >= STATUS_PERSIST_INTERVAL
        live = self.live
        if live is not None and battery_crossed_low(live.battery, frame.battery, frame.charging):
            persist = True  # device.battery_low is raised by the store write: now, not later
        if persist:
            self._persisted_at = now
        await record_status(
            self.hub,
            self.device_id,
            frame.battery,
            frame.charging,
            frame.signal,
            frame.network,
            persist=persist,
        )
        self.protocol.ack(frame.id)

    async def _on_inbound(self, frame: InboundFrame) -> None:
        received = frame.received_at
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        stored = await self.hub.store.store_inbound(
            Inbound(
                id=new_id(),
                device_id=self.device_id,
                local_id=frame.local_id,
                sender=frame.sender,
                body=frame.body,
                sim_slot=frame.sim_slot,
                received_at=received,
                created_at=utcnow(),
            )
        )
        if stored:
            await opt_keyword(self.hub, frame.sender, frame.body)
        self.protocol.ack(frame.id)


async def opt_keyword(hub: Hub, sender: str, body: str) -> None:
    """An inbound STOP or START (whichever phone it came through) changes the opt-out list."""
    word = keyword(body)
    if word is None:
        return
    try:
        number = parse_recipient(sender, hub.settings.default_region).e164
    except InvalidNumber:
        return  # a short code or alphanumeric sender: nothing to opt out
    if word == "stop":
        await hub.opt_out(OptOut(number, "inbound", body.strip()[:200], utcnow()))
        log.info("opt-out: %s replied %r", number, body.strip()[:20])
    else:
        await hub.opt_in(number)
        log.info("opt-in: %s replied %r", number, body.strip()[:20])


async def record_status(
    hub: Hub,
    device_id: str,
    battery: int,
    charging: bool,
    signal: int,
    network: str | None,
    *,
    persist: bool = True,
) -> None:
    """A heartbeat, over the socket or the HTTP fallback: mirrored in the registry when
    the phone is online so routing sees it at once, and stored when ``persist``."""
    live = hub.registry.get(device_id)
    if live is not None:
        live.set_status(battery, charging, signal, network)
        live.touch()
    if not persist:
        return
    await hub.store.record_device_status(
        device_id,
        battery=battery,
        charging=charging,
        signal=signal,
        network=network,
        now=utcnow(),
    )
