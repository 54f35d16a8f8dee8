"""The phone's connection to the hub: one WebSocket, reconnected with backoff.

``PhoneClient`` is the thin I/O layer around ``PhoneProtocol``: it dials
``ws(s)://…/ws/device`` with the device token, feeds every frame to the protocol and
carries out the actions it returns (write frames, accept after a delay, transmit on the
``Backend``, heartbeat). Close codes decide whether to reconnect (docs/protocol.md §7).
An optional ``Pacer`` spaces transmissions and enforces the daily cap; an optional
``on_connection`` callback hears how each connection attempt ended (the agent records it
for ``smsgw-agent status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backend import Backend, InboundSms, SendResult
from .outbox import Frame, HeldCommand, PhoneStore
from .pacing import Pacer
from .protocol import Accept, Action, Emit, PhoneProtocol, Refusal, Transmit, Welcomed
from .wire import CloseCode

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024

# Close codes after which reconnecting cannot help (docs/protocol.md §7).
STOP_CODES: dict[int, str] = {
    CloseCode.REPLACED: "replaced",
    CloseCode.REVOKED: "revoked",
    CloseCode.PROTOCOL_VERSION: "protocol_version",
    CloseCode.PROTOCOL_ERROR: "protocol_error",
}


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """How a connection attempt ended, or that a session opened.

    ``connected``: welcomed; ``closed``: a session ended (``close_code``); ``refused``: the
    hub answered the upgrade with an HTTP error (``http_status``, 401 = token refused);
    ``unreachable``: no connection (``detail`` says why); ``failed``: a bug or a failing
    backend ended the session.
    """

    kind: Literal["connected", "closed", "refused", "unreachable", "failed"]
    detail: str = ""
    close_code: int | None = None
    http_status: int | None = None


class Backoff:
    """Exponential backoff with full jitter: sleep ~ U(0, min(max, base * 2**n)).

    Full jitter spreads a fleet of phones that lost the hub at the same moment, so they do
    not all reconnect in the same instant when it comes back.
    """

    def __init__(self, base: float, maximum: float, rng: random.Random | None = None) -> None:
        if base <= 0 or maximum < base:
            raise ValueError("need 0 < base <= maximum")
        self.base = base
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        # Cap the exponent: 2**n overflows floats long after it passed any sane maximum.
        return min(self.maximum, math.ldexp(self.base, min(self.failures, 60)))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


def drain_delay(reason: str, maximum: float, rng: random.Random | None = None) -> float:
    """The delay in a 4005 close reason (``draining; reconnect_in=2.35``), at most
    ``maximum``; a random one up to ``maximum`` when the reason carries none."""
    for part in reason.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "reconnect_in":
            try:
                delay = float(value)
            except ValueError:
                break
            if math.isfinite(delay) and delay >= 0:
                return min(delay, maximum)
            break
    return (rng or random).uniform(0, maximum)


def ws_url_for(server_url: str) -> str:
    """``http://host:port[/prefix]`` → ``ws://host:port[/prefix]/ws/device``."""
    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"server URL must be http(s) or ws(s): {server_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/device"):
        path += "/ws/device"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class PhoneClient:
    """One phone connected to the hub until stopped.

    ``accept_delay`` overrides ``backend.accept_delay`` when given. Observable state for
    tests and tools: ``connected`` (set while a welcomed session is open), ``done`` (set
    when ``run`` returns), ``device_id``, ``welcomes``, ``close_code`` (of the last
    session) and ``stopped_reason`` (``replaced``, ``revoked``, ``protocol_version``,
    ``protocol_error``, ``stopped`` or ``killed``). ``sleep()`` / ``wake()`` doze the phone
    (socket closed, no reconnect) and wake it, as an FCM wake would; ``asleep``, ``wakes``.
    """

    def __init__(
        self,
        server_url: str,
        device_token: str,
        backend: Backend,
        store: PhoneStore,
        *,
        accept_delay: float | None = None,
        app_version: str = "sim-0.1",
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        fcm_token: str | None = None,
        rng: random.Random | None = None,
        pacer: Pacer | None = None,
        on_connection: Callable[[ConnectionEvent], None] | None = None,
    ) -> None:
        self.url = ws_url_for(server_url)
        self.backend = backend
        self.store = store
        self.accept_delay = accept_delay
        self.fcm_token = fcm_token
        self.pacer = pacer
        self.on_connection = on_connection
        self.protocol = PhoneProtocol(
            store,
            app_version=app_version,
            accepting=lambda: backend.accepting,
            refuse=self._refusal,
        )
        self.backoff = Backoff(backoff_base, backoff_max, rng)
        self._token = device_token

        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.device_id: str | None = None
        self.welcomes = 0
        self.close_code: int | None = None
        self.http_status: int | None = None  # set when the hub refused the upgrade
        self._drain_delay: float | None = None  # suggested by a 4005 close (draining)
        self.stopped_reason: str | None = None

        self._ws: ClientConnection | None = None
        self._open = False  # welcome received on the current socket
        self._stopping = False
        self._wake = asyncio.Event()  # interrupts backoff sleeps on stop
        # Dozing (``sleep()``): no socket until ``wake()``, as an Android phone in Doze
        # until a high-priority FCM message arrives. ``wakes`` counts the wakes that woke it.
        self.asleep = False
        self.wakes = 0
        self._roused = asyncio.Event()
        self._running = False
        self._session_tasks: set[asyncio.Task[None]] = set()  # die with the socket
        self._transmit_tasks: set[asyncio.Task[None]] = set()  # outlive reconnects

        backend.set_delivery_callback(self._on_delivery)
        backend.set_delivery_failure_callback(self._on_delivery_failure)
        backend.set_inbound_callback(self._on_inbound)

    # -- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect and reconnect until a stop close code, ``stop()`` or ``kill()``."""
        if self._running:
            raise RuntimeError("PhoneClient.run() is already running")
        self._running = True
        try:
            await self.backend.flush_inbound()
            while not self._stopping:
                if self.asleep:
                    await self._doze()
                    continue
                welcomed_before = self.welcomes
                stop_reason = await self._connect_once()
                if stop_reason is not None:
                    self._stop_with(stop_reason)
                    break
                if self._stopping:
                    break
                if self.asleep:
                    continue  # closed by sleep(): no reconnect until wake()
                if self.welcomes > welcomed_before:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                if self._drain_delay is not None:
                    # The hub node is draining: come back after the delay it chose for us
                    # (spread across its phones), reaching another node through the LB.
                    delay, self._drain_delay = self._drain_delay, None
                log.info("%s: reconnecting in %.2fs", self._label, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            await self._cancel(self._transmit_tasks)
            self._running = False
            self.done.set()

    async def stop(self) -> None:
        """Close the session cleanly (1001 going away) and end ``run``."""
        self._stop_with("stopped")
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.GOING_AWAY, "phone stopping")
        await self._wait_done()

    async def kill(self) -> None:
        """Drop the TCP connection without a close frame, like a phone losing power."""
        self._stop_with("killed")
        ws = self._ws
        if ws is not None:
            ws.transport.abort()
        await self._wait_done()

    def _stop_with(self, reason: str) -> None:
        if not self._stopping:
            self._stopping = True
            self.stopped_reason = reason
        self._wake.set()
        self._roused.set()

    async def sleep(self) -> None:
        """Doze: close the socket (1000) and stay offline until ``wake()``. Accepted
        commands stay in the store and reports wait for the next session, as on a phone
        whose app Android suspended."""
        self.asleep = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.NORMAL, "dozing")

    def wake(self) -> bool:
        """A wake arrived (FCM ``{"type": "wake"}``): reconnect now if dozing. Returns
        whether the phone was asleep."""
        if not self.asleep:
            return False
        self.asleep = False
        self.wakes += 1
        self.backoff.reset()
        self._roused.set()
        return True

    async def _doze(self) -> None:
        while self.asleep and not self._stopping:
            self._roused.clear()
            await self._roused.wait()

    async def _wait_done(self) -> None:
        if self._running:
            await self.done.wait()

    @property
    def _label(self) -> str:
        return self.device_id or "phone"

    # -- one connection -----------------------------------------------------------

    async def _connect_once(self) -> str | None:
        """Run one session; return a stop reason, or None to reconnect."""
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with connect(
                self.url,
                additional_headers=headers,
                compression=None,
                max_size=MAX_FRAME_BYTES,
                open_timeout=10,
            ) as ws:
                self._ws = ws
                self.http_status = None
                try:
                    if self.stopped_reason == "killed":  # kill() raced with the handshake
                        ws.transport.abort()
                    elif self._stopping:
                        await ws.close(CloseCode.GOING_AWAY, "phone stopping")
                    else:
                        await self._session(ws)
                finally:
                    self._ws = None
                    await self._end_session()
            self.close_code = ws.close_code
        except InvalidStatus as exc:
            status = self.http_status = exc.response.status_code
            log.warning("%s: hub refused the connection with HTTP %d", self._label, status)
            self._notify(ConnectionEvent("refused", f"HTTP {status}", http_status=status))
            return "revoked" if status == 401 else None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("%s: cannot connect: %s", self._label, exc)
            self._notify(ConnectionEvent("unreachable", str(exc) or type(exc).__name__))
            return None
        except Exception as exc:
            # A bug or a failing backend must not kill the phone for good: retry later.
            log.exception("%s: session failed", self._label)
            self._notify(ConnectionEvent("failed", repr(exc)[:300]))
            return None
        log.info("%s: session closed with %s", self._label, self.close_code)
        self._notify(ConnectionEvent("closed", ws.close_reason or "", close_code=self.close_code))
        if self.close_code is None:
            return None
        if self.close_code == CloseCode.DRAINING:
            self._drain_delay = drain_delay(ws.close_reason or "", self.backoff.maximum)
        return STOP_CODES.get(self.close_code)

    async def _session(self, ws: ClientConnection) -> None:
        hello = self.protocol.hello(
            await self.backend.status(), self.backend.sims(), self.fcm_token
        )
        try:
            await ws.send(_dumps(hello))
            async for message in ws:
                if isinstance(message, bytes):
                    log.warning("%s: ignoring a binary frame", self._label)
                    continue
                await self._execute(self.protocol.receive_text(message))
        except ConnectionClosed:
            pass

    async def _end_session(self) -> None:
        self._open = False
        self.connected.clear()
        self.protocol.disconnected()
        await self._cancel(self._session_tasks)

    # -- actions ------------------------------------------------------------------

    async def _execute(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                await self._emit(action.frame)
            elif isinstance(action, Accept):
                await self._schedule_accept(action)
            elif isinstance(action, Transmit):
                self._spawn(self._transmit(action.command), self._transmit_tasks)
            elif isinstance(action, Welcomed):
                self._welcomed(action)

    def _welcomed(self, action: Welcomed) -> None:
        self.device_id = action.device_id
        self.welcomes += 1
        self._open = True
        self._spawn(self._heartbeat(action.heartbeat_interval), self._session_tasks)
        self.connected.set()
        log.info("%s: session open", self._label)
        self._notify(ConnectionEvent("connected", action.device_id))

    async def _emit(self, frame: Frame) -> None:
        ws = self._ws
        if ws is None or not self._open:
            return  # stored frames go again after the next welcome
        with contextlib.suppress(ConnectionClosed):
            await ws.send(_dumps(frame))

    async def _schedule_accept(self, action: Accept) -> None:
        delay = self.accept_delay if self.accept_delay is not None else self.backend.accept_delay
        if delay <= 0:
            await self._execute(self.protocol.accept(action.message_id, action.attempt))
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            await self._execute(self.protocol.accept(action.message_id, action.attempt))

        # Tied to the session: after a reconnect, hello.held covers the offer instead.
        self._spawn(later(), self._session_tasks)

    async def _transmit(self, command: HeldCommand) -> None:
        try:
            result = await self._paced_send(command)
        except asyncio.CancelledError:
            self.protocol.transmit_aborted(command.message_id)
            raise
        except Exception as exc:
            log.exception("%s: backend failed to send %s", self._label, command.message_id)
            result = SendResult(
                ok=False, error_code="backend_error", error=str(exc)[:500], retryable=True
            )
        finally:
            if self.pacer is not None:
                self.pacer.finished(command.message_id)
        await self._execute(self.protocol.transmitted(command.message_id, command.attempt, result))

    async def _paced_send(self, command: HeldCommand) -> SendResult:
        if self.pacer is not None:
            refusal = await self.pacer.turn(command.message_id, self.backend.min_send_interval)
            if refusal is not None:
                log.warning("%s: not sending %s: %s", self._label, command.message_id, refusal)
                return SendResult(
                    ok=False,
                    error_code=refusal.error_code,
                    error=refusal.error,
                    retryable=True,
                    parts=0,
                )
        return await self.backend.send_sms(
            command.message_id, command.to, command.body, command.sim_slot
        )

    def _refusal(self) -> Refusal | None:
        reason = self.backend.unavailable()
        if reason is not None:
            return Refusal("unavailable", reason)
        return self.pacer.refusal() if self.pacer is not None else None

    def _notify(self, event: ConnectionEvent) -> None:
        if self.on_connection is None:
            return
        try:
            self.on_connection(event)
        except Exception:
            log.exception("%s: connection listener failed", self._label)

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._emit(self.protocol.heartbeat(await self.backend.status()))

    async def _on_delivery(self, message_id: str) -> None:
        await self._execute(self.protocol.delivered(message_id))

    async def _on_delivery_failure(self, message_id: str, error_code: str, error: str) -> None:
        await self._execute(self.protocol.delivery_failed(message_id, error_code, error))

    async def _on_inbound(self, sms: InboundSms) -> None:
        await self._execute(self.protocol.inbound(sms))

    # -- tasks --------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)

    @staticmethod
    async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("phone task failed", exc_info=task.exception())


def _dumps(frame: Frame) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
