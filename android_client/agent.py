"""The phone agent: ``smsgw-agent enroll``, ``run`` and ``status`` over one state directory.

The state directory (default ``~/.smsgw-agent``, mode 0700) holds:

- ``hardware_id``: generated once; enrolling again with it keeps the same device id;
- ``credentials.json`` (0600): hub URL, device id and token, written by ``enroll``;
- ``state.db``: the ``SqlitePhoneStore`` (held commands, unacknowledged reports and
  inbound SMS, the Termux inbox mark, the daily counter, the last connection result);
- ``agent.lock``: held while ``run`` runs, so two agents never share one state;
- ``transmissions.log``: what the simulated backend "sent" (``--backend simulated`` only).

``run`` starts the backend, connects with ``PhoneClient`` and stays until SIGTERM/SIGINT or
until the hub tells it to stop (token refused, replaced by another agent, ...). Each way it
can end has its own exit code (``EXIT_*``) and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import httpx

from . import __version__
from .backend import Backend, BackendError
from .client import ConnectionEvent, PhoneClient
from .enroll import EnrollmentError, enroll
from .pacing import DEFAULT_DAILY_CAP, DEFAULT_MIN_INTERVAL, Pacer
from .simulated import SimulatedBackend, SimulatedConfig
from .state import SqlitePhoneStore
from .termux import TermuxBackend, TermuxConfig

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(os.environ.get("SMSGW_AGENT_DIR") or Path.home() / ".smsgw-agent")

EXIT_OK = 0
EXIT_FAILED = 1  # enrollment refused, hub unreachable while enrolling, bad state
EXIT_USAGE = 2  # same as argparse
EXIT_NOT_ENROLLED = 3
EXIT_REFUSED = 4  # the hub refused or revoked the device token: enroll again
EXIT_BACKEND = 5  # the backend cannot start (tool missing, modem silent, no SIM)
EXIT_STOPPED_BY_HUB = 6  # replaced by another agent, protocol version or protocol error
EXIT_BUSY = 7  # another agent runs on this state directory

LAST_CONNECTION_KEY = "last_connection"
LAST_CONNECTED_KEY = "last_connected"
LAST_STOP_KEY = "last_stop"

BackendName = Literal["termux", "modem", "simulated"]


class AgentError(Exception):
    """A failure to report to the person at the terminal, with the exit code to use."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def app_version() -> str:
    try:
        return f"smsgw-agent/{metadata.version('smsgw-agent')}"
    except metadata.PackageNotFoundError:
        return f"smsgw-agent/{__version__}"


@dataclass(frozen=True)
class Credentials:
    server: str
    device_id: str
    device_token: str
    name: str
    hardware_id: str
    enrolled_at: str


class AgentDir:
    """The files of one agent (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self.hardware_id_file = self.path / "hardware_id"
        self.credentials_file = self.path / "credentials.json"
        self.store_path = self.path / "state.db"
        self.lock_file = self.path / "agent.lock"
        self.transmit_log = self.path / "transmissions.log"

    def create(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def hardware_id(self) -> str:
        """Generated once per state directory; the hub knows the phone by it."""
        if self.hardware_id_file.exists():
            value = self.hardware_id_file.read_text(encoding="utf-8").strip()
            if value:
                return value
        self.create()
        value = f"agent-{uuid.uuid4()}"
        _write_private(self.hardware_id_file, value + "\n")
        return value

    def credentials(self) -> Credentials | None:
        if not self.credentials_file.exists():
            return None
        try:
            return Credentials(**json.loads(self.credentials_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise AgentError(
                f"cannot read {self.credentials_file}: {exc}; enroll again", EXIT_NOT_ENROLLED
            ) from exc

    def save_credentials(self, creds: Credentials) -> None:
        self.create()
        _write_private(self.credentials_file, json.dumps(asdict(creds), indent=2) + "\n")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive while ``run`` runs; the kernel drops it if the process dies."""
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AgentError(
                    f"another agent is already running with {self.path}", EXIT_BUSY
                ) from None
            yield
        finally:
            os.close(fd)

    def is_running(self) -> bool:
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _write_private(file: Path, text: str) -> None:
    """Atomically write a file only the owner can read (it may hold a device token)."""
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
    os.replace(tmp, file)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- enroll ----------------------------------------------------------------------------


async def enroll_agent(
    state_dir: Path,
    server: str,
    *,
    code: str | None = None,
    api_key: str | None = None,
    name: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Credentials:
    """Register this phone with the hub and save its token in the state directory."""
    if (code is None) == (api_key is None):
        raise AgentError("give exactly one of --code and --api-key", EXIT_USAGE)
    agent_dir = AgentDir(state_dir)
    if agent_dir.is_running():
        # A new token revokes the running agent's one: it would stop with "token refused".
        raise AgentError(f"stop the agent running with {agent_dir.path} first", EXIT_BUSY)
    hardware_id = agent_dir.hardware_id()
    name = name or f"phone-{hardware_id.removeprefix('agent-')[:8]}"
    try:
        enrollment = await enroll(
            server,
            name=name,
            hardware_id=hardware_id,
            api_key=api_key,
            enrollment_code=code,
            transport=transport,
        )
    except EnrollmentError as exc:
        hint = ""
        if code is not None and exc.status in (400, 401, 403, 404, 410, 422):
            hint = " (codes are single-use and expire: ask the admin for a new one)"
        raise AgentError(f"the hub refused to enroll this phone: {exc.message}{hint}") from exc
    except httpx.HTTPError as exc:
        raise AgentError(f"cannot reach the hub at {server}: {exc}") from exc
    creds = Credentials(
        server=server,
        device_id=enrollment.device_id,
        device_token=enrollment.device_token,
        name=name,
        hardware_id=hardware_id,
        enrolled_at=_now(),
    )
    agent_dir.save_credentials(creds)
    return creds


# --- run -------------------------------------------------------------------------------


@dataclass
class RunOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    backend: BackendName = "termux"
    min_interval: float = DEFAULT_MIN_INTERVAL
    daily_cap: int | None = DEFAULT_DAILY_CAP  # None: no cap
    backoff_max: float = 30.0
    # termux
    poll_interval: float = 5.0
    tool_timeout: float = 30.0
    sim_slots: tuple[int, ...] = (0,)
    # modem
    port: str | None = None
    baudrate: int = 115200
    pin: str | None = None
    smsc: str | None = None
    retry_unconfirmed: bool = False
    # simulated
    sim_send_delay: float = 0.0
    sim_deliver: bool = True


def make_backend(opts: RunOptions, agent_dir: AgentDir, store: SqlitePhoneStore) -> Backend:
    if opts.backend == "termux":
        config = TermuxConfig(
            poll_interval=opts.poll_interval,
            tool_timeout=opts.tool_timeout,
            sim_slots=opts.sim_slots,
        )
        return TermuxBackend(config, store)
    if opts.backend == "simulated":
        return SimulatedBackend(
            SimulatedConfig(
                send_delay=opts.sim_send_delay,
                deliver=opts.sim_deliver,
                delivery_delay=1.0,
                transmit_log=agent_dir.transmit_log,
            )
        )
    if opts.backend == "modem":
        if not opts.port:
            raise AgentError("--backend modem needs --port (e.g. /dev/ttyUSB0)", EXIT_USAGE)
        try:
            # Lazy: pyserial is only needed for modems.
            from android_client.modem import ModemBackend, ModemConfig
        except ImportError as exc:
            raise AgentError(
                f"the modem backend needs pyserial ({exc}): pip install 'smsgw-agent[modem]' "
                "(smsgw-agent.pyz has it inside)",
                EXIT_BACKEND,
            ) from exc
        try:
            modem_config = ModemConfig(
                port=opts.port,
                baudrate=opts.baudrate,
                pin=opts.pin,
                smsc=opts.smsc,
                retry_unconfirmed=opts.retry_unconfirmed,
            )
        except ValueError as exc:
            raise AgentError(f"invalid modem settings: {exc}", EXIT_USAGE) from exc
        backend: Backend = ModemBackend(modem_config, state=store)
        return backend
    raise AgentError(f"unknown backend {opts.backend!r}", EXIT_USAGE)


class _ConnectionRecorder:
    """Keeps the last connection result in the store for ``status``; logs changes."""

    def __init__(self, store: SqlitePhoneStore, out: Callable[[str], None]) -> None:
        self.store = store
        self.out = out
        self._last_kind: str | None = None

    def __call__(self, event: ConnectionEvent) -> None:
        record = {**asdict(event), "at": _now()}
        self.store.set_meta(LAST_CONNECTION_KEY, json.dumps(record))
        if event.kind == "connected":
            self.store.set_meta(LAST_CONNECTED_KEY, record["at"])
            self.out(f"connected to the hub as device {event.detail}")
        elif event.kind != self._last_kind:  # say it once, not on every retry
            self.out(f"hub connection {event.kind}: {_describe(asdict(event))}")
        self._last_kind = event.kind


def _describe(event: dict[str, Any]) -> str:
    """One line for a ``ConnectionEvent`` (as stored: a dict)."""
    kind, detail = event.get("kind"), str(event.get("detail") or "")
    if kind == "closed":
        return f"close code {event.get('close_code')} {detail}".strip()
    if kind == "refused":
        return f"HTTP {event.get('http_status')}"
    return detail


async def run_agent(
    opts: RunOptions,
    *,
    stop: asyncio.Event | None = None,
    out: Callable[[str], None] | None = None,
) -> int:
    """Run until ``stop`` is set, SIGTERM/SIGINT, or the hub ends it; returns an exit code."""
    emit = out or (lambda line: print(line, flush=True))
    agent_dir = AgentDir(opts.state_dir)
    creds = agent_dir.credentials()
    if creds is None:
        raise AgentError(
            f"this phone is not enrolled (no credentials in {agent_dir.path}); run: "
            f"smsgw-agent enroll --server URL --code CODE --state-dir {agent_dir.path}",
            EXIT_NOT_ENROLLED,
        )
    with agent_dir.lock():
        try:
            store = SqlitePhoneStore(agent_dir.store_path)
        except ValueError as exc:
            raise AgentError(str(exc)) from exc
        try:
            return await _run_with_store(opts, agent_dir, creds, store, stop, emit)
        finally:
            store.close()


async def _run_with_store(
    opts: RunOptions,
    agent_dir: AgentDir,
    creds: Credentials,
    store: SqlitePhoneStore,
    stop: asyncio.Event | None,
    emit: Callable[[str], None],
) -> int:
    try:
        backend = make_backend(opts, agent_dir, store)
    except BackendError as exc:
        raise AgentError(f"the {opts.backend} backend cannot start: {exc}", EXIT_BACKEND) from exc
    pacer = Pacer(store, min_interval=opts.min_interval, daily_cap=opts.daily_cap)
    # Built before start(): it registers the inbound callback a backend may need at once.
    client = PhoneClient(
        creds.server,
        creds.device_token,
        backend,
        store,
        app_version=app_version(),
        backoff_base=min(0.5, opts.backoff_max),
        backoff_max=opts.backoff_max,
        pacer=pacer,
        on_connection=_ConnectionRecorder(store, emit),
    )
    stop = stop or asyncio.Event()
    with _stop_on_signals(stop):
        try:
            try:
                started = await _unless_stopped(backend.start(), stop)
            except BackendError as exc:
                store.set_meta(LAST_STOP_KEY, json.dumps({"reason": "backend", "at": _now()}))
                raise AgentError(
                    f"the {opts.backend} backend cannot start: {exc}", EXIT_BACKEND
                ) from exc
            if started:
                emit(
                    f"agent running: device {creds.device_id} ({creds.name}) via "
                    f"{opts.backend}, hub {creds.server}"
                )
                await _run_until_stopped(client, stop)
        finally:
            await backend.aclose()
    reason = client.stopped_reason or "stopped"
    store.set_meta(LAST_STOP_KEY, json.dumps({"reason": reason, "at": _now()}))
    return _outcome(reason, client, agent_dir)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (from backend start to the end), so cleanup always runs."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _unless_stopped(start: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``start`` unless ``stop`` is set first (then cancel it); True if it finished."""
    starter = asyncio.create_task(start)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([starter, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not starter.done():
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
        return False
    starter.result()  # re-raises BackendError
    return True


async def _run_until_stopped(client: PhoneClient, stop: asyncio.Event) -> None:
    runner = asyncio.create_task(client.run())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not runner.done():
            await client.stop()
        await asyncio.gather(runner, stopper, return_exceptions=True)


def _outcome(reason: str, client: PhoneClient, agent_dir: AgentDir) -> int:
    if reason == "stopped":
        return EXIT_OK
    reenroll = (
        f"enroll again: smsgw-agent enroll --server URL --code CODE --state-dir {agent_dir.path}"
    )
    if reason == "revoked":
        how = "refused" if client.http_status == 401 else "revoked (close code 4001)"
        raise AgentError(
            f"the hub {how} this device's token: the device was removed or enrolled again "
            f"elsewhere; {reenroll}",
            EXIT_REFUSED,
        )
    messages = {
        "replaced": "another agent connected with this device's token; this one stops",
        "protocol_version": "the hub speaks a newer protocol: upgrade the agent",
        "protocol_error": "the hub closed the session for a protocol error (see the logs)",
    }
    raise AgentError(messages.get(reason, f"stopped: {reason}"), EXIT_STOPPED_BY_HUB)


# --- status ----------------------------------------------------------------------------


def agent_status(state_dir: Path) -> dict[str, Any]:
    """What the state directory says about this agent (read-only)."""
    agent_dir = AgentDir(state_dir)
    creds = agent_dir.credentials()
    info: dict[str, Any] = {
        "state_dir": str(agent_dir.path),
        "enrolled": creds is not None,
        "running": agent_dir.is_running(),
        "hardware_id": (
            agent_dir.hardware_id_file.read_text(encoding="utf-8").strip()
            if agent_dir.hardware_id_file.exists()
            else None
        ),
    }
    if creds is not None:
        info.update(
            device_id=creds.device_id,
            name=creds.name,
            server=creds.server,
            enrolled_at=creds.enrolled_at,
        )
    held = {"accepted": 0, "owned": 0, "transmitted": 0}
    info.update(held=held, unacked_reports=0, unacked_inbound=0, sent_today=0)
    info.update(last_connection=None, last_connected=None, last_stop=None)
    if agent_dir.store_path.exists():
        with SqlitePhoneStore(agent_dir.store_path) as store:
            for cmd in store.held():
                held[cmd.state] += 1
            info["unacked_reports"] = len(store.reports())
            info["unacked_inbound"] = len(store.inbound())
            info["sent_today"] = Pacer(store, daily_cap=None).sent_today()
            info["last_connection"] = _json_meta(store, LAST_CONNECTION_KEY)
            info["last_connected"] = store.get_meta(LAST_CONNECTED_KEY)
            info["last_stop"] = _json_meta(store, LAST_STOP_KEY)
    return info


def _json_meta(store: SqlitePhoneStore, key: str) -> Any:
    raw = store.get_meta(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def format_status(info: dict[str, Any]) -> str:
    lines = [f"state dir:        {info['state_dir']}"]
    if info["enrolled"]:
        lines.append(
            f"enrolled:         yes, device {info['device_id']} ({info['name']}) "
            f"on {info['server']} since {info['enrolled_at']}"
        )
    else:
        lines.append("enrolled:         no (run smsgw-agent enroll)")
    lines.append(f"agent running:    {'yes' if info['running'] else 'no'}")
    held = info["held"]
    lines.append(
        f"held messages:    {sum(held.values())} (waiting for ownership {held['accepted']}, "
        f"queued for the radio {held['owned']}, sent awaiting ack {held['transmitted']})"
    )
    lines.append(
        f"unacked:          {info['unacked_reports']} reports, "
        f"{info['unacked_inbound']} inbound SMS"
    )
    lines.append(f"sent today:       {info['sent_today']}")
    last = info["last_connection"]
    if isinstance(last, dict):
        detail = _describe(last)
        line = f"last connection:  {last.get('kind')} at {last.get('at')}"
        lines.append(f"{line}: {detail}" if detail else line)
    else:
        lines.append("last connection:  never")
    lines.append(f"last connected:   {info['last_connected'] or 'never'}")
    stop = info["last_stop"]
    if isinstance(stop, dict):
        lines.append(f"last stop:        {stop.get('reason')} at {stop.get('at')}")
    return "\n".join(lines)
