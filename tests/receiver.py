"""A real webhook receiver for tests: a small Starlette app under uvicorn on loopback.

It verifies every request's signature with ``smsgw.signature.verify`` (as a user's
receiver would), records what arrived, and can be told to misbehave: answer 500, hang
past the hub's timeout, or answer a redirect. Stopping it makes the port refuse
connections; starting it again on the same port is "a receiver that comes back".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smsgw.signature import HEADER, SignatureError, verify
from tests.harness import free_socket, wait_for


@dataclass
class Received:
    event: dict[str, Any]
    headers: dict[str, str]
    signatures: int  # how many v1= values the header carried


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=list)  # any of them may verify
    # "smsgate": verify SMSGate's X-Signature (hex HMAC-SHA256 of body + X-Timestamp, as
    # its receivers do, smsgate-wire.md §5.5) with the keys in ``secrets``.
    scheme: str = "smsgw"
    mode: str = "ok"  # ok | fail | hang | redirect
    hang_seconds: float = 30.0
    received: list[Received] = field(default_factory=list)  # verified and answered 2xx
    attempts: int = 0  # every request, whatever was answered
    bad_signatures: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        sock = free_socket()
        if self.port:
            sock.close()
            sock = _bind(self.port)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/hook", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await wait_for(lambda: self._server is not None and self._server.started, what="receiver")
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            await asyncio.wait_for(self._task, 10)
        self._server = None

    async def _handle(self, request: Request) -> Response:
        self.attempts += 1
        body = await request.body()
        header = request.headers.get(HEADER)
        signatures = (header or "").count("v1=")
        for secret in self.secrets:
            if self.scheme == "smsgate":
                stamp = request.headers.get("x-timestamp", "")
                mac = hmac.new(secret.encode(), body + stamp.encode(), hashlib.sha256)
                if hmac.compare_digest(mac.hexdigest(), request.headers.get("x-signature", "")):
                    break
                continue
            try:
                verify(header, body, secret)
                break
            except SignatureError:
                continue
        else:
            self.bad_signatures += 1
            return Response("bad signature", status_code=400)
        if self.mode == "fail":
            return Response("boom", status_code=500)
        if self.mode == "redirect":
            return Response(status_code=307, headers={"Location": self.url})
        if self.mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        self.received.append(Received(json.loads(body), dict(request.headers), signatures))
        return Response(status_code=204)

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if type_ is None or r.event["type"] == type_]

    def duplicates(self) -> list[str]:
        counts = Counter(r.event["id"] for r in self.received)
        return [k for k, n in counts.items() if n > 1]


def _bind(port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock
