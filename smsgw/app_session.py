"""An app phone's live session: its server-sent-events stream (docs/smsgate-app.md).

The stock app holds ``GET /api/mobile/v1/events`` open while it runs in SSE mode. For
routing that stream is a session like a WebSocket: while it is open the phone is online,
and the dispatcher offers it messages. An offer here is a push (``MessageEnqueued``)
telling the phone to pull; the phone's ``GET /message`` is its accept (``Store.app_pull``),
so the offer must be written before the push (``pulls``) and the phone gets longer to
answer than an agent (``accept_timeout``: the app's pull runs through Android's job
scheduler).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from smsgw.appwire import KEEPALIVE, PushEvent, sse_event
from smsgw.clock import utcnow
from smsgw.protocol import CloseCode
from smsgw.registry import LiveDevice
from smsgw.session import Session, SessionClosed
from smsgw.store import Device, Message

if TYPE_CHECKING:
    from smsgw.hub import Hub

log = logging.getLogger("smsgw.app")

# Seconds between keep-alive comments on an idle stream, as the app's own server sends.
KEEPALIVE_SECONDS = 15.0
# Events waiting for a phone that stopped reading its stream: past this, it is closed.
MAX_QUEUED = 256

# The app tells the server nothing of its battery or signal: routing sees a healthy phone.
APP_BATTERY, APP_SIGNAL = 100, 3


class AppSession(Session):
    pulls = True

    def __init__(self, hub: Hub, device_id: str) -> None:
        self.hub = hub
        self.device_id = device_id
        self.accept_timeout = hub.settings.app_accept_timeout
        self.live: LiveDevice | None = None
        self.closed = False
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # One "pull now" in the queue is enough, however many offers wait behind it.
        self._enqueued = False

    async def send_command(self, message: Message, attempt: int) -> None:
        if self.closed:
            raise SessionClosed(self.device_id)
        self.push(PushEvent.MESSAGE_ENQUEUED)

    def push(self, event: PushEvent, data: dict[str, str] | None = None) -> None:
        if self.closed:
            return
        if event is PushEvent.MESSAGE_ENQUEUED:
            if self._enqueued:
                return
            self._enqueued = True
        if self._queue.qsize() >= MAX_QUEUED:
            log.warning("app phone %s stopped reading its stream: closing it", self.device_id)
            self._end()
            return
        self._queue.put_nowait(sse_event(event, data))

    async def close(self, code: CloseCode, reason: str) -> None:
        self._end()
        await self._detach()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def open(self, device: Device) -> None:
        """The stream is open: the phone is online, on this node."""
        hub = self.hub
        live = LiveDevice.from_device(
            self,
            device,
            default_quota=hub.settings.default_daily_quota,
            max_in_flight=hub.settings.max_in_flight,
            battery=APP_BATTERY,
            charging=False,
            signal=APP_SIGNAL,
            network=None,
            sims=device.sims,
        )
        self.live = live
        previous = await hub.registry.attach(live)
        if previous is not None and previous.session is not self:
            await previous.session.close(CloseCode.REPLACED, "replaced by a newer stream")
        log.info("app phone %s online (%s)", self.device_id, device.name)
        await hub.store.device_seen(self.device_id, utcnow(), online=True)
        hub.dispatcher.wake()

    async def events(self) -> AsyncIterator[bytes]:
        """What the stream carries: events as they come, a keep-alive when idle."""
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        item = await self._queue.get()
                except TimeoutError:
                    yield KEEPALIVE
                    if self.live is not None and self.live.holding:
                        # A report taken by another node whose relay was lost.
                        await self.hub.dispatcher.reconcile_slots([self.live])
                    continue
                if item is None:
                    return
                if item.startswith(b"event: MessageEnqueued"):
                    self._enqueued = False  # the next offer needs a push of its own
                yield item
        finally:
            self.closed = True
            await self._detach()

    async def _detach(self) -> None:
        live, self.live = self.live, None
        if await self.hub.session_ended(self, live):
            log.info("app phone %s offline", self.device_id)
            await self.hub.store.device_seen(self.device_id, utcnow(), offline=True)
