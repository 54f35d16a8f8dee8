"""A tiny round-robin TCP load balancer on loopback, standing in for nginx in tests.

Each new connection goes to the next backend that accepts a TCP connection (a dead node
is skipped, like nginx's ``proxy_next_upstream error``); ``down()`` takes a node out of
rotation as a health check would when ``/ready`` turns 503 during a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from tests.harness import free_socket


class RoundRobinProxy:
    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.port = 0
        self.active: Counter[int] = Counter()  # open connections per backend port
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RoundRobinProxy:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return self

    def down(self, port: int) -> None:
        if port in self.ports:
            self.ports.remove(port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        port = 0
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        self.active[port] += 1
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.active[port] -= 1
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pipes.discard(task)
            # One side ended: end the other too, as a proxy would.
            with contextlib.suppress(Exception):
                writer.transport.abort()
