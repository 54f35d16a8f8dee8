"""End-to-end harness: a real uvicorn server on a free loopback port, real HTTP clients,
and simulated phones from ``android_client`` speaking the real protocol over real sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from android_client.client import PhoneClient
from android_client.enroll import enroll
from android_client.outbox import MemoryPhoneStore, PhoneStore
from android_client.simulated import SimulatedBackend, SimulatedConfig
from smsgw.app import create_app
from smsgw.config import Settings
from smsgw.server import uvicorn_config
from tests.pgtest import hub_database_url  # SQLite file, or a schema (SMSGW_TEST_STORE)

ADMIN_KEY = "sk_000000000000_test-admin-key"

# Fast timings so failover tests take seconds, not minutes.
TEST_SETTINGS: dict[str, Any] = {
    "admin_key": ADMIN_KEY,
    "accept_timeout": 1.0,
    "app_accept_timeout": 2.0,
    "dispatch_deadline": 4.0,
    "outbox_interval": 0.2,
    "retry_backoff": 0.2,
    "heartbeat_interval": 30.0,
    "log_level": "warning",
}


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll a condition that has no event to wait on (e.g. state in another process)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class HubServer:
    """The hub under uvicorn, in this event loop, on a port of its own."""

    def __init__(self, db_path: Path, **overrides: Any) -> None:
        self.db_path = db_path
        self.overrides = overrides
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = 0
        self.settings: Settings | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HubServer:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        self.settings = Settings(
            database_url=await hub_database_url(self.db_path),
            host="127.0.0.1",
            port=self.port,
            **{**TEST_SETTINGS, **self.overrides},
        )
        self.app = create_app(self.settings)
        self.server = uvicorn.Server(
            uvicorn_config(self.settings, self.app, timeout_graceful_shutdown=2)
        )
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        await wait_for(lambda: self.server is not None and self.server.started, what="startup")
        return self

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 15)
        self.server = None

    @property
    def hub(self) -> Any:
        return self.app.state.hub

    def client(self, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
        headers = {"X-API-Key": key} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


class HubProcess:
    """The hub as a separate ``python -m smsgw serve`` process, for kill -9 tests.
    ``log_path``: where its output goes (kept for a failing multi-node test);
    ``database_url``: a database of the caller's choosing instead of ``db_path``'s."""

    def __init__(
        self,
        db_path: Path,
        log_path: Path | None = None,
        *,
        database_url: str | None = None,
        **overrides: Any,
    ) -> None:
        self.db_path = db_path
        self.log_path = log_path
        self.database_url = database_url
        self.overrides = overrides
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int | None = None) -> HubProcess:
        """Start on ``port`` (a restart keeps its port so phones find it again)."""
        if port is None:
            with free_socket() as sock:
                port = sock.getsockname()[1]
        self.port = port
        env = dict(os.environ)
        for key, value in {**TEST_SETTINGS, **self.overrides}.items():
            env[f"SMSGW_{key.upper()}"] = str(value)
        env.update(
            SMSGW_DATABASE_URL=self.database_url or await hub_database_url(self.db_path),
            SMSGW_HOST="127.0.0.1",
            SMSGW_PORT=str(self.port),
        )
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smsgw", "serve"],
            env=env,
            stdout=log or subprocess.DEVNULL,
            stderr=log or subprocess.DEVNULL,
        )
        if log is not None:
            log.close()  # the child has its own copy

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(self.url + "/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, 20, "hub process to answer")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
        headers = {"X-API-Key": key} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


_hardware_ids = itertools.count(1)


@dataclass
class Phone:
    client: PhoneClient
    backend: SimulatedBackend
    store: PhoneStore
    device_id: str
    token: str
    task: asyncio.Task[None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transmitted_ids(self) -> list[str]:
        return [m for m, _, _ in self.backend.transmitted]


class Farm:
    """Simulated phones enrolled on a hub and connected to it."""

    def __init__(self, url_of: Callable[[], str]) -> None:
        self.url_of = url_of
        self.phones: list[Phone] = []

    async def add(
        self,
        name: str | None = None,
        *,
        connect: bool = True,
        hardware_id: str | None = None,
        **config: Any,
    ) -> Phone:
        hw = hardware_id or f"hw-{next(_hardware_ids)}-{os.getpid()}"
        enrollment = await enroll(self.url_of(), name=name or hw, hardware_id=hw, api_key=ADMIN_KEY)
        backend = SimulatedBackend(SimulatedConfig(**config))
        store = MemoryPhoneStore()
        phone = Phone(
            client=self._client(enrollment.device_token, backend, store),
            backend=backend,
            store=store,
            device_id=enrollment.device_id,
            token=enrollment.device_token,
        )
        self.phones.append(phone)
        if connect:
            await self.connect(phone)
        return phone

    def _client(self, token: str, backend: SimulatedBackend, store: PhoneStore) -> PhoneClient:
        return PhoneClient(self.url_of(), token, backend, store, backoff_base=0.05, backoff_max=0.3)

    async def connect(self, phone: Phone, timeout: float = 10.0) -> None:
        phone.task = asyncio.create_task(phone.client.run())
        await asyncio.wait_for(phone.client.connected.wait(), timeout)

    async def restart(self, phone: Phone) -> None:
        """The agent process restarts: same token, same durable store, new connection."""
        await phone.client.stop()
        phone.client = self._client(phone.token, phone.backend, phone.store)
        await self.connect(phone)

    async def close(self) -> None:
        for phone in self.phones:
            await phone.client.stop()
            if phone.task is not None:
                await asyncio.gather(phone.task, return_exceptions=True)
            await phone.backend.aclose()
