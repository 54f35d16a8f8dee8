"""``ModemBackend``: send and receive SMS through a GSM modem with AT commands in PDU mode.

One backend drives one modem on one serial port (one agent process per modem, see
docs/modems.md). ``start()`` checks the modem step by step (answers AT, SIM unlocked,
PDU mode, registered on a network, notifications on) and raises ``ModemError`` with a
message that says what to fix.

- Sending: each part goes out with ``AT+CMGS``; the message references (``+CMGS: <mr>``)
  are kept per message so status reports (``+CDS``) can be matched: when every part is
  delivered the delivery callback fires. References live in memory only, so reports that
  arrive after a restart of the agent are ignored.
- Receiving: ``+CMTI`` (stored SMS) → ``AT+CMGR``, decode, reassemble concatenated parts
  (any order; an incomplete set is forwarded after ``reassembly_timeout`` with the missing
  parts marked), hand to the inbound callback, then ``AT+CMGD``. An SMS is deleted from
  the modem only after the callback returned (the client stores it durably first), and
  nothing is read before an inbound callback is set, so the SIM is the buffer while nobody
  listens. SMS stored while the agent was down are read at start.
- Status: signal from ``AT+CSQ``, network from ``AT+COPS?``. Modems have no battery: the
  backend reports 100 % and charging, so the hub never treats it as running low.
- A modem that stops answering makes the command fail with ``AtTimeout``; the next command
  first resets the channel (or reopens a vanished port) and configures the modem again.
  A PIN the SIM rejected once is never sent again (three wrong PINs lock the SIM).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..backend import Backend, DeviceStatus, InboundCallback, InboundSms, SendResult, SimInfo
from ..outbox import SENT_KEPT_SECONDS, PhoneStore
from .at import AtChannel, AtResponse, Urc, UrcCallback
from .errors import (
    INVALID_NUMBER_CODES,
    SEND_PERMANENT,
    AtError,
    AtTimeout,
    ChannelClosed,
    ModemError,
)
from .pdu import (
    DeliveryState,
    InvalidAddress,
    PduError,
    SmsDeliver,
    SmsStatusReport,
    SubmitPart,
    decode_pdu,
    encode_submit,
    join_parts,
    status_text,
    utc,
)

log = logging.getLogger(__name__)

# AT+CNMI settings tried in order: +CMTI for stored SMS, status reports as +CDS (ds=1) or,
# where a modem refuses that, stored with +CDSI (ds=2). mode 1 works on modems without 2.
CNMI_SETTINGS = ("2,1,0,1,0", "2,1,0,2,0", "1,1,0,1,0", "1,1,0,2,0")
RESCAN_DELAY = 60.0  # seconds before stored SMS are read again after a failure
REGISTERED = frozenset({1, 5, 6, 7})  # home, roaming, and the "SMS only" variants
REGISTRATION_TEXT = {
    0: "not registered, not searching",
    2: "not registered, searching",
    3: "registration denied",
    4: "unknown",
}
ACCESS_TECHNOLOGY = {
    0: "GSM",
    1: "GSM",
    2: "3G",
    3: "EDGE",
    4: "HSDPA",
    5: "HSUPA",
    6: "HSPA",
    7: "LTE",
    8: "EC-GSM",
    9: "NB-IoT",
    10: "LTE",
    11: "5G",
    12: "5G",
    13: "5G",
}
# Unsolicited codes after which the modem has (probably) restarted and lost its settings.
RESTART_URCS = frozenset({"RDY", "+CFUN"})
_LOCATION_RE = re.compile(r'^\s*"?([^",]*)"?\s*,\s*(\d+)')
_COPS_RE = re.compile(r'^\s*\d+\s*,\s*\d+\s*,\s*"([^"]*)"\s*(?:,\s*(\d+))?')
_QUOTED_RE = re.compile(r'"([^"]*)"')


@dataclass(frozen=True, slots=True)
class ModemConfig:
    """How to reach and drive one modem. Times are in seconds."""

    port: str
    baudrate: int = 115200
    pin: str | None = None
    smsc: str | None = None  # service centre number; None = the one stored on the SIM
    command_timeout: float = 10.0
    send_timeout: float = 60.0  # AT+CMGS waits for the network
    registration_timeout: float = 60.0  # how long start() waits for network registration
    reassembly_timeout: float = 600.0  # then an incomplete long SMS is forwarded as is
    delivery_reports: bool = True  # request status reports (TP-SRR)
    # A modem that went silent after it took an SMS may have sent it. By default that
    # send is final ("send_unconfirmed": the recipient never gets it twice, an operator
    # sees it); True hands it back to the hub for another phone (at-least-once).
    retry_unconfirmed: bool = False
    heal_interval: float = 5.0  # between resets of a modem that stopped answering

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("port is required, e.g. /dev/ttyUSB2")
        if self.baudrate <= 0:
            raise ValueError("baudrate must be positive")
        if self.command_timeout <= 0 or self.send_timeout <= 0 or self.heal_interval <= 0:
            raise ValueError("timeouts must be positive")
        if self.registration_timeout < 0 or self.reassembly_timeout < 0:
            raise ValueError("registration and reassembly timeouts must be >= 0")
        if self.pin is not None and not re.fullmatch(r"\d{4,8}", self.pin):
            raise ValueError("a SIM PIN is 4 to 8 digits")


@dataclass(slots=True)
class ModemInfo:
    """What the modem told about itself during ``start()`` (for logs and enrollment)."""

    manufacturer: str | None = None
    model: str | None = None
    imei: str | None = None
    imsi: str | None = None
    operator: str | None = None
    own_number: str | None = None

    @property
    def hardware_id(self) -> str | None:
        """Stable id for enrollment: the modem's IMEI survives SIM swaps and reboots."""
        return f"modem-{self.imei}" if self.imei else None


ChannelFactory = Callable[[ModemConfig, UrcCallback], Awaitable[AtChannel]]


async def open_serial_channel(config: ModemConfig, on_urc: UrcCallback) -> AtChannel:
    return await AtChannel.open(
        config.port, config.baudrate, on_urc=on_urc, timeout=config.command_timeout
    )


def signal_bars(rssi: int) -> int:
    """``+CSQ`` rssi (0-31, 99 unknown) → 0-4 bars, with Android's GSM thresholds."""
    if rssi <= 2 or rssi > 31:
        return 0
    if rssi >= 12:
        return 4
    if rssi >= 8:
        return 3
    if rssi >= 5:
        return 2
    return 1


def _same_number(a: str, b: str) -> bool:
    """Loose match of a recipient against a status report (formats may differ: +49… / 0…)."""
    da = "".join(c for c in a if c.isdigit())
    db = "".join(c for c in b if c.isdigit())
    n = min(len(da), len(db), 9)
    return n == 0 or da[-n:] == db[-n:]


def inbound_local_id(sender: str, timestamp: datetime | None, ref: str, body: str) -> str:
    """Same SMS read again (after a crash before deleting it) → same id → hub stores it once."""
    stamp = timestamp.isoformat() if timestamp is not None else ""
    key = "\x00".join((sender, stamp, ref, body)).encode("utf-8", "surrogatepass")
    return "modem-" + hashlib.sha256(key).hexdigest()[:32]


@dataclass(eq=False)
class _Outgoing:
    """A sent message waiting for the status reports of its parts."""

    message_id: str
    recipient: str
    total: int
    pending: set[int] = field(default_factory=set)  # message references not yet delivered
    delivered: int = 0
    untracked: bool = False  # a part got no reference: delivery can never be confirmed
    sent_at: float = field(default_factory=time.time)


@dataclass(eq=False)
class _Partial:
    """Parts of a concatenated SMS received so far."""

    deadline: float
    parts: dict[int, SmsDeliver] = field(default_factory=dict)
    locations: set[tuple[str | None, int]] = field(default_factory=set)


Location = tuple[str | None, int]  # (storage, index) of an SMS kept by the modem


@dataclass(frozen=True, slots=True)
class _Scan:
    """Read every SMS stored on the modem."""


@dataclass(frozen=True, slots=True)
class _Read:
    location: Location


@dataclass(frozen=True, slots=True)
class _Direct:
    sms: SmsDeliver


_InboundWork = _Scan | _Read | _Direct


class ModemBackend(Backend):
    """A ``Backend`` on a GSM modem (one SIM, slot 0)."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        channel_factory: ChannelFactory | None = None,
        state: PhoneStore | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # Where the message references waiting for status reports are kept, so a report
        # that arrives after the agent restarted still finds its message.
        self._state = state
        self.info = ModemInfo()
        self._factory = channel_factory or open_serial_channel
        self._channel: AtChannel | None = None
        self._started = False
        self._needs_recovery = False
        self._pin_rejected = False
        self._recover_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._storage_lock = asyncio.Lock()  # CPMS switch + command must not interleave
        self._inbound_lock = asyncio.Lock()
        self._read_mem: str | None = None
        self._receive_mem: str | None = None
        self._ack_needed = False
        self._network: str | None = None
        self._urcs: asyncio.Queue[Urc] = asyncio.Queue()
        self._inbound: asyncio.Queue[_InboundWork] = asyncio.Queue()
        self._listening = asyncio.Event()
        self._partials: dict[tuple[str, int, int], _Partial] = {}
        self._partials_changed = asyncio.Event()
        self._by_reference: dict[int, _Outgoing] = {}
        self._undeleted: set[Location] = set()  # forwarded, but AT+CMGD failed
        self._rescan: asyncio.Task[None] | None = None
        self._sending: set[str] = set()
        self._early_deliveries: set[str] = set()
        self._concat_ref = random.randrange(256)
        self._tasks: set[asyncio.Task[None]] = set()
        # Set while a modem that stopped answering is being reset in the background: it
        # takes no offers and sends nothing meanwhile (unavailable()).
        self._healing: asyncio.Task[None] | None = None
        self._unhealthy_reason = ""

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port and check the modem; raises ``ModemError`` saying what to fix."""
        if self._started:
            return
        try:
            await self._open()
            await self._initialise(first=True)
        except BaseException:
            await self._close_channel()
            raise
        self._started = True
        self._load_outgoing()
        self._inbound.put_nowait(_Scan())  # SMS that arrived while the agent was down
        self._spawn(self._urc_worker())
        self._spawn(self._inbound_worker())
        self._spawn(self._reassembly_timer())
        log.info(
            "%s: ready (%s %s, IMEI %s, network %s)",
            self.config.port,
            self.info.manufacturer or "?",
            self.info.model or "?",
            self.info.imei or "?",
            self._network or "?",
        )

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_channel()
        self._started = False
        await super().aclose()

    def set_inbound_callback(self, cb: InboundCallback | None) -> None:
        super().set_inbound_callback(cb)
        if cb is None:
            self._listening.clear()
        else:
            self._listening.set()

    # -- Backend interface ------------------------------------------------------------

    def sims(self) -> list[SimInfo]:
        carrier = self.info.operator[:64] if self.info.operator else None
        number = self.info.own_number[:32] if self.info.own_number else None
        return [SimInfo(slot=0, carrier=carrier, number=number)]

    def unavailable(self) -> str | None:
        if self._healing is not None and not self._healing.done():
            return self._unhealthy_reason
        return None

    async def status(self) -> DeviceStatus:
        """Never raises: a modem that does not answer shows no signal."""
        if self.unavailable() is not None:
            return DeviceStatus(battery=100, charging=True, signal=0, network=None)
        try:
            csq = await self._at("AT+CSQ")
            signal = signal_bars(int((csq.value("+CSQ") or "99").split(",")[0]))
        except (ModemError, ValueError) as exc:
            log.warning("%s: cannot read signal: %s", self.config.port, exc)
            return DeviceStatus(battery=100, charging=True, signal=0, network=None)
        try:
            await self._refresh_operator()
        except ModemError as exc:
            log.info("%s: cannot read the operator: %s", self.config.port, exc)
        return DeviceStatus(battery=100, charging=True, signal=signal, network=self._network)

    async def send_sms(
        self, message_id: str, to: str, body: str, sim_slot: int | None
    ) -> SendResult:
        if sim_slot not in (None, 0):
            return SendResult(
                ok=False,
                error_code="no_such_sim",
                error=f"a modem has one SIM (slot 0), not slot {sim_slot}",
                retryable=True,
                parts=0,
            )
        try:
            parts = encode_submit(
                to,
                body,
                smsc=self.config.smsc,
                status_report=self.config.delivery_reports,
                concat_reference=self._next_concat_reference(),
            )
        except InvalidAddress as exc:
            return SendResult(ok=False, error_code="invalid_number", error=str(exc), parts=0)
        except PduError as exc:
            return SendResult(ok=False, error_code="cannot_encode", error=str(exc), parts=0)

        out = _Outgoing(message_id=message_id, recipient=to, total=len(parts))
        sent = 0
        self._sending.add(message_id)
        try:
            async with self._send_lock:
                reason = self.unavailable()
                if reason is not None:
                    # Queued behind a send that hung: handed back at once, untouched,
                    # rather than each waiting through a reset of its own.
                    return SendResult(
                        ok=False, error_code="modem_unavailable", error=reason,
                        retryable=True, parts=0,
                    )  # fmt: skip
                for part in parts:
                    try:
                        response = await self._send_part(part)
                    except ModemError as exc:
                        self._forget(out)
                        return self._send_failure(exc, sent)
                    sent += 1
                    mr = _message_reference(response)
                    if mr is None:
                        out.untracked = True
                    elif self.config.delivery_reports:
                        self._track(mr, out)
                if out.pending:
                    self._save_outgoing()
        finally:
            self._sending.discard(message_id)
            if message_id in self._early_deliveries:
                self._early_deliveries.discard(message_id)
                self._spawn(self._deliver_soon(message_id))
        log.info("%s: sent %s in %d part(s)", self.config.port, message_id, len(parts))
        return SendResult(ok=True, parts=len(parts))

    # -- sending helpers --------------------------------------------------------------

    def _next_concat_reference(self) -> int:
        self._concat_ref = (self._concat_ref + 1) % 256
        return self._concat_ref

    async def _send_part(self, part: SubmitPart) -> AtResponse:
        await self._ensure_ready()
        channel = self._require_channel()
        try:
            return await channel.send_pdu(
                part.tpdu_length, part.pdu, timeout=self.config.send_timeout
            )
        except (AtTimeout, ChannelClosed):
            self._needs_recovery = True
            raise

    def _send_failure(self, exc: ModemError, sent: int) -> SendResult:
        if isinstance(exc, AtError):
            code = exc.code
            permanent = exc.kind == "CMS" and code in SEND_PERMANENT
            if exc.kind == "CMS" and code in INVALID_NUMBER_CODES:
                error_code = "invalid_number"
            elif exc.kind and code is not None:
                error_code = f"{exc.kind.lower()}_{code}"
            else:
                error_code = "modem_error"
            result = SendResult(
                ok=False,
                error_code=error_code,
                error=str(exc)[:500],
                retryable=not permanent,
                parts=sent,
            )
        elif isinstance(exc, AtTimeout) and exc.pdu_written:
            # The modem took the SMS and went silent: the network may have it. Final by
            # default, so the recipient never gets it twice (docs/modems.md).
            self._heal(f"the modem stopped answering: {exc}")
            result = SendResult(
                ok=False,
                error_code="send_unconfirmed",
                error=f"the modem took the SMS and stopped answering; it may have been sent: {exc}"[
                    :500
                ],
                retryable=self.config.retry_unconfirmed,
                parts=sent,
            )
        elif isinstance(exc, AtTimeout):
            self._heal(f"the modem stopped answering: {exc}")
            result = SendResult(
                ok=False,
                error_code="modem_timeout",
                error=str(exc)[:500],
                retryable=True,  # it never prompted for the SMS: nothing of it left
                parts=sent,
            )
        else:
            self._heal(f"the modem is unavailable: {exc}")
            result = SendResult(
                ok=False,
                error_code="modem_unavailable",
                error=str(exc)[:500],
                retryable=True,
                parts=sent,
            )
        log.warning("%s: send failed: %s", self.config.port, exc)
        if sent:
            log.warning("%s: %d part(s) had already gone out", self.config.port, sent)
        return result

    def _heal(self, reason: str) -> None:
        """Reset the modem in the background until it answers; unavailable() meanwhile."""
        self._unhealthy_reason = reason[:300]
        if self._healing is None or self._healing.done():
            self._healing = self._spawn(self._heal_loop())

    async def _heal_loop(self) -> None:
        while True:
            try:
                await self._ensure_ready()
                return
            except ModemError as exc:
                self._unhealthy_reason = f"{self.config.port}: {exc}"[:300]
                log.warning("%s: still not answering: %s", self.config.port, exc)
            await asyncio.sleep(self.config.heal_interval)

    def _track(self, mr: int, out: _Outgoing) -> None:
        # References are 8 bits and wrap: a reused one now belongs to the newer message.
        previous = self._by_reference.get(mr)
        if previous is not None:
            previous.pending.discard(mr)
            previous.untracked = True
        self._by_reference[mr] = out
        out.pending.add(mr)

    def _forget(self, out: _Outgoing) -> None:
        for mr in out.pending:
            if self._by_reference.get(mr) is out:
                del self._by_reference[mr]
        out.pending.clear()
        self._save_outgoing()

    # Key of the agent's state under which the references are kept (at most 256 of them:
    # references are 8 bits, so a few KiB of JSON, written after each change).
    OUTGOING_KEY = "modem.outgoing"

    def _save_outgoing(self) -> None:
        if self._state is None:
            return
        messages = {id(o): o for o in self._by_reference.values()}.values()
        doc = [
            {
                "id": o.message_id,
                "to": o.recipient,
                "total": o.total,
                "delivered": o.delivered,
                "untracked": o.untracked,
                "pending": sorted(o.pending),
                "at": o.sent_at,
            }
            for o in messages
        ]
        self._state.set_meta(self.OUTGOING_KEY, json.dumps(doc) if doc else None)

    def _load_outgoing(self) -> None:
        """The references of messages sent before a restart, younger than the network
        keeps an SMS (then its report says expired, or never comes)."""
        raw = self._state.get_meta(self.OUTGOING_KEY) if self._state is not None else None
        if not raw:
            return
        oldest = time.time() - SENT_KEPT_SECONDS
        try:
            for item in json.loads(raw):
                if float(item["at"]) < oldest:
                    continue
                out = _Outgoing(
                    message_id=str(item["id"]),
                    recipient=str(item["to"]),
                    total=int(item["total"]),
                    delivered=int(item["delivered"]),
                    untracked=bool(item["untracked"]),
                    sent_at=float(item["at"]),
                )
                for mr in item["pending"]:
                    self._track(int(mr), out)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring unreadable stored references: %s", self.config.port, exc)
        log.info(
            "%s: waiting for %d status report(s) from before the restart",
            self.config.port,
            len(self._by_reference),
        )

    async def _deliver_soon(self, message_id: str) -> None:
        await asyncio.sleep(0)  # let the client record "sent" first
        await self._report_delivery(message_id)

    # -- status reports ---------------------------------------------------------------

    async def _on_status_report(self, report: SmsStatusReport) -> None:
        mr = report.message_reference
        out = self._by_reference.get(mr)
        if out is None or not _same_number(out.recipient, report.recipient):
            log.info(
                "%s: status report for unknown reference %d (sent before a restart?)",
                self.config.port,
                mr,
            )
            return
        state = report.state
        if state is DeliveryState.PENDING:
            log.info(
                "%s: %s not delivered yet: %s",
                self.config.port,
                out.message_id,
                status_text(report.status),
            )
            return
        del self._by_reference[mr]
        out.pending.discard(mr)
        if state is DeliveryState.DELIVERED:
            out.delivered += 1
            self._save_outgoing()
            if out.delivered == out.total and not out.untracked:
                await self._delivered(out.message_id)
            return
        self._forget(out)
        log.warning(
            "%s: network reports %s as NOT delivered to %s: %s (0x%02X)",
            self.config.port,
            out.message_id,
            report.recipient,
            status_text(report.status),
            report.status,
        )
        # A final ``failed`` after ``sent``: the hub marks the message FAILED.
        await self._report_delivery_failure(
            out.message_id,
            f"delivery_failed_0x{report.status:02x}",
            f"network status report: {status_text(report.status)}",
        )

    async def _delivered(self, message_id: str) -> None:
        if message_id in self._sending:
            self._early_deliveries.add(message_id)  # reported when send_sms returns
            return
        await self._report_delivery(message_id)

    # -- inbound ----------------------------------------------------------------------

    async def _inbound_worker(self) -> None:
        while True:
            work = await self._inbound.get()
            await self._listening.wait()
            try:
                async with self._inbound_lock:
                    await self._do_inbound(work)
            except ModemError as exc:
                log.warning("%s: reading an SMS failed: %s", self.config.port, exc)
                self._rescan_later()
            except Exception:
                log.exception("%s: inbound SMS handling failed", self.config.port)
                self._rescan_later()

    def _rescan_later(self) -> None:
        """The SMS stayed on the modem: look at the storage again in a while."""
        if self._rescan is None or self._rescan.done():
            self._rescan = self._spawn(self._rescan_after(RESCAN_DELAY))

    async def _rescan_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._inbound.put_nowait(_Scan())

    async def _do_inbound(self, work: _InboundWork) -> None:
        if isinstance(work, _Direct):
            await self._on_deliver(work.sms, None)
        elif isinstance(work, _Read):
            stored = await self._read_stored(work.location)
            if stored is not None:
                await self._on_stored(work.location, *stored)
        else:
            for location, pdu, length in await self._list_stored():
                await self._on_stored(location, pdu, length)

    async def _on_stored(self, location: Location, pdu: str, length: int | None) -> None:
        if location in self._undeleted:
            await self._delete(location)
            return
        if any(location in p.locations for p in self._partials.values()):
            return  # a part already held for reassembly (seen again by a scan)
        try:
            sms = decode_pdu(pdu, length)
        except PduError as exc:
            log.warning(
                "%s: deleting undecodable SMS %s: %s (PDU %s)", self.config.port, location, exc, pdu
            )
            await self._delete(location)
            return
        if isinstance(sms, SmsDeliver):
            await self._on_deliver(sms, location)
        elif isinstance(sms, SmsStatusReport):
            await self._on_status_report(sms)
            await self._delete(location)
        # An SMS-SUBMIT is an outgoing draft someone stored on the SIM: not ours to touch.

    async def _on_deliver(self, sms: SmsDeliver, location: Location | None) -> None:
        concat = sms.concat
        if concat is None or concat.total == 1:
            await self._forward(sms.sender, sms.timestamp, "", join_parts([sms.text]), [location])
            return
        key = (sms.sender, concat.reference, concat.total)
        partial = self._partials.get(key)
        if partial is None:
            loop = asyncio.get_running_loop()
            partial = _Partial(deadline=loop.time() + self.config.reassembly_timeout)
            self._partials[key] = partial
            self._partials_changed.set()
        if location is not None:
            partial.locations.add(location)
        partial.parts.setdefault(concat.seq, sms)
        if len(partial.parts) == concat.total:
            del self._partials[key]
            await self._forward_partial(key, partial)

    async def _forward_partial(self, key: tuple[str, int, int], partial: _Partial) -> None:
        sender, reference, total = key
        texts = [
            partial.parts[i].text if i in partial.parts else f"[part {i}/{total} missing]"
            for i in range(1, total + 1)
        ]
        if len(partial.parts) < total:
            log.warning(
                "%s: forwarding a long SMS from %s with %d of %d parts",
                self.config.port,
                sender,
                len(partial.parts),
                total,
            )
        first = partial.parts[min(partial.parts)]
        await self._forward(
            sender,
            first.timestamp,
            f"{reference}/{total}",
            join_parts(texts),
            list(partial.locations),
        )

    async def _forward(
        self,
        sender: str,
        timestamp: datetime | None,
        ref: str,
        body: str,
        locations: list[Location | None],
    ) -> None:
        sender = sender or "unknown"
        sms = InboundSms(
            local_id=inbound_local_id(sender, timestamp, ref, body),
            sender=sender[:32],
            body=body,
            received_at=utc(timestamp),
            sim_slot=0,
        )
        await self._report_inbound(sms)
        for location in locations:
            if location is not None:
                await self._delete(location)

    async def _reassembly_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._partials_changed.clear()
            if not self._partials:
                await self._partials_changed.wait()
                continue
            delay = min(p.deadline for p in self._partials.values()) - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._partials_changed.wait(), delay)
                continue
            await self._listening.wait()
            async with self._inbound_lock:
                now = loop.time()
                for key in [k for k, p in self._partials.items() if p.deadline <= now]:
                    partial = self._partials.pop(key)
                    try:
                        await self._forward_partial(key, partial)
                    except ModemError as exc:
                        log.warning("%s: forwarding parts failed: %s", self.config.port, exc)

    # -- modem storage ----------------------------------------------------------------

    async def _stored(self, mem: str | None, command: str) -> AtResponse:
        async with self._storage_lock:
            if mem and mem != self._read_mem:
                await self._at(f'AT+CPMS="{mem}"')
                self._read_mem = mem
            return await self._at(command)

    async def _read_stored(self, location: Location) -> tuple[str, int | None] | None:
        mem, index = location
        try:
            response = await self._stored(mem, f"AT+CMGR={index}")
        except AtError as exc:
            if exc.code == 321:  # invalid index: already read and deleted
                return None
            raise
        for i, line in enumerate(response.lines):
            if line.startswith("+CMGR:") and i + 1 < len(response.lines):
                return response.lines[i + 1], _last_int(line)
        return None

    async def _list_stored(self) -> list[tuple[Location, str, int | None]]:
        mem = self._receive_mem
        response = await self._stored(mem, "AT+CMGL=4")
        found: list[tuple[Location, str, int | None]] = []
        lines = response.lines
        for i, line in enumerate(lines):
            if not line.startswith("+CMGL:") or i + 1 >= len(lines):
                continue
            try:
                index = int(line[6:].split(",")[0])
            except ValueError:
                continue
            found.append(((mem, index), lines[i + 1], _last_int(line)))
        return found

    async def _delete(self, location: Location) -> None:
        mem, index = location
        try:
            await self._stored(mem, f"AT+CMGD={index}")
        except ModemError as exc:
            # Already forwarded: a later scan must delete it, not forward it again.
            self._undeleted.add(location)
            log.warning("%s: cannot delete SMS %s: %s", self.config.port, location, exc)
        else:
            self._undeleted.discard(location)

    # -- unsolicited result codes -----------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        self._urcs.put_nowait(urc)  # handled by a task: the reader must never wait

    async def _urc_worker(self) -> None:
        while True:
            urc = await self._urcs.get()
            try:
                await self._handle_urc(urc)
            except ModemError as exc:
                log.warning("%s: handling %s failed: %s", self.config.port, urc.name, exc)
            except Exception:
                log.exception("%s: handling %s failed", self.config.port, urc.name)

    async def _handle_urc(self, urc: Urc) -> None:
        if urc.name == "+CMTI":
            location = _location(urc.value)
            if location is not None:
                self._inbound.put_nowait(_Read(location))
        elif urc.name in ("+CMT", "+CDS"):
            await self._direct(urc)
        elif urc.name == "+CDSI":
            location = _location(urc.value)
            if location is not None:
                async with self._inbound_lock:
                    stored = await self._read_stored(location)
                    if stored is not None:
                        await self._on_stored(location, *stored)
        elif urc.name in RESTART_URCS or (urc.name == "+CPIN" and "READY" not in urc.value):
            log.info("%s: modem restarted? (%s %s)", self.config.port, urc.name, urc.value)
            self._needs_recovery = True
            await self._ensure_ready()  # configure it now: notifications are off until then
        else:
            log.debug("%s: unsolicited %s %s", self.config.port, urc.name, urc.value)

    async def _direct(self, urc: Urc) -> None:
        """``+CMT`` / ``+CDS``: the PDU comes with the notification, nothing is stored."""
        if urc.pdu is None:
            return
        try:
            sms = decode_pdu(urc.pdu, _last_int(urc.value))
        except PduError as exc:
            log.warning("%s: undecodable %s: %s (PDU %s)", self.config.port, urc.name, exc, urc.pdu)
            sms = None
        if self._ack_needed:
            with contextlib.suppress(AtError):
                await self._at("AT+CNMA")
        if isinstance(sms, SmsStatusReport):
            await self._on_status_report(sms)
        elif isinstance(sms, SmsDeliver):
            self._inbound.put_nowait(_Direct(sms))

    # -- commands and recovery --------------------------------------------------------

    def _require_channel(self) -> AtChannel:
        if self._channel is None:
            raise ChannelClosed(f"{self.config.port}: modem not started")
        return self._channel

    async def _raw(
        self, command: str, timeout: float | None = None, label: str | None = None
    ) -> AtResponse:
        channel = self._require_channel()
        try:
            return await channel.command(
                command, timeout=timeout or self.config.command_timeout, label=label
            )
        except (AtTimeout, ChannelClosed):
            self._needs_recovery = True
            raise

    async def _at(self, command: str) -> AtResponse:
        await self._ensure_ready()
        return await self._raw(command)

    async def _ensure_ready(self) -> None:
        if not self._started:
            raise ModemError(f"{self.config.port}: modem backend not started")
        if not self._needs_recovery and self._channel is not None and not self._channel.closed:
            return
        async with self._recover_lock:
            if self._needs_recovery or self._channel is None or self._channel.closed:
                await self._recover()

    async def _recover(self) -> None:
        port = self.config.port
        log.info("%s: resetting the modem connection", port)
        try:
            if self._channel is None or self._channel.closed:
                await self._close_channel()
                await self._open()
            else:
                await self._require_channel().reset(timeout=self.config.command_timeout)
            await self._initialise(first=False)
        except ModemError as exc:
            self._needs_recovery = True
            raise ModemError(f"{port}: modem not usable: {exc}") from exc
        self._needs_recovery = False
        self._inbound.put_nowait(_Scan())  # notifications may have been lost meanwhile
        log.info("%s: modem answers again", port)

    async def _open(self) -> None:
        self._channel = await self._factory(self.config, self._on_urc)
        self._read_mem = None

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.aclose()

    # -- start-up steps ---------------------------------------------------------------

    async def _initialise(self, *, first: bool) -> None:
        await self._sync()
        await self._raw("ATE0")
        with contextlib.suppress(AtError):
            await self._raw("AT+CMEE=1")  # numeric +CME/+CMS errors
        await self._unlock_sim()
        try:
            await self._raw("AT+CMGF=0")
        except AtError as exc:
            raise ModemError(f"{self.config.port}: the modem refuses PDU mode: {exc}") from exc
        if first:
            await self._identify()
        await self._select_message_service()
        await self._select_storage()
        await self._wait_registered(self.config.registration_timeout if first else 0.0, first)
        await self._enable_notifications()
        with contextlib.suppress(AtError):
            await self._refresh_operator()

    async def _sync(self) -> None:
        """``AT`` until ``OK``: the first bytes after opening a port are often lost."""
        port = self.config.port
        timeout = min(2.0, self.config.command_timeout)
        for _ in range(3):
            try:
                await self._raw("AT", timeout)
                return
            except AtTimeout:
                continue
            except AtError:
                continue  # garbage before our command: try again
        raise ModemError(
            f"{port}: no answer to AT (wrong port? another program such as ModemManager "
            "using it? wrong baud rate?)"
        )

    async def _unlock_sim(self) -> None:
        port = self.config.port
        pin_sent = False
        for _ in range(20):
            try:
                state = ((await self._raw("AT+CPIN?")).value("+CPIN") or "").strip('" ')
            except AtError as exc:
                if exc.code == 10:
                    raise ModemError(f"{port}: no SIM card in the modem ({exc})") from exc
                if exc.code == 14:  # SIM busy: still starting up
                    await asyncio.sleep(0.5)
                    continue
                raise ModemError(f"{port}: cannot read the SIM state: {exc}") from exc
            if state in ("READY", "SIM PIN2", "SIM PUK2"):
                return
            if state == "SIM PIN":
                if pin_sent:
                    await asyncio.sleep(0.5)  # accepted, SIM still initialising
                    continue
                if not self.config.pin:
                    raise ModemError(f"{port}: the SIM needs its PIN: pass --pin")
                if self._pin_rejected:  # never again: three wrong PINs lock the SIM
                    raise ModemError(f"{port}: the SIM rejected the PIN earlier; check --pin")
                try:
                    await self._raw(f'AT+CPIN="{self.config.pin}"', label="AT+CPIN=<pin>")
                except AtError as exc:
                    self._pin_rejected = True
                    raise ModemError(
                        f"{port}: the SIM rejected the PIN ({exc}). Check --pin before "
                        "trying again: after 3 wrong PINs the SIM needs its PUK"
                    ) from exc
                pin_sent = True
                continue
            if state == "SIM PUK":
                raise ModemError(
                    f"{port}: the SIM is blocked (PUK required) after too many wrong PINs; "
                    "unlock it with its PUK in a phone, then start again"
                )
            raise ModemError(f"{port}: the SIM is not usable (+CPIN: {state or 'no answer'})")
        raise ModemError(f"{port}: the SIM did not become ready")

    async def _identify(self) -> None:
        async def ask(command: str) -> str | None:
            try:
                response = await self._raw(command)
            except AtError:
                return None
            for line in response.lines:
                value = line.split(":", 1)[1].strip() if line.startswith("+") else line
                return value.strip('"') or None
            return None

        self.info.manufacturer = await ask("AT+CGMI")
        self.info.model = await ask("AT+CGMM")
        self.info.imei = await ask("AT+CGSN")
        self.info.imsi = await ask("AT+CIMI")
        with contextlib.suppress(AtError):
            numbers = (await self._raw("AT+CNUM")).value("+CNUM") or ""
            quoted = _QUOTED_RE.findall(numbers)
            if len(quoted) >= 2 and quoted[1]:
                self.info.own_number = quoted[1]

    async def _select_message_service(self) -> None:
        # Service 0 needs no AT+CNMA acknowledgement of +CMT/+CDS; phase 2+ (1) would.
        try:
            await self._raw("AT+CSMS=0")
            self._ack_needed = False
        except AtError:
            with contextlib.suppress(AtError):
                service = (await self._raw("AT+CSMS?")).value("+CSMS") or "0"
                self._ack_needed = service.split(",")[0].strip() == "1"

    async def _select_storage(self) -> None:
        """Read from where new SMS are stored (``<mem3>``) so ``+CMGL`` sees them."""
        try:
            mems = _QUOTED_RE.findall((await self._raw("AT+CPMS?")).value("+CPMS") or "")
        except AtError as exc:
            log.info("%s: no AT+CPMS? (%s), using default storage", self.config.port, exc)
            return
        if not mems:
            return
        self._read_mem = mems[0]
        receive = mems[2] if len(mems) >= 3 else mems[0]
        if receive != self._read_mem:
            with contextlib.suppress(AtError):
                await self._raw(f'AT+CPMS="{receive}"')
                self._read_mem = receive
        self._receive_mem = receive

    async def _registration(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for name in ("CREG", "CGREG", "CEREG"):
            try:
                value = (await self._raw(f"AT+{name}?")).value(f"+{name}") or ""
                states[name] = int(value.split(",")[1])
            except (AtError, ValueError, IndexError):
                continue
            if states[name] in REGISTERED:
                break
        return states

    async def _wait_registered(self, timeout: float, strict: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            states = await self._registration()
            if any(s in REGISTERED for s in states.values()):
                return
            detail = (
                ", ".join(f"{k}: {REGISTRATION_TEXT.get(v, v)}" for k, v in states.items())
                or "no registration state"
            )
            denied = any(s == 3 for s in states.values())
            if denied or loop.time() >= deadline:
                message = (
                    f"{self.config.port}: the modem is not registered on a network ({detail}); "
                    "check the antenna, the SIM (active, not barred) and the coverage"
                )
                if strict:
                    raise ModemError(message)
                log.warning("%s", message)
                return
            await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))

    async def _enable_notifications(self) -> None:
        for setting in CNMI_SETTINGS:
            try:
                await self._raw(f"AT+CNMI={setting}")
                return
            except AtError:
                continue
        log.warning(
            "%s: the modem refuses AT+CNMI: incoming SMS are only read at start and after "
            "a reset, and delivery reports are not received",
            self.config.port,
        )

    async def _refresh_operator(self) -> None:
        response = await self._raw("AT+COPS?")
        match = _COPS_RE.match(response.value("+COPS") or "")
        if match is None:
            self._network = None
            return
        self.info.operator = match.group(1) or None
        act = match.group(2)
        name = ACCESS_TECHNOLOGY.get(int(act)) if act is not None else None
        self._network = (name or self.info.operator or "")[:32] or None

    # -- tasks ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _message_reference(response: AtResponse) -> int | None:
    value = response.value("+CMGS")
    if value is None:
        return None
    try:
        return int(value.split(",")[0]) & 0xFF
    except ValueError:
        return None


def _location(value: str) -> Location | None:
    match = _LOCATION_RE.match(value)
    if match is None:
        return None
    return (match.group(1) or None, int(match.group(2)))


def _last_int(value: str) -> int | None:
    tail = value.rsplit(",", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None
