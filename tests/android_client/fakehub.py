"""A tiny scripted hub on 127.0.0.1 for the device-side tests (no real hub needed)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

TIMEOUT = 5.0


class FakeSession:
    """One phone connection as the hub sees it: frames in a queue, helpers to answer."""

    def __init__(self, ws: ServerConnection, token: str) -> None:
        self.ws = ws
        self.token = token
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._ids = itertools.count(1)

    async def recv(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), TIMEOUT)

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """Next frame of this type, skipping heartbeats and others."""
        while True:
            frame = await self.recv()
            if frame["type"] == kind:
                return frame

    async def send(self, kind: str, **fields: Any) -> str:
        frame_id = f"h{next(self._ids)}"
        await self.ws.send(json.dumps({"type": kind, "id": frame_id, **fields}))
        return frame_id

    async def welcome(
        self, hello: dict[str, Any], *, device_id: str = "dev-1", hb: float = 30
    ) -> None:
        await self.send(
            "welcome",
            ref=hello["id"],
            protocol="1.0",
            device_id=device_id,
            heartbeat_interval=hb,
            server_time="2030-01-01T00:00:00+00:00",
        )

    async def offer(self, message_id: str, attempt: int = 1, **extra: Any) -> str:
        fields: dict[str, Any] = {
            "to": "+15550001",
            "body": f"body of {message_id}",
            "sim_slot": None,
            "parts": 1,
            "expires_at": None,
        }
        fields.update(extra)
        return await self.send("send", message_id=message_id, attempt=attempt, **fields)

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def wait_closed(self) -> int | None:
        await asyncio.wait_for(self.closed.wait(), TIMEOUT)
        return self.close_code


class FakeHub:
    """Accepts tokens in ``tokens`` (token → device id), refuses others with 401.

    With ``auto_welcome`` the hub answers each hello with a welcome itself.
    """

    def __init__(self, *, auto_welcome: bool = False) -> None:
        self.tokens: dict[str, str] = {"dev_ok": "dev-1"}
        self.auto_welcome = auto_welcome
        self.sessions: asyncio.Queue[FakeSession] = asyncio.Queue()
        self.all_sessions: list[FakeSession] = []
        self.refused = 0
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._check,
            compression=None,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def next_session(self) -> FakeSession:
        return await asyncio.wait_for(self.sessions.get(), TIMEOUT)

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or token not in self.tokens:
            self.refused += 1
            body = json.dumps({"error": {"code": "unauthorized", "message": "bad token"}})
            return Response(
                401, "Unauthorized", Headers({"Content-Type": "application/json"}), body.encode()
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        token = ws.request.headers["Authorization"].removeprefix("Bearer ") if ws.request else ""
        session = FakeSession(ws, token)
        self.all_sessions.append(session)
        await self.sessions.put(session)
        try:
            async for message in ws:
                frame = json.loads(message)
                if self.auto_welcome and frame["type"] == "hello":
                    await session.welcome(frame, device_id=self.tokens.get(token, "?"))
                await session.frames.put(frame)
        except ConnectionClosed:
            pass
        finally:
            session.close_code = ws.close_code
            session.closed.set()


async def wait_task(task: asyncio.Task[Any]) -> None:
    """Wait for a client's run() task, failing the test instead of hanging."""
    try:
        await asyncio.wait_for(asyncio.shield(task), TIMEOUT)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
