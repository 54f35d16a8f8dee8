"""``GET /ws/device``: the phones' WebSocket server, a thin pump around ``DeviceConnection``.

uvicorn hands every WebSocket upgrade to this protocol class (``Config(ws=...)``, see
``smsgw/server.py``) instead of to its own ASGI WebSocket implementation. Why: a hub holds
thousands of mostly idle phones, and the generic path keeps per connection an ASGI task
parked in Starlette's middleware frames, a receive queue, the scope with every request
header, and a few asyncio primitives (about 26 KiB of Python objects per phone), and it
sends every frame through four layers of ASGI wrappers. Here a connection is the sans-I/O
``websockets.ServerProtocol``, our ``DeviceConnection`` and a transport; a task runs only
while received frames are being handled, and the frames one flush queues go out in a
single socket write.

The device token is checked before the upgrade is accepted, so a refused phone gets an
HTTP 401 with the usual JSON error body and never a socket. Only ``/ws/device`` exists;
any other WebSocket path is a 404.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
from typing import Any, cast

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from websockets.datastructures import Headers, MultipleValuesError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from smsgw.auth import presented_secret
from smsgw.connection import DeviceConnection, Transport
from smsgw.errors import ApiError, error_response
from smsgw.hub import Hub
from smsgw.protocol import MAX_FRAME_BYTES, CloseCode

log = logging.getLogger("smsgw.device")

PATH = "/ws/device"

# Seconds a closing handshake may take before the TCP connection is simply dropped.
CLOSE_TIMEOUT = 5.0

# Seconds the token lookup of an upgrade may take (the database may be slow or down).
AUTH_TIMEOUT = 10.0

# Received frames waiting for the handler before we stop reading from the socket: a phone
# that talks faster than the hub handles is slowed down by TCP, not buffered in memory.
MAX_PENDING_FRAMES = 64

# In the inbox: a binary frame (refused by the protocol), and the end of the connection.
_BINARY = object()
_END = object()

_WS_LOGGER = logging.getLogger("smsgw.device.ws")


class DeviceSocket(asyncio.Protocol, Transport):
    """One phone's WebSocket connection. Subclassed per hub by ``protocol_for``."""

    hub: Hub

    def __init__(self, config: Any, server_state: Any, app_state: Any = None) -> None:
        # uvicorn's contract for a WebSocket protocol class: it tracks the connection in
        # ``server_state.connections`` and calls ``shutdown()`` on each when it stops.
        self._connections: set[Any] = server_state.connections
        self._tasks: set[asyncio.Task[None]] = server_state.tasks
        self._root_path: str = config.root_path or ""
        self._max_size: int = config.ws_max_size or MAX_FRAME_BYTES
        # Who may name the client in X-Forwarded-For (None: nobody), as for HTTP requests.
        allowed = getattr(config, "forwarded_allow_ips", None)
        self._trusted: str | None = None
        if getattr(config, "proxy_headers", False) and allowed is not None:
            self._trusted = allowed if isinstance(allowed, str) else ",".join(allowed)
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.conn: DeviceConnection | None = None
        self._inbox: list[object] = []  # a list, not a deque: 56 bytes, not 760
        self._pump: asyncio.Task[None] | None = None
        # A fragmented message being assembled.
        self._parts: list[bytes | bytearray | memoryview] | None = None
        self._parts_opcode = Opcode.TEXT
        self._drain: asyncio.Future[None] | None = None  # set while the transport is full
        self._reading_paused = False
        self._handshaking = False  # the token is being checked: read nothing meanwhile
        self._failed = False  # we failed the connection (1007): ignore what follows
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but the same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.ws = ServerProtocol(max_size=self._max_size, logger=_WS_LOGGER)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                # Nothing from an unauthenticated peer is read, parsed or answered (not
                # even a ping) until its token is checked.
                self._handshaking = True
                self._spawn(self._handshake(event))
            elif isinstance(event, Frame) and not self._failed and not self._handshaking:
                self._frame(event)
        if self._handshaking:
            # Frames before our 101 break the protocol; whatever websockets answered to
            # them (a pong) must not reach an unauthenticated peer, nor precede the 101.
            ws.data_to_send()
        else:
            self._write_out()
        self._update_reading()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._write_out()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)  # a writer waiting for room learns it is closed
        if self.conn is not None:
            # Frames received before the drop are still handled (a "sent" report must
            # not be lost because the phone's network went right after), then the end.
            self._inbox.append(_END)
            self._ensure_pump()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()
        # A phone that does not read gets nothing read from it either: even the replies
        # websockets makes on its own (pongs) would pile up in our write buffer.
        self._update_reading()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._update_reading()

    # -- uvicorn ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is stopping (after the hub's drain): say so, then hang up."""
        if self.ws is not None and self.ws.state is State.OPEN:
            self._send_close(1012, "server restarting")
        elif self.transport is not None and not self._lost:
            self.transport.close()
            self._arm_close_timer()

    # -- Transport (what DeviceConnection writes through) ----------------------------------

    async def send_texts(self, texts: list[str]) -> None:
        ws = self.ws
        if self._lost or ws is None or ws.state is not State.OPEN:
            raise ConnectionError("connection closed")
        for text in texts:
            ws.send_text(text.encode())
        self._write_out()
        drain = self._drain
        if drain is not None and not drain.done():
            await drain  # the phone is not reading: wait for room rather than buffer more
            if self._lost:
                raise ConnectionError("connection closed")

    def close(self, code: int, reason: str, last: list[str]) -> None:
        ws = self.ws
        if ws is None or ws.state is not State.OPEN or self._lost:
            return
        for text in last:
            ws.send_text(text.encode())
        self._send_close(code, reason)

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write_out(self) -> None:
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        chunks = ws.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""  # websockets' SEND_EOF: the server ends the TCP connection
        data = b"".join(chunks)
        if self._lost:
            return
        if data:
            transport.write(data)
        if eof:
            # A lingering close: end our side (FIN after the buffer, the close frame in it)
            # and go on reading, dropping what comes (websockets discards it), until the
            # phone hangs up. Closing at once while the phone is still sending makes the
            # kernel answer its data with a reset, which destroys the close frame unread:
            # the phone saw 1006, not 1009 or 1007 (found by tests/fuzz/test_device_fuzz.py).
            if transport.can_write_eof():
                transport.write_eof()
            else:  # TLS cannot half-close
                transport.close()
            self._arm_close_timer()  # ...and hang up on a phone that never does

    def _send_close(self, code: int, reason: str) -> None:
        assert self.ws is not None
        self.ws.send_close(code, reason[:120])
        self._write_out()
        # The phone should answer with its own close frame; if it does not, hang up.
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._lost:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _gone(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self._gone():
            return
        stop = (
            self._handshaking
            or len(self._inbox) >= MAX_PENDING_FRAMES
            or (self._drain is not None and not self._drain.done())
        )
        if stop and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not stop and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _reject(self, error: ApiError) -> None:
        ws = self.ws
        assert ws is not None
        status = error.status
        # The same body and headers as every other refusal of the API.
        refusal = error_response(status, error.code, error.message, headers=error.headers)
        headers = Headers([(k.decode(), v.decode()) for k, v in refusal.raw_headers])
        headers["Connection"] = "close"
        phrase = http.HTTPStatus(status).phrase
        ws.send_response(Response(status, phrase, headers, bytes(refusal.body)))
        self._write_out()

    async def _client(self, request: Request) -> str | None:
        """The phone's address, which failed upgrades are counted under: the socket's
        peer, or the client a trusted proxy names. uvicorn's own proxy-headers middleware
        decides, so the upgrade reads X-Forwarded-For exactly as every HTTP request does
        (this protocol bypasses the ASGI path it runs on)."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        if self._trusted is None or client is None:
            return client[0] if client else None
        forwarded = [
            (b"x-forwarded-for", value.encode("latin-1", "replace"))
            for value in request.headers.get_all("X-Forwarded-For")
        ]
        scope: dict[str, Any] = {"type": "http", "client": client, "headers": forwarded}
        await _proxy(self._trusted)(scope, _no_receive, _no_send)  # sets scope["client"]
        found = scope.get("client")
        return str(found[0]) if found else None

    async def _handshake(self, request: Request) -> None:
        try:
            await self._check_and_accept(request)
        except Exception:
            log.exception("WebSocket upgrade failed")
            if not self._gone() and self.ws is not None and self.ws.state is State.CONNECTING:
                self._reject(ApiError(500, "internal_error", "the upgrade could not be completed"))
            elif self.transport is not None and not self._lost and self.conn is None:
                self.transport.abort()
        finally:
            self._handshaking = False
            self._update_reading()

    async def _check_and_accept(self, request: Request) -> None:
        hub, ws = self.hub, self.ws
        assert ws is not None
        path = request.path.partition("?")[0]
        if path != PATH and path != self._root_path + PATH:
            self._reject(ApiError(404, "not_found", f"no WebSocket endpoint at {path}"))
            return
        if hub.draining:
            # Shutting down: the phone retries, and the load balancer sends it elsewhere.
            self._reject(ApiError(503, "draining", "this hub node is draining"))
            return
        try:
            secret = presented_secret(request.headers)
        except MultipleValuesError:
            self._reject(ApiError(400, "bad_request", "more than one credential header"))
            return
        device_id = None
        refused: ApiError | None = None
        if secret:
            try:
                async with asyncio.timeout(AUTH_TIMEOUT):
                    device_id = await hub.auth.resolve_device_id(secret)
            except ApiError as exc:  # a valid token that is not an agent's: 403
                refused = exc
        if self._gone() or ws.state is not State.CONNECTING:
            return  # the phone hung up (or the server is stopping) while we looked it up
        if refused is not None:
            self._reject(refused)
            return
        if device_id is None:
            if secret is None:
                self._reject(ApiError(401, "unauthorized", "missing device token"))
            else:
                refusal = ApiError(401, "unauthorized", "invalid or revoked device token")
                client = await self._client(request)
                self._reject(hub.auth.failures.refuse(client, refusal))
            return
        if hub.draining:  # the drain began during the lookup and has not seen this phone
            self._reject(ApiError(503, "draining", "this hub node is draining"))
            return
        response = ws.accept(request)  # a malformed upgrade gets websockets' own 4xx
        ws.send_response(response)
        self._write_out()
        # websockets' parser keeps the handshake request in its generator's frame for
        # the life of the connection; its headers are about 2 KiB per phone we no longer
        # need (python -m bench.run --only connections).
        request.headers.clear()
        if response.status_code != 101:
            return
        self.conn = DeviceConnection(hub, device_id, self)
        hub.connections.add(self.conn)  # the hub's watchdog closes it if it falls silent

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._parts, self._parts_opcode = [frame.data], opcode
                return
            self._deliver(opcode, frame.data)
        elif opcode is Opcode.CONT and self._parts is not None:
            self._parts.append(frame.data)
            if frame.fin:
                parts, self._parts = self._parts, None
                self._deliver(self._parts_opcode, b"".join(parts))
        # Ping, pong and close are answered by websockets itself (see _write_out).

    def _deliver(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> None:
        if opcode is Opcode.TEXT:
            try:
                self._inbox.append(bytes(data).decode())
            except UnicodeDecodeError:  # websockets' sans-I/O core leaves this to us
                assert self.ws is not None
                self._failed = True
                self.ws.fail(1007, "invalid UTF-8 in a text frame")
                return
        else:
            self._inbox.append(_BINARY)
        if self.conn is not None:
            self._ensure_pump()

    def _ensure_pump(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())
            self._tasks.add(self._pump)
            self._pump.add_done_callback(self._tasks.discard)

    async def _run_pump(self) -> None:
        """Handle received frames in order; the task ends when the inbox is empty, so an
        idle phone holds no task at all."""
        conn = self.conn
        assert conn is not None
        try:
            while self._inbox:
                items, self._inbox = self._inbox, []
                self._update_reading()
                for item in items:
                    if item is _END:
                        await self._finish(conn)
                        return
                    await self._handle(conn, item)
        finally:
            self._pump = None

    async def _handle(self, conn: DeviceConnection, item: object) -> None:
        """One received frame. A failure is logged with the device and closes the
        session; it never ends the pump, so the end of the connection is always seen."""
        if conn.hung_up:
            return  # the hub ended the session: what the phone still says is not handled
        try:
            if item is _BINARY:
                await conn.handle_binary()
            else:
                assert isinstance(item, str)
                await conn.handle_text(item)
        except Exception:
            log.exception("device %s: connection handler failed", conn.device_id)
            try:
                await conn.close(CloseCode.GOING_AWAY, "internal error")
            except Exception:
                log.exception("device %s: close after a failure failed", conn.device_id)

    async def _finish(self, conn: DeviceConnection) -> None:
        self.hub.connections.discard(conn)
        try:
            await conn.finished()
        except Exception:
            log.exception("device %s: end of connection failed", conn.device_id)


@functools.cache
def _proxy(trusted: str) -> Any:
    """uvicorn's middleware for ``trusted`` around an app that does nothing: it rewrites
    the scope it is given in place. One per setting, not one per phone."""

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    return ProxyHeadersMiddleware(nothing, trusted_hosts=trusted)


async def _no_receive() -> Any:
    raise RuntimeError("not an ASGI request")


async def _no_send(message: Any) -> None:
    raise RuntimeError("not an ASGI request")


def protocol_for(hub: Hub) -> type[DeviceSocket]:
    """The protocol class uvicorn instantiates per upgrade, bound to ``hub``."""
    return type("DeviceSocket", (DeviceSocket,), {"hub": hub})
