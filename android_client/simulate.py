"""Run a fleet of simulated phones against a hub (``python -m android_client simulate``).

Each phone is a ``PhoneClient`` over a ``SimulatedBackend`` with a JSON store. The state
directory remembers, per phone, the device id and token (mode 0600) and the outbox, so a
restart reconnects the same devices instead of enrolling new ones; a phone re-enrolls only
when the hub refuses its token. Hardware ids are ``sim-<index>-<suffix>`` where the suffix
is random per state directory, so two state directories never claim the same phones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from .client import Backoff, PhoneClient
from .enroll import Enrollment, EnrollmentError, enroll
from .outbox import JsonPhoneStore
from .simulated import SimulatedBackend, SimulatedConfig

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".smsgw-sim")
_ENROLL_CONCURRENCY = 8


class EnrollFn(Protocol):
    def __call__(
        self,
        server_url: str,
        *,
        name: str,
        hardware_id: str,
        api_key: str | None = ...,
    ) -> Awaitable[Enrollment]: ...


@dataclass
class SimulateOptions:
    server: str
    api_key: str | None
    phones: int
    state_dir: Path = DEFAULT_STATE_DIR
    failure_rate: float = 0.0
    accept_delay: float = 0.0
    send_delay: float = 0.0
    deliver: bool = True
    delivery_delay: float = 1.0
    inbound_every: float | None = None
    seed: int | None = None
    backoff_max: float = 30.0


@dataclass
class Credentials:
    index: int
    name: str
    hardware_id: str
    device_id: str
    device_token: str
    server: str


class StateDir:
    """Files of one simulator instance: suffix, per-phone credentials and outboxes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def suffix(self) -> str:
        file = self.path / "instance.json"
        if file.exists():
            return str(json.loads(file.read_text(encoding="utf-8"))["suffix"])
        suffix = secrets.token_hex(3)
        _write_private(file, {"suffix": suffix})
        return suffix

    def credentials_path(self, index: int) -> Path:
        return self.path / f"phone-{index}.json"

    def store_path(self, index: int) -> Path:
        return self.path / f"phone-{index}.outbox.json"

    def load_credentials(self, index: int) -> Credentials | None:
        file = self.credentials_path(index)
        if not file.exists():
            return None
        try:
            return Credentials(**json.loads(file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", file, exc)
            return None

    def save_credentials(self, creds: Credentials) -> None:
        _write_private(self.credentials_path(creds.index), asdict(creds))


def _write_private(file: Path, data: dict[str, Any]) -> None:
    """Atomically write JSON readable by the owner only (it holds device tokens)."""
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
    os.replace(tmp, file)


class SimulatedPhone:
    """One simulated phone: enrolls if needed, then runs a ``PhoneClient`` until stopped."""

    def __init__(
        self,
        index: int,
        opts: SimulateOptions,
        state: StateDir,
        *,
        suffix: str,
        enroll_fn: EnrollFn,
        enroll_slots: asyncio.Semaphore,
        out: Callable[[str], None],
    ) -> None:
        self.index = index
        self.opts = opts
        self.state = state
        self.name = f"sim-{index}"
        self.hardware_id = f"sim-{index}-{suffix}"
        self._enroll_fn = enroll_fn
        self._enroll_slots = enroll_slots
        self._out = out
        seed = None if opts.seed is None else opts.seed * 10_007 + index
        self.backend = SimulatedBackend(
            SimulatedConfig(
                accept_delay=opts.accept_delay,
                send_delay=opts.send_delay,
                failure_rate=opts.failure_rate,
                deliver=opts.deliver,
                delivery_delay=opts.delivery_delay,
                seed=seed,
            )
        )
        self.store = JsonPhoneStore(state.store_path(index), fsync=False)
        self.client: PhoneClient | None = None
        self.error: str | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.backend.aclose()

    async def _run(self) -> None:
        creds = self.state.load_credentials(self.index)
        just_enrolled = False
        if creds is None:
            creds = await self._enroll()
            just_enrolled = True
        while creds is not None and not self._stopping.is_set():
            client = PhoneClient(
                self.opts.server,
                creds.device_token,
                self.backend,
                self.store,
                backoff_max=self.opts.backoff_max,
            )
            self.client = client
            announcer = asyncio.create_task(self._announce(client, creds))
            extra = (
                asyncio.create_task(self._inbound_loop(client)) if self.opts.inbound_every else None
            )
            try:
                await client.run()
            finally:
                for task in (announcer, extra):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            if self._stopping.is_set():
                return
            refused = client.stopped_reason == "revoked" and client.http_status == 401
            if refused and not (just_enrolled and client.welcomes == 0):
                # Token refused at the door (e.g. the hub's database was reset): enroll again.
                log.warning("%s: token refused, enrolling again", self.name)
                creds = await self._enroll()
                just_enrolled = True
                continue
            self.error = f"stopped: {client.stopped_reason} (close code {client.close_code})"
            self._out(f"phone {self.index} {self.name} {self.error}")
            return

    async def stop(self) -> None:
        self._stopping.set()
        if self.client is not None:
            await self.client.stop()

    async def _enroll(self) -> Credentials | None:
        if self.opts.api_key is None:
            self.error = "needs enrolling but no --api-key was given"
            self._out(f"phone {self.index} {self.name} {self.error}")
            return None
        backoff = Backoff(0.5, 10.0)
        while not self._stopping.is_set():
            try:
                async with self._enroll_slots:
                    enrollment = await self._enroll_fn(
                        self.opts.server,
                        name=self.name,
                        hardware_id=self.hardware_id,
                        api_key=self.opts.api_key,
                    )
            except EnrollmentError as exc:
                self.error = str(exc)
                self._out(f"phone {self.index} {self.name} {self.error}")
                return None
            except httpx.TransportError as exc:
                delay = backoff.next_delay()
                log.warning("%s: hub unreachable (%s), retrying in %.1fs", self.name, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            creds = Credentials(
                index=self.index,
                name=self.name,
                hardware_id=self.hardware_id,
                device_id=enrollment.device_id,
                device_token=enrollment.device_token,
                server=self.opts.server,
            )
            self.state.save_credentials(creds)
            return creds
        return None

    async def _announce(self, client: PhoneClient, creds: Credentials) -> None:
        await client.connected.wait()
        self._out(
            f"phone {self.index} online: name={self.name} device_id={client.device_id} "
            f"hardware_id={creds.hardware_id}"
        )

    async def _inbound_loop(self, client: PhoneClient) -> None:
        every = self.opts.inbound_every or 0.0
        rng = random.Random()
        n = 0
        await asyncio.sleep(rng.uniform(0, every))  # spread phones over the interval
        while True:
            n += 1
            sender = f"+1555{rng.randrange(10**7):07d}"
            await self.backend.receive_sms(sender, f"simulated inbound #{n} to {self.name}")
            await asyncio.sleep(every)


async def simulate(
    opts: SimulateOptions,
    *,
    enroll_fn: EnrollFn = enroll,
    out: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the phones until ``stop`` is set, SIGINT/SIGTERM, or every phone has stopped."""
    emit = out or (lambda line: print(line, flush=True))
    stop = stop or asyncio.Event()
    state = StateDir(opts.state_dir)
    suffix = state.suffix()
    slots = asyncio.Semaphore(_ENROLL_CONCURRENCY)
    phones = [
        SimulatedPhone(
            i, opts, state, suffix=suffix, enroll_fn=enroll_fn, enroll_slots=slots, out=emit
        )
        for i in range(opts.phones)
    ]
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(phone.run()) for phone in phones]
    stop_waiter = asyncio.create_task(stop.wait())
    try:
        # Keep running while at least one phone does.
        waiters: list[asyncio.Future[Any]] = [
            stop_waiter,
            asyncio.gather(*tasks, return_exceptions=True),
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await asyncio.gather(*(phone.stop() for phone in phones), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_waiter.cancel()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    for phone in phones:
        b = phone.backend
        emit(
            f"phone {phone.index} {phone.name}: sent {len(b.transmitted)}, "
            f"failed {len(b.failures)}, delivered {len(b.delivered)}"
        )
    return 0 if stop.is_set() or all(p.error is None for p in phones) else 1
