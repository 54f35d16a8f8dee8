"""An asyncio AT command channel to a GSM modem on a serial port.

``AtChannel`` runs one command at a time: it writes ``AT…\\r``, collects the response lines
until a final result code (``OK``, ``ERROR``, ``+CME ERROR: n``, ``+CMS ERROR: n``) and
raises ``AtError`` for the errors, ``AtTimeout`` when the modem stays silent. ``send_pdu``
handles the ``> `` prompt of ``AT+CMGS`` (write the PDU, then Ctrl-Z).

Unsolicited result codes (``+CMTI``, ``+CDS``, ``RING`` …) may arrive at any time, also in
the middle of a response; they are recognised by name and handed to ``on_urc`` instead of
being mixed into the response. A line is taken as the command's own when it carries the
command's prefix (``+CREG:`` answers ``AT+CREG?`` even though ``+CREG:`` can also be
unsolicited). Unknown lines outside a command are logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import serial_asyncio  # type: ignore[import-untyped]

from .errors import AtError, AtTimeout, ChannelClosed, error_text

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"

# Unsolicited result codes routed to ``on_urc``. Those in TWO_LINE_URCS carry a PDU line.
URC_NAMES = frozenset(
    {
        "+CMTI",
        "+CMT",
        "+CDSI",
        "+CDS",
        "+CBM",
        "+CBMI",
        "RING",
        "+CRING",
        "+CLIP",
        "NO CARRIER",
        "+CUSD",
        "+CREG",
        "+CGREG",
        "+CEREG",
        "+CPIN",
        "+CIEV",
        "+CGEV",
        "+PACSP",
        "+QIND",
        "^RSSI",
        "^BOOT",
        "^MODE",
        "^SRVST",
        "^SIMST",
        "^HCSQ",
        "RDY",
        "+CFUN",
        "SMS DONE",
        "PB DONE",
        "Call Ready",
    }
)
TWO_LINE_URCS = frozenset({"+CMT", "+CDS", "+CBM"})
ERROR_RESULTS = frozenset({"ERROR", "COMMAND NOT SUPPORT", "TOO MANY PARAMETERS"})
_FINAL_ERROR_RE = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_PREFIX_RE = re.compile(r"^AT([+^$%*#][A-Z0-9]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Urc:
    """One unsolicited result code: ``+CMTI: "SM",3`` → name ``+CMTI``, value ``"SM",3``."""

    name: str
    value: str
    pdu: str | None = None  # the second line of +CMT / +CDS / +CBM


UrcCallback = Callable[[Urc], None]


@dataclass(frozen=True, slots=True)
class AtResponse:
    """The information lines of a successful command (final ``OK`` not included)."""

    command: str
    lines: tuple[str, ...]

    def values(self, prefix: str) -> list[str]:
        """Values of the lines ``<prefix>: value`` (prefix such as ``+CSQ``)."""
        head = prefix + ":"
        return [line[len(head) :].strip() for line in self.lines if line.startswith(head)]

    def value(self, prefix: str) -> str | None:
        found = self.values(prefix)
        return found[0] if found else None


def _urc_name(line: str) -> str:
    head, sep, _ = line.partition(":")
    return head.strip() if sep else line.strip()


def command_prefix(command: str) -> str | None:
    """``AT+CREG?`` → ``+CREG``: the prefix of the command's own information lines."""
    match = _PREFIX_RE.match(command)
    return match.group(1).upper() if match else None


@dataclass
class _Pending:
    command: str
    label: str
    prefix: str | None
    echo: tuple[str, ...]
    result: asyncio.Future[AtResponse]
    prompt: asyncio.Event
    wants_prompt: bool
    lines: list[str]


class AtChannel:
    """One serial connection to a modem: commands in, responses and URCs out."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_urc: UrcCallback | None = None,
        timeout: float = 10.0,
        name: str = "modem",
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.on_urc = on_urc
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._buffer = b""
        self._urc_head: Urc | None = None  # a two-line URC waiting for its PDU line
        self._activity = asyncio.Event()
        self._closed = asyncio.Event()
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"{name}-reader")

    @classmethod
    async def open(
        cls,
        port: str,
        baudrate: int = 115200,
        *,
        on_urc: UrcCallback | None = None,
        timeout: float = 10.0,
    ) -> AtChannel:
        """Open ``port`` (8N1, no flow control, exclusive lock) and start reading."""
        try:
            opened = await serial_asyncio.open_serial_connection(
                url=port, baudrate=baudrate, exclusive=True
            )
        except OSError as exc:  # serial.SerialException is an OSError
            raise ChannelClosed(f"cannot open {port}: {exc}") from exc
        reader, writer = cast(tuple[asyncio.StreamReader, asyncio.StreamWriter], opened)
        return cls(reader, writer, on_urc=on_urc, timeout=timeout, name=port)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def aclose(self) -> None:
        self._closed.set()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self._fail_pending(ChannelClosed(f"{self.name}: channel closed"))
        with contextlib.suppress(Exception):
            self._writer.close()
            # The port (and its exclusive lock) is released only in connection_lost.
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    # -- commands ---------------------------------------------------------------------

    async def command(
        self, command: str, *, timeout: float | None = None, label: str | None = None
    ) -> AtResponse:
        """Run ``command`` (without the trailing CR); return its information lines.

        ``label`` replaces the command in error messages (keeps a PIN out of logs).
        """
        async with self._lock:
            return await self._run(command, None, timeout, label)

    async def send_pdu(self, length: int, pdu: str, *, timeout: float | None = None) -> AtResponse:
        """``AT+CMGS=<length>``, wait for ``> ``, write the PDU and Ctrl-Z; ``+CMGS: <mr>``."""
        async with self._lock:
            return await self._run(f"AT+CMGS={length}", pdu, timeout)

    async def reset(self, *, timeout: float | None = None, quiet: float = 0.1) -> None:
        """Bring a confused or silent modem back to a known state.

        ESC leaves a pending ``> `` prompt and CR ends any half-written command; then wait
        until the line is quiet (late answers to a timed-out command are dropped) and
        check that ``AT`` gets ``OK``. Raises ``AtTimeout`` if the modem is still silent.
        """
        limit = self.timeout if timeout is None else timeout
        async with self._lock:
            self._check_open()
            self._write(ESC + b"\r")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while loop.time() < deadline:
                self._activity.clear()
                try:
                    await asyncio.wait_for(self._activity.wait(), quiet)
                except TimeoutError:
                    break
            self._buffer = b""
            self._urc_head = None
            await self._run("AT", None, max(quiet, deadline - loop.time()))

    async def _run(
        self, command: str, pdu: str | None, timeout: float | None, label: str | None = None
    ) -> AtResponse:
        self._check_open()
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        pending = _Pending(
            command=command,
            label=label or command,
            prefix=command_prefix(command),
            echo=(command.upper(),) + ((pdu.upper(),) if pdu else ()),
            result=loop.create_future(),
            prompt=asyncio.Event(),
            wants_prompt=pdu is not None,
            lines=[],
        )
        self._pending = pending
        prompted = False
        try:
            async with asyncio.timeout(limit):
                self._write(command.encode("ascii") + b"\r")
                if pdu is not None:
                    await pending.prompt.wait()
                    if not pending.result.done():
                        prompted = True
                        self._write(pdu.encode("ascii") + CTRL_Z)
                return await pending.result
        except TimeoutError:
            if prompted or pending.prompt.is_set():
                self._write(ESC)  # do not leave the modem waiting for a PDU
            raise AtTimeout(
                f"{self.name}: no answer to {pending.label} within {limit:g}s",
                pdu_written=prompted,
            ) from None
        finally:
            self._pending = None
            if not pending.result.done():
                pending.result.cancel()

    def _check_open(self) -> None:
        if self.closed:
            raise ChannelClosed(f"{self.name}: serial port closed")

    def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except (OSError, RuntimeError) as exc:
            self._mark_closed(exc)
            raise ChannelClosed(f"{self.name}: write failed: {exc}") from exc

    # -- reading ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1024)
                if not data:
                    self._mark_closed(None)
                    return
                self._activity.set()
                self.feed(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the port vanished (unplugged modem: EIO)
            self._mark_closed(exc)

    def _mark_closed(self, exc: BaseException | None) -> None:
        if not self.closed:
            log.warning("%s: serial port closed%s", self.name, f": {exc}" if exc else "")
        self._closed.set()
        self._fail_pending(ChannelClosed(f"{self.name}: serial port closed"))

    def _fail_pending(self, exc: Exception) -> None:
        pending = self._pending
        if pending is not None and not pending.result.done():
            pending.result.set_exception(exc)
            pending.prompt.set()

    def feed(self, data: bytes) -> None:
        """Parse bytes from the modem (public so tests can inject exact byte sequences)."""
        self._buffer += data
        while True:
            pending = self._pending
            if pending is not None and pending.wants_prompt and not pending.prompt.is_set():
                stripped = self._buffer.lstrip(b"\r\n")
                if stripped.startswith(b">"):
                    self._buffer = stripped[2:] if stripped[1:2] == b" " else stripped[1:]
                    pending.prompt.set()
                    continue
            cut = min(
                (i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0),
                default=-1,
            )
            if cut < 0:
                break
            raw, self._buffer = self._buffer[:cut], self._buffer[cut + 1 :]
            line = raw.replace(b"\x00", b"").decode("ascii", "replace").strip()
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        head = self._urc_head
        if head is not None:
            self._urc_head = None
            if _HEX_RE.match(line):
                self._emit(Urc(head.name, head.value, line))
                return
            log.warning("%s: %s without its PDU line", self.name, head.name)
            self._emit(head)
        pending = self._pending
        name = _urc_name(line)
        if name in URC_NAMES and (pending is None or name != pending.prefix):
            urc = Urc(name, line[len(name) + 1 :].strip() if ":" in line else "")
            if name in TWO_LINE_URCS:
                self._urc_head = urc
            else:
                self._emit(urc)
            return
        if pending is None or pending.result.done():
            log.debug("%s: ignoring unexpected line %r", self.name, line)
            return
        if line.upper().rstrip("\x1a") in pending.echo:
            return  # echo is on (before ATE0)
        if line == "OK":
            pending.result.set_result(AtResponse(pending.command, tuple(pending.lines)))
        elif line in ERROR_RESULTS:
            pending.result.set_exception(AtError(pending.label, None, None, ""))
        elif (match := _FINAL_ERROR_RE.match(line)) is not None:
            kind, detail = match.group(1), match.group(2).strip()
            code = int(detail) if detail.isdigit() else None
            text = error_text(kind, code) if code is not None else detail
            pending.result.set_exception(AtError(pending.label, kind, code, text))
        else:
            pending.lines.append(line)
            return
        pending.prompt.set()  # a final result ends any wait for the prompt

    def _emit(self, urc: Urc) -> None:
        if self.on_urc is None:
            log.debug("%s: unsolicited %s %s (no listener)", self.name, urc.name, urc.value)
            return
        try:
            self.on_urc(urc)
        except Exception:
            log.exception("%s: URC handler failed for %s", self.name, urc.name)
