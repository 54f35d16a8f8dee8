"""The shipped ``deploy/nginx.conf`` under a real nginx (``tests/nginx.py``), in front of
stub backends that record what reaches them: a dead node, a draining node (503) and a
healthy one. Skipped without nginx, a failure under ``CI=true``. The hubs themselves
behind the same config: ``test_multinode.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness import free_socket
from tests.nginx import SHIPPED, NginxBalancer, require_nginx, shipped_config


@dataclass
class Stub:
    """An HTTP/1.1 backend answering every request with ``status`` and its name."""

    name: str
    status: int
    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> Stub:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        self.server = await asyncio.start_server(self._serve, sock=sock)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:  # keep-alive: several requests per upstream connection
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                line, *rest = head.split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (h.partition(":") for h in rest if h)
                }
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                self.requests.append((line, headers))
                body = self.name.encode()
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(body)}\r\n"
                    f"X-Node: {self.name}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[NginxBalancer, Stub, Stub]]:
    binary = require_nginx()
    with free_socket() as sock:
        dead = sock.getsockname()[1]  # nothing listens there: a node killed with -9
    draining = await Stub("draining", 503).start()
    healthy = await Stub("healthy", 200).start()
    nginx = NginxBalancer(binary, [dead, draining.port, healthy.port], tmp_path / "nginx")
    try:
        await nginx.start()
        yield nginx, draining, healthy
    finally:
        await nginx.stop()
        await draining.stop()
        await healthy.stop()


def test_the_generated_config_keeps_every_shipped_directive(tmp_path: Path) -> None:
    shipped = SHIPPED.read_text()
    generated = shipped_config([1001, 1002], 1003, tmp_path)
    rewritten = ("server hub", "listen 80;")
    for line in shipped.splitlines():
        if line.strip() and not any(r in line for r in rewritten):
            assert line in generated.splitlines(), line
    assert "server 127.0.0.1:1001 max_fails=2 fail_timeout=5s;" in generated
    assert "listen 127.0.0.1:1003;" in generated
    assert "hub1" not in generated and "listen 80;" not in generated


async def test_upgrades_skip_dead_and_draining_nodes_and_posts_are_never_replayed(
    proxied: tuple[NginxBalancer, Stub, Stub],
) -> None:
    nginx, draining, healthy = proxied
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    async with httpx.AsyncClient(base_url=nginx.url, timeout=10) as c:
        # POSTs first: the upgrades' 503s below count as failures (max_fails) and take the
        # draining node out for fail_timeout, the POSTs' 503s do not.
        posts = [await c.post("/sms/dispatch", json={"n": i}) for i in range(6)]
        for _ in range(6):
            r = await c.get("/ws/device", headers=upgrade)
            # Whichever node least_conn tried first, the upgrade ends on the healthy one.
            assert (r.status_code, r.text) == (200, "healthy"), nginx.logs()
    # The upgrade headers reached the node (proxy_http_version 1.1, Upgrade/Connection map).
    line, headers = next(r for r in healthy.requests if r[0].startswith("GET"))
    assert line == "GET /ws/device HTTP/1.1"
    assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    # A REST POST answered 503 by a draining node comes back as is, not retried elsewhere.
    statuses = [r.status_code for r in posts]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    seen = [line for line, _ in draining.requests + healthy.requests if line.startswith("POST")]
    assert len(seen) == len(posts)  # each POST reached exactly one node, once
    # REST keeps its upstream keep-alive connections: no "Connection: upgrade" on them.
    rest = [h for line, h in healthy.requests if line.startswith("POST")]
    assert all(h.get("connection", "").lower() != "upgrade" for h in rest)
