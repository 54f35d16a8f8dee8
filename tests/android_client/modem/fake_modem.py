"""A simulated GSM modem on a pseudo-terminal, for the modem backend tests.

``FakeModem`` opens a pty (``os.openpty()``); the code under test opens ``fake.port`` (the
slave path) with pyserial like a real ``/dev/ttyUSB2``, and the fake answers on the master
side from the same event loop. It behaves like a real modem in the ways that matter: echo
until ``ATE0``, ``OK``/``ERROR``/``+CME ERROR``/``+CMS ERROR`` (numeric after
``AT+CMEE=1``), a ``> `` prompt after ``AT+CMGS=<n>``, PDU + Ctrl-Z → ``+CMGS: <mr>``,
stored SMS for ``AT+CMGR``/``AT+CMGL``/``AT+CMGD`` announced with ``+CMTI``, status reports as
``+CDS``. Tests steer it through attributes (``pin``, ``registration``, ``silent`` …) and
helpers (``receive``, ``status_report``, ``fail_next_send``, ``garbage``) and wait for it
with ``wait_until`` instead of sleeping. ``Recorder`` collects what a backend reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from android_client.backend import InboundSms
from android_client.modem import ModemBackend
from android_client.modem.pdu import (
    SmsSubmit,
    decode_pdu,
    encode_address,
    encode_smsc,
    encode_timestamp,
    gsm7_septets,
    is_gsm7,
    pack_septets,
)

CME_TEXT = {3: "operation not allowed", 10: "SIM not inserted", 11: "SIM PIN required",
            12: "SIM PUK required", 16: "incorrect password", 100: "unknown"}  # fmt: skip
OWN_NUMBER = "+12025554567"
SMSC = "+12025550000"
DEFAULT_TIMESTAMP = datetime(2024, 5, 17, 16, 30, 5, tzinfo=timezone(timedelta(hours=2)))


# -- PDU builders for what the network sends (SMS-DELIVER, SMS-STATUS-REPORT) -------------


def _sender_field(sender: str) -> bytes:
    if re.fullmatch(r"\+?[0-9]+", sender):
        return encode_address(sender)
    septets = gsm7_septets(sender)
    packed = pack_septets(septets)
    semi_octets = -(-len(septets) * 7 // 4)
    return bytes([semi_octets, 0xD0]) + packed


def deliver_pdu(
    sender: str,
    text: str,
    *,
    timestamp: datetime = DEFAULT_TIMESTAMP,
    concat: tuple[int, int, int] | None = None,
    concat16: bool = False,
    ucs2: bool | None = None,
    data: bytes | None = None,
    smsc: str | None = SMSC,
) -> tuple[str, int]:
    """An SMS-DELIVER as a modem stores it: (hex with SMSC field, TPDU length).

    ``concat`` is (reference, total, seq); ``data`` sends 8-bit data instead of text.
    """
    if ucs2 is None:
        ucs2 = not is_gsm7(text)
    udh = b""
    if concat is not None:
        ref, total, seq = concat
        if concat16:
            udh = bytes([6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq])
        else:
            udh = bytes([5, 0x00, 3, ref, total, seq])
    if data is not None:
        dcs, ud = 0x04, udh + data
        udl = len(ud)
    elif ucs2:
        dcs, ud = 0x08, udh + text.encode("utf-16-be", "surrogatepass")
        udl = len(ud)
    else:
        header_septets = -(-len(udh) * 8 // 7)
        septets = gsm7_septets(text)
        dcs = 0x00
        ud = udh + pack_septets(septets, header_septets * 7 - len(udh) * 8)
        udl = header_septets + len(septets)
    first = 0x04 | (0x40 if udh else 0)  # SMS-DELIVER, no more messages waiting
    tpdu = bytes([first]) + _sender_field(sender) + bytes([0x00, dcs])
    tpdu += encode_timestamp(timestamp) + bytes([udl]) + ud
    return (encode_smsc(smsc) + tpdu).hex().upper(), len(tpdu)


def status_report_pdu(
    mr: int,
    recipient: str,
    status: int = 0x00,
    *,
    when: datetime = DEFAULT_TIMESTAMP,
    smsc: str | None = None,
) -> tuple[str, int]:
    """An SMS-STATUS-REPORT; without ``smsc`` it is the bare TPDU (as many modems send +CDS)."""
    tpdu = bytes([0x06, mr & 0xFF]) + encode_address(recipient)
    tpdu += encode_timestamp(when) + encode_timestamp(when + timedelta(seconds=3))
    tpdu += bytes([status])
    prefix = encode_smsc(smsc) if smsc is not None else b""
    return (prefix + tpdu).hex().upper(), len(tpdu)


# -- the modem ----------------------------------------------------------------------------


@dataclass
class SentSms:
    """One AT+CMGS the fake accepted."""

    length: int
    pdu: str
    mr: int
    sms: SmsSubmit


@dataclass
class FakeModem:
    """A modem on a pty. Call ``start()`` inside the event loop, ``stop()`` at the end."""

    pin: str | None = None  # SIM PIN required until entered
    puk_locked: bool = False
    registration: int = 1  # +CREG stat: 1 home, 5 roaming, 0/2 not registered, 3 denied
    gprs_registration: int = 0
    rssi: int = 20
    operator: str = "Fake Telecom"
    act: int = 7
    imei: str = "356938035643809"
    silent: bool = False  # swallow everything, answer nothing
    # Take the next SMS (the network has it) and then hang: no +CMGS, silent from then on.
    hang_after_submit: bool = False
    auto_status: int | None = None  # send a +CDS with this status right after each +CMGS
    fail_deletes: int = 0  # refuse this many AT+CMGD
    cnmi_accepts: Callable[[str], bool] = lambda setting: True
    storage_size: int = 30

    echo: bool = True
    cmee: int = 0
    pdu_mode: bool = False
    cnmi: str | None = None
    pin_attempts: int = 3
    next_mr: int = 1
    storage: dict[int, tuple[str, int]] = field(default_factory=dict)  # index → (pdu, length)
    deleted: list[int] = field(default_factory=list)
    sent: list[SentSms] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    send_failures: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no line discipline between the fake and the code under test
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self._input = b""
        self._pdu_length: int | None = None  # set while waiting for the PDU after "> "
        self._output = b""
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeModem:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.master)
            if self._writing:
                self._loop.remove_writer(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; re-checked after every command the fake handles."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- test controls -----------------------------------------------------------------

    def fail_next_send(self, cms_code: int) -> None:
        self.send_failures.append(cms_code)

    def garbage(self, data: bytes) -> None:
        self._write(data)

    def receive(self, pdu: str, length: int, *, notify: bool = True) -> int:
        """Store an incoming SMS and announce it with +CMTI; returns its index."""
        index = next(i for i in range(1, self.storage_size + 1) if i not in self.storage)
        self.storage[index] = (pdu, length)
        if notify:
            self.unsolicited(f'+CMTI: "SM",{index}')
        return index

    def status_report(self, pdu: str, length: int) -> None:
        self.unsolicited(f"+CDS: {length}", pdu)

    def unsolicited(self, *lines: str) -> None:
        self._write(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines))

    # -- I/O ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._output += data
        self._flush()

    def _flush(self) -> None:
        while self._output:
            try:
                n = os.write(self.master, self._output)
            except BlockingIOError:
                break
            self._output = self._output[n:]
        assert self._loop is not None
        if self._output and not self._writing:
            self._loop.add_writer(self.master, self._flush)
            self._writing = True
        elif not self._output and self._writing:
            self._loop.remove_writer(self.master)
            self._writing = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        if self.silent:
            return
        self._input += data
        self._process()

    def _process(self) -> None:
        while True:
            if self._pdu_length is not None:
                end = min((i for i in (self._input.find(b"\x1a"), self._input.find(b"\x1b"))
                           if i >= 0), default=-1)  # fmt: skip
                if end < 0:
                    return
                pdu, terminator = self._input[:end], self._input[end : end + 1]
                self._input = self._input[end + 1 :]
                length, self._pdu_length = self._pdu_length, None
                if terminator == b"\x1a":
                    self._submit(length, pdu.decode("ascii", "replace").strip())
                else:
                    self._final("OK")  # ESC cancels the message
                self._changed.set()
                continue
            cut = self._input.find(b"\r")
            if cut < 0:
                return
            line = self._input[:cut].replace(b"\n", b"").decode("ascii", "replace").strip()
            self._input = self._input[cut + 1 :]
            if self.echo:
                self._write(line.encode() + b"\r")
            if line:
                self.commands.append(line)
                self._command(line)
                self._changed.set()

    # -- answers -----------------------------------------------------------------------

    def _info(self, *lines: str) -> None:
        for line in lines:
            self._write(b"\r\n" + line.encode() + b"\r\n")

    def _final(self, result: str) -> None:
        self._write(b"\r\n" + result.encode() + b"\r\n")

    def _error(self, kind: str, code: int) -> None:
        if self.cmee == 0:
            self._final("ERROR")
        elif self.cmee == 2 and kind == "CME" and code in CME_TEXT:
            self._final(f"+CME ERROR: {CME_TEXT[code]}")
        else:
            self._final(f"+{kind} ERROR: {code}")

    @property
    def sim_ready(self) -> bool:
        return self.pin is None and not self.puk_locked

    def _command(self, line: str) -> None:
        upper = line.upper()
        if not upper.startswith("AT"):
            self._final("ERROR")
            return
        body = upper[2:]
        if body in ("", "Z", "I"):
            self._final("OK")
        elif body in ("E0", "E1", "E"):
            self.echo = body == "E1"
            self._final("OK")
        elif body.startswith("+CMEE="):
            self.cmee = int(body[6:] or 0)
            self._final("OK")
        elif body == "+CPIN?":
            state = "SIM PUK" if self.puk_locked else "SIM PIN" if self.pin else "READY"
            self._info(f"+CPIN: {state}")
            self._final("OK")
        elif body.startswith("+CPIN="):
            self._enter_pin(line[8:].strip('"'))
        elif body in ("+CGMI", "+CGMM", "+CGSN", "+CIMI"):
            value = {"+CGMI": "FAKE", "+CGMM": "FM-1", "+CGSN": self.imei}.get(body)
            if body == "+CIMI":
                if not self.sim_ready:
                    self._error("CME", 11)
                    return
                value = "001010123456789"
            self._info(str(value))
            self._final("OK")
        elif not self.sim_ready:
            self._error("CME", 12 if self.puk_locked else 11)
        else:
            self._sim_command(line, body)

    def _enter_pin(self, pin: str) -> None:
        if self.puk_locked:
            self._error("CME", 12)
        elif self.pin is None:
            self._error("CME", 3)
        elif pin == self.pin:
            self.pin = None
            self._final("OK")
        else:
            self.pin_attempts -= 1
            if self.pin_attempts <= 0:
                self.puk_locked = True
            self._error("CME", 16)

    def _sim_command(self, line: str, body: str) -> None:
        if body.startswith("+CMGF="):
            self.pdu_mode = body[6:] == "0"
            self._final("OK")
        elif body == "+CNUM":
            self._info(f'+CNUM: "","{OWN_NUMBER}",145')
            self._final("OK")
        elif body.startswith("+CSMS="):
            self._info("+CSMS: 1,1,1")
            self._final("OK")
        elif body == "+CPMS?":
            n = len(self.storage)
            self._info(f'+CPMS: "SM",{n},30,"SM",{n},30,"SM",{n},30')
            self._final("OK")
        elif body.startswith("+CPMS="):
            n = len(self.storage)
            self._info(f"+CPMS: {n},30,{n},30,{n},30")
            self._final("OK")
        elif body in ("+CREG?", "+CGREG?", "+CEREG?"):
            stat = self.registration if body == "+CREG?" else self.gprs_registration
            self._info(f"{body[:-1]}: 0,{stat}")
            self._final("OK")
        elif body.startswith("+CNMI="):
            if self.cnmi_accepts(body[6:]):
                self.cnmi = body[6:]
                self._final("OK")
            else:
                self._error("CMS", 303)
        elif body == "+COPS?":
            if self.registration in (1, 5):
                self._info(f'+COPS: 0,0,"{self.operator}",{self.act}')
            else:
                self._info("+COPS: 0")
            self._final("OK")
        elif body == "+CSQ":
            self._info(f"+CSQ: {self.rssi},99")
            self._final("OK")
        elif body.startswith("+CMGS="):
            if not self.pdu_mode:
                self._error("CMS", 302)
                return
            self._pdu_length = int(body[6:])
            self._write(b"\r\n> ")
        elif body.startswith("+CMGR="):
            stored = self.storage.get(int(body[6:]))
            if stored is None:
                self._error("CMS", 321)
                return
            self._info(f"+CMGR: 0,,{stored[1]}", stored[0])
            self._final("OK")
        elif body.startswith("+CMGL="):
            for index, (pdu, length) in sorted(self.storage.items()):
                self._info(f"+CMGL: {index},0,,{length}", pdu)
            self._final("OK")
        elif body.startswith("+CMGD="):
            if self.fail_deletes > 0:
                self.fail_deletes -= 1
                self._error("CMS", 500)
                return
            index = int(body[6:].split(",")[0])
            if self.storage.pop(index, None) is not None:
                self.deleted.append(index)
            self._final("OK")
        elif body == "+CNMA":
            self._error("CMS", 340)
        else:
            self._final("ERROR")

    def _submit(self, length: int, pdu: str) -> None:
        if self.send_failures:
            self._error("CMS", self.send_failures.pop(0))
            return
        try:
            sms = decode_pdu(pdu)
        except ValueError:
            self._error("CMS", 304)
            return
        if (
            not isinstance(sms, SmsSubmit)
            or len(bytes.fromhex(pdu)) - 1 - int(pdu[:2], 16) != length
        ):
            self._error("CMS", 304)  # length must count the TPDU only, like a real modem
            return
        mr = self.next_mr
        self.next_mr = (self.next_mr + 1) % 256
        self.sent.append(SentSms(length=length, pdu=pdu, mr=mr, sms=sms))
        if self.hang_after_submit:
            self.hang_after_submit, self.silent = False, True
            return
        self._info(f"+CMGS: {mr}")
        self._final("OK")
        if self.auto_status is not None:
            self.status_report(*status_report_pdu(mr, sms.recipient, self.auto_status))


# -- test helpers -------------------------------------------------------------------------

WAIT = 5.0


class Recorder:
    """Collects what a backend reports; tests await the next item instead of sleeping."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[InboundSms] = asyncio.Queue()
        self.delivered: asyncio.Queue[str] = asyncio.Queue()

    async def on_inbound(self, sms: InboundSms) -> None:
        await self.inbound.put(sms)

    async def on_delivery(self, message_id: str) -> None:
        await self.delivered.put(message_id)

    async def next_inbound(self) -> InboundSms:
        return await asyncio.wait_for(self.inbound.get(), WAIT)

    async def next_delivery(self) -> str:
        return await asyncio.wait_for(self.delivered.get(), WAIT)

    def attach(self, backend: ModemBackend) -> ModemBackend:
        backend.set_inbound_callback(self.on_inbound)
        backend.set_delivery_callback(self.on_delivery)
        return backend


MakeBackend = Callable[..., Awaitable[ModemBackend]]
