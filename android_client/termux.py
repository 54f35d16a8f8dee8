"""A real Android phone as a backend, through the Termux:API command-line tools.

``TermuxBackend`` runs ``termux-*`` programs with ``asyncio.create_subprocess_exec`` (never
blocking the event loop), each under a timeout:

- sending: ``termux-sms-send -n <number> [-s <slot>]`` with the text on stdin. The tool
  splits long texts into a multipart SMS itself; the reported ``parts`` is our count.
  The text goes on stdin, not as an argument, because the tool's ``getopts`` would take a
  text starting with ``-`` for an option and its ``echo`` would eat a text of ``-n``.
- receiving: ``termux-sms-list -t inbox`` polled every few seconds. SMS with an ``_id``
  above a high-water mark kept in the ``PhoneStore`` are forwarded, oldest first, and the
  mark moves past each one after it is stored for the hub, so nothing is forwarded twice,
  even across restarts. On the very first start the mark is set to the newest SMS already
  in the inbox: the phone's history is not uploaded.
- status: ``termux-battery-status``, ``termux-telephony-deviceinfo`` and
  ``termux-telephony-cellinfo``, refreshed in the background (``status()`` never waits).
- ``termux-wake-lock`` at start, ``termux-wake-unlock`` at close.

What Termux cannot do: it gets no carrier delivery reports (the hub shows SENT, never
DELIVERED), and ``termux-sms-send`` returns once Android has the SMS, so a radio failure
after that point is invisible. Choosing the SIM (``-s``) needs a Termux:API version that
supports it; older ones ignore it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .backend import Backend, BackendError, DeviceStatus, InboundSms, SendResult, SimInfo
from .outbox import MemoryPhoneStore, PhoneStore
from .segments import count_parts

log = logging.getLogger(__name__)

SEND = "termux-sms-send"
LIST = "termux-sms-list"
BATTERY = "termux-battery-status"
DEVICE_INFO = "termux-telephony-deviceinfo"
CELL_INFO = "termux-telephony-cellinfo"
WAKE_LOCK = "termux-wake-lock"
WAKE_UNLOCK = "termux-wake-unlock"
REQUIRED_TOOLS = (SEND, LIST, BATTERY, DEVICE_INFO, CELL_INFO)

INSTALL_HINT = (
    "install the Termux:API app (from F-Droid, like Termux itself) and, in Termux, "
    "run: pkg install termux-api"
)
INBOX_MARK_KEY = "termux_inbox_mark"


@dataclass(frozen=True)
class TermuxConfig:
    """Timings and limits of the Termux backend (seconds unless said otherwise)."""

    poll_interval: float = 5.0
    status_interval: float = 30.0
    tool_timeout: float = 30.0  # every termux-* call; Termux:API hangs when the app is missing
    page_size: int = 50  # SMS per termux-sms-list call
    max_pages: int = 20  # per poll; more new SMS than this between two polls are skipped
    sim_slots: tuple[int, ...] = (0,)
    wake_lock: bool = True

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.status_interval <= 0 or self.tool_timeout <= 0:
            raise ValueError("intervals and timeouts must be > 0")
        if self.page_size < 1 or self.max_pages < 1:
            raise ValueError("page_size and max_pages must be >= 1")
        if not self.sim_slots:
            raise ValueError("need at least one SIM slot")


class TermuxToolError(Exception):
    """A ``termux-*`` call failed: missing, timed out, non-zero exit or unreadable output."""

    def __init__(self, message: str, *, missing: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


class TermuxBackend(Backend):
    """Sends and receives through Termux:API; ``store`` keeps the inbox high-water mark."""

    def __init__(self, config: TermuxConfig | None = None, store: PhoneStore | None = None) -> None:
        super().__init__()
        self.config = config or TermuxConfig()
        self.store = store if store is not None else MemoryPhoneStore()
        # Replaced by the first refresh in start(); only seen if start() was skipped.
        self._status = DeviceStatus(battery=50, charging=False, signal=2, network=None)
        self._carrier: str | None = None
        self._wake_locked = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._poll_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise BackendError(f"Termux:API tools not found ({', '.join(missing)}): {INSTALL_HINT}")
        if self.config.wake_lock:
            try:
                await self._checked(WAKE_LOCK)
                self._wake_locked = True
            except TermuxToolError as exc:
                # Not fatal: the agent works, Android may just suspend it sooner.
                log.warning("could not take a wake lock: %s", exc)
        try:
            await self.refresh_status(strict=True)
        except TermuxToolError as exc:
            raise BackendError(
                f"{exc}. Is the Termux:API app installed and not battery-optimised?"
            ) from exc
        if self.store.get_meta(INBOX_MARK_KEY) is None:
            try:
                newest = await self._list_inbox(limit=1, offset=0)
            except TermuxToolError as exc:
                raise BackendError(
                    f"cannot read the SMS inbox: {exc}. Grant Termux:API the SMS permission "
                    "(run termux-sms-list once and accept the prompt)"
                ) from exc
            mark = max((_id for _id, _ in newest), default=0)
            self.store.set_meta(INBOX_MARK_KEY, str(mark))
            log.info("inbox starts after SMS #%d; earlier SMS are not forwarded", mark)
        else:
            # SMS that arrived while the agent was down go out now, not a poll later.
            try:
                await self.poll_inbox()
            except TermuxToolError as exc:
                log.warning("inbox poll failed (will retry): %s", exc)
        self._spawn(self._poll_loop())
        self._spawn(self._status_loop())

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._wake_locked:
            self._wake_locked = False
            try:
                await self._checked(WAKE_UNLOCK)
            except TermuxToolError as exc:
                log.warning("could not release the wake lock: %s", exc)
        await super().aclose()

    # -- sending ------------------------------------------------------------------

    def sims(self) -> list[SimInfo]:
        first = self.config.sim_slots[0]
        return [
            SimInfo(slot=slot, carrier=self._carrier if slot == first else None)
            for slot in self.config.sim_slots
        ]

    async def send_sms(
        self, message_id: str, to: str, body: str, sim_slot: int | None
    ) -> SendResult:
        if not to or "," in to:
            # termux-sms-send takes a comma-separated list: never let one number become two.
            return SendResult(
                ok=False, error_code="invalid_number", error=f"bad number {to!r}", parts=0
            )
        args = ["-n", to]
        if sim_slot is not None:
            args += ["-s", str(sim_slot)]
        try:
            result = await self._run(SEND, *args, stdin=body.encode("utf-8"))
        except TermuxToolError as exc:
            code = (
                "termux_missing"
                if exc.missing
                else "termux_timeout"
                if exc.timed_out
                else "termux_send_failed"
            )
            return SendResult(ok=False, error_code=code, error=str(exc), retryable=True, parts=0)
        if result.returncode != 0 or result.stderr.strip():
            error = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
            log.warning("%s failed for %s: %s", SEND, message_id, error)
            return SendResult(
                ok=False,
                error_code="termux_send_failed",
                error=error[:500],
                retryable=True,
                parts=0,
            )
        return SendResult(ok=True, parts=count_parts(body))

    # -- receiving ----------------------------------------------------------------

    async def poll_inbox(self) -> int:
        """Forward SMS newer than the mark, oldest first; returns how many."""
        async with self._poll_lock:
            if self._inbound_cb is None:
                return 0  # nobody to store them yet: leave them in the inbox
            raw_mark = self.store.get_meta(INBOX_MARK_KEY)
            mark = int(raw_mark) if raw_mark is not None and raw_mark.isdigit() else 0
            fresh = await self._newer_than(mark)
            forwarded = 0
            for sms_id, entry in sorted(fresh.items()):
                sms = _inbound_of(sms_id, entry)
                if sms is None:
                    log.warning("skipping unreadable SMS #%d: %.200r", sms_id, entry)
                else:
                    # Stored for the hub first, then the mark moves: a crash in between
                    # forwards it again under the same local_id, which the hub de-duplicates.
                    await self._inbound_cb(sms)
                    forwarded += 1
                self.store.set_meta(INBOX_MARK_KEY, str(sms_id))
            return forwarded

    async def _newer_than(self, mark: int) -> dict[int, dict[str, Any]]:
        fresh: dict[int, dict[str, Any]] = {}
        size = self.config.page_size
        for page in range(self.config.max_pages):
            entries = await self._list_inbox(limit=size, offset=page * size)
            newer = {i: e for i, e in entries if i > mark}
            fresh.update(newer)
            if len(entries) < size or len(newer) < len(entries):
                return fresh  # reached the end of the inbox or SMS seen before
        log.warning("more than %d new SMS since the last poll; older ones skipped", len(fresh))
        return fresh

    async def _list_inbox(self, *, limit: int, offset: int) -> list[tuple[int, dict[str, Any]]]:
        data = await self._json(LIST, "-t", "inbox", "-l", str(limit), "-o", str(offset))
        if not isinstance(data, list):
            raise TermuxToolError(f"{LIST} did not print a JSON list: {str(data)[:200]}")
        entries: list[tuple[int, dict[str, Any]]] = []
        for entry in data:
            sms_id = entry.get("_id") if isinstance(entry, dict) else None
            if isinstance(sms_id, int) and not isinstance(sms_id, bool) and sms_id >= 0:
                entries.append((sms_id, entry))
            else:
                log.warning("ignoring an SMS entry without a usable _id: %.200r", entry)
        return entries

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.poll_inbox()
            except TermuxToolError as exc:
                log.warning("inbox poll failed (will retry): %s", exc)
            except Exception:
                # A bug or a store error must not stop reception for good.
                log.exception("inbox poll failed (will retry)")

    # -- status -------------------------------------------------------------------

    async def status(self) -> DeviceStatus:
        return self._status

    async def refresh_status(self, *, strict: bool = False) -> DeviceStatus:
        """Read battery, network and signal; the battery tool must work when ``strict``.

        Phone and cell info need extra permissions (phone, location): without them the
        previous values stay and a warning is logged.
        """
        current = self._status
        battery, charging = current.battery, current.charging
        try:
            data = await self._json(BATTERY)
            if not isinstance(data, dict):
                raise TermuxToolError(f"{BATTERY} did not print a JSON object: {str(data)[:200]}")
            battery = _clamp(data.get("percentage"), 0, 100, battery)
            plugged = str(data.get("plugged", "UNPLUGGED")).upper()
            charging = plugged not in ("UNPLUGGED", "") or data.get("status") == "CHARGING"
        except TermuxToolError:
            if strict:
                raise
            log.warning("battery status unavailable", exc_info=True)
        network = current.network
        try:
            info = await self._json(DEVICE_INFO)
            if isinstance(info, dict):
                network = _network_name(info.get("network_type"))
                carrier = info.get("sim_operator_name") or info.get("network_operator_name")
                self._carrier = str(carrier) if carrier else self._carrier
                if strict and info.get("sim_state") == "absent":
                    raise BackendError("no SIM card: termux-telephony-deviceinfo says absent")
        except TermuxToolError as exc:
            log.warning("phone info unavailable: %s", exc)
        signal_level = current.signal
        try:
            cells = await self._json(CELL_INFO)
            level = _signal_level(cells)
            if level is not None:
                signal_level = level
        except TermuxToolError as exc:
            log.warning("cell info unavailable (location permission?): %s", exc)
        self._status = DeviceStatus(
            battery=battery, charging=charging, signal=signal_level, network=network
        )
        return self._status

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            try:
                await self.refresh_status()
            except Exception:
                log.exception("status refresh failed")

    # -- running tools --------------------------------------------------------------

    async def _json(self, tool: str, *args: str) -> Any:
        result = await self._checked(tool, *args)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise TermuxToolError(
                f"{tool} printed something that is not JSON: {result.stdout.strip()[:200]!r}"
            ) from None

    async def _checked(self, tool: str, *args: str) -> ToolResult:
        result = await self._run(tool, *args)
        if result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip()
            raise TermuxToolError(f"{tool} exited with {result.returncode}: {detail[:300]}")
        return result

    async def _run(self, tool: str, *args: str, stdin: bytes | None = None) -> ToolResult:
        """Run one tool under ``tool_timeout``; its whole process group dies on timeout."""
        try:
            proc = await asyncio.create_subprocess_exec(
                tool,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # The tools are shell scripts around termux-api: kill the whole group.
                start_new_session=True,
            )
        except FileNotFoundError:
            raise TermuxToolError(f"{tool} not found: {INSTALL_HINT}", missing=True) from None
        except OSError as exc:
            raise TermuxToolError(f"cannot run {tool}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.config.tool_timeout)
        except TimeoutError:
            await _kill(proc)
            raise TermuxToolError(
                f"{tool} did not finish within {self.config.tool_timeout:g}s", timed_out=True
            ) from None
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        return ToolResult(
            returncode=proc.returncode if proc.returncode is not None else -1,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
        )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def _inbound_of(sms_id: int, entry: dict[str, Any]) -> InboundSms | None:
    if entry.get("type", "inbox") != "inbox":
        return None
    sender = entry.get("number") or entry.get("address")
    body = entry.get("body")
    if not isinstance(sender, str) or not sender or not isinstance(body, str | None):
        return None
    return InboundSms(
        local_id=f"termux-{sms_id}",
        sender=sender,
        body=body or "",
        received_at=_received_at(entry.get("received")),
    )


def _received_at(value: object) -> datetime:
    """``"2024-01-01 12:00:00"`` in the phone's local time, as an aware datetime."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").astimezone()
    return datetime.now().astimezone()


def _network_name(value: object) -> str | None:
    if not isinstance(value, str) or value.lower() in ("", "unknown"):
        return None
    return {"nr": "5G"}.get(value.lower(), value.upper())


def _signal_level(cells: object) -> int | None:
    """Bars 0-4 of the registered cell (else the best one), from ``level`` or ``dbm``."""
    if not isinstance(cells, list):
        return None
    usable = [c for c in cells if isinstance(c, dict)]
    registered = [c for c in usable if c.get("registered")]
    levels = [lvl for c in registered or usable if (lvl := _cell_level(c)) is not None]
    return max(levels) if levels else None


def _cell_level(cell: dict[str, Any]) -> int | None:
    level = cell.get("level")
    if isinstance(level, int) and not isinstance(level, bool):
        return max(0, min(4, level))
    dbm = cell.get("dbm")
    if isinstance(dbm, int | float) and not isinstance(dbm, bool):
        return sum(dbm >= edge for edge in (-115, -105, -95, -85))
    return None


def _clamp(value: object, low: int, high: int, default: int) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(low, min(high, int(value)))
    return default
