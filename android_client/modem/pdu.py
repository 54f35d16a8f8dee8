"""SMS PDUs for GSM modems in PDU mode (3GPP TS 23.040 and 23.038); pure, no I/O.

Encodes SMS-SUBMIT (what ``AT+CMGS`` sends): GSM 7-bit default alphabet with its extension
table, or UCS-2 when the text needs it; texts longer than one SMS become concatenated parts
with an 8-bit-reference user data header. Decodes SMS-DELIVER (received SMS),
SMS-STATUS-REPORT (delivery reports) and, for tests and logs, SMS-SUBMIT.

All PDUs are handled as hex strings with the SMSC address field in front, as modems show
and expect them; ``decode_pdu`` also accepts a bare TPDU when told its length.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from ..segments import analyse

# -- GSM 7-bit default alphabet (TS 23.038 §6.2.1) ----------------------------------------

ESC = 0x1B
# Index = septet value; 0x1B is the escape to the extension table, never a character.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: dict[str, int] = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_BASIC_INDEX = {c: i for i, c in enumerate(GSM7_BASIC) if i != ESC}
_EXTENSION_CHAR = {v: k for k, v in GSM7_EXTENSION.items()}

SINGLE_GSM7 = 160  # septets in a single SMS
MULTI_GSM7 = 153  # septets per part after the 6-octet concatenation header (7 septets)
SINGLE_UCS2 = 70  # UTF-16 code units
MULTI_UCS2 = 67
MAX_PARTS = 255  # the header counts parts in one octet

DEFAULT_VALIDITY = 0xAA  # relative TP-VP: 4 days, what most phones use


class PduError(ValueError):
    """A PDU cannot be built or parsed."""


class InvalidAddress(PduError):
    """The phone number cannot be encoded as a destination address."""


class TextTooLong(PduError):
    """The text needs more than 255 parts."""


class Encoding(enum.Enum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"
    DATA8 = "8bit"


class DeliveryState(enum.Enum):
    """What an SMS-STATUS-REPORT says about the message (TS 23.040 §9.2.3.15)."""

    DELIVERED = "delivered"
    PENDING = "pending"  # temporary error, the service centre is still trying
    FAILED = "failed"  # the service centre gave up (permanent or final temporary error)


def delivery_state(status: int) -> DeliveryState:
    if status <= 0x1F:
        return DeliveryState.DELIVERED
    if status <= 0x3F:
        return DeliveryState.PENDING
    # 0x40-0x5F permanent, 0x60-0x7F temporary but no more attempts; reserved values above
    # are treated as failures because nothing more will happen.
    return DeliveryState.FAILED


STATUS_TEXT: dict[int, str] = {
    0x00: "received by the recipient",
    0x01: "forwarded, delivery not confirmed",
    0x02: "replaced by the service centre",
    0x20: "congestion (still trying)",
    0x21: "recipient busy (still trying)",
    0x22: "no response from recipient (still trying)",
    0x23: "service rejected (still trying)",
    0x24: "quality of service not available (still trying)",
    0x25: "error in recipient (still trying)",
    0x40: "remote procedure error",
    0x41: "incompatible destination",
    0x42: "connection rejected by recipient",
    0x43: "not obtainable",
    0x44: "quality of service not available",
    0x45: "no interworking available",
    0x46: "validity period expired",
    0x47: "deleted by the sender",
    0x48: "deleted by the service centre",
    0x49: "message does not exist",
    0x60: "congestion (gave up)",
    0x61: "recipient busy (gave up)",
    0x62: "no response from recipient (gave up)",
    0x63: "service rejected (gave up)",
    0x64: "quality of service not available (gave up)",
    0x65: "error in recipient (gave up)",
}


def status_text(status: int) -> str:
    return STATUS_TEXT.get(status, f"status 0x{status:02X}")


# -- GSM 7-bit text and septet packing -------------------------------------------------------


def is_gsm7(text: str) -> bool:
    return all(c in _BASIC_INDEX or c in GSM7_EXTENSION for c in text)


def gsm7_septets(text: str) -> list[int]:
    """Septet values of ``text``; extension characters become ESC + code."""
    out: list[int] = []
    for c in text:
        code = _BASIC_INDEX.get(c)
        if code is not None:
            out.append(code)
        elif c in GSM7_EXTENSION:
            out += (ESC, GSM7_EXTENSION[c])
        else:
            raise PduError(f"{c!r} is not in the GSM 7-bit alphabet")
    return out


def decode_gsm7(septets: Sequence[int]) -> str:
    out: list[str] = []
    escaped = False
    for s in septets:
        if escaped:
            escaped = False
            # Unknown extension codes show the basic character (TS 23.038 §6.2.1.1).
            out.append(_EXTENSION_CHAR.get(s) or (" " if s == ESC else GSM7_BASIC[s]))
        elif s == ESC:
            escaped = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)  # a trailing lone ESC is dropped


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Pack 7-bit values LSB first, after ``fill_bits`` zero bits (header alignment)."""
    out = bytearray()
    acc = 0
    nbits = fill_bits
    for s in septets:
        acc |= (s & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits > 0:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    available = (len(data) * 8 - fill_bits) // 7
    bits = int.from_bytes(data, "little") >> fill_bits
    return [(bits >> (7 * i)) & 0x7F for i in range(max(0, min(count, available)))]


# -- splitting into parts --------------------------------------------------------------------


def split_text(text: str) -> tuple[Encoding, list[str]]:
    """Choose the encoding and cut ``text`` into the parts it will be sent as: the hub's
    own segmentation (android_client/segments.py), so what ``POST /sms/preview`` shows is
    what goes on the air. Whole characters only: an extension character (ESC + code), a
    surrogate pair, an emoji with its modifiers or a letter with its marks never straddles
    two parts."""
    seg = analyse(text)  # smart encoding is the hub's choice, made before the offer
    if seg.segments > MAX_PARTS:
        raise TextTooLong(f"text needs {seg.segments} parts, at most {MAX_PARTS} are possible")
    encoding = Encoding.GSM7 if seg.encoding == "GSM-7" else Encoding.UCS2
    return encoding, list(seg.parts) or [""]


def join_parts(texts: Sequence[str]) -> str:
    """Concatenate decoded parts; a surrogate pair split by the sender is joined again."""
    joined = "".join(texts)
    return joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# -- addresses and timestamps ----------------------------------------------------------------

_SEMI_OCTET = "0123456789*#abc"
_NUMBER_RE = re.compile(r"[0-9*#]{1,20}")
_NUMBER_JUNK = str.maketrans("", "", " -().\t")

TOA_INTERNATIONAL = 0x91  # type of number international, numbering plan E.164
TOA_UNKNOWN = 0x81  # national or unknown: the network applies the usual dialling rules
TON_ALPHANUMERIC = 5


def _semi_octets(digits: str) -> bytes:
    values = [_SEMI_OCTET.index(d) for d in digits]
    if len(values) % 2:
        values.append(0xF)
    return bytes(values[i] | (values[i + 1] << 4) for i in range(0, len(values), 2))


def _digits(data: bytes, count: int | None = None) -> str:
    out: list[str] = []
    for b in data:
        for nibble in (b & 0x0F, b >> 4):
            if nibble == 0xF:
                continue
            out.append(_SEMI_OCTET[nibble] if nibble < len(_SEMI_OCTET) else "?")
    return "".join(out if count is None else out[:count])


def _number_parts(number: str) -> tuple[int, str]:
    cleaned = number.translate(_NUMBER_JUNK)
    toa = TOA_UNKNOWN
    if cleaned.startswith("+"):
        toa, cleaned = TOA_INTERNATIONAL, cleaned[1:]
    if not _NUMBER_RE.fullmatch(cleaned):
        raise InvalidAddress(f"not a phone number: {number!r}")
    return toa, cleaned


def encode_address(number: str) -> bytes:
    """TP-DA: digit count, type of address, semi-octets. ``+`` marks an international number."""
    toa, digits = _number_parts(number)
    return bytes([len(digits), toa]) + _semi_octets(digits)


def encode_smsc(number: str | None) -> bytes:
    """SMSC field: octet count (type included), type, semi-octets; ``00`` = modem default."""
    if not number:
        return b"\x00"
    toa, digits = _number_parts(number)
    body = bytes([toa]) + _semi_octets(digits)
    return bytes([len(body)]) + body


def _format_number(toa: int, digits: str) -> str:
    return "+" + digits if (toa >> 4) & 0x07 == 1 and digits else digits


def _decode_address(data: bytes, pos: int) -> tuple[str, int, int]:
    """TP-OA/DA/RA at ``pos`` → (address, type of address, position after it)."""
    count = data[pos]
    toa = data[pos + 1]
    end = pos + 2 + (count + 1) // 2
    if end > len(data):
        raise PduError("address runs past the end of the PDU")
    raw = data[pos + 2 : end]
    if (toa >> 4) & 0x07 == TON_ALPHANUMERIC:
        text = decode_gsm7(unpack_septets(raw, count * 4 // 7))
        return text, toa, end
    return _format_number(toa, _digits(raw, count)), toa, end


def _decode_smsc(data: bytes) -> tuple[str | None, int]:
    length = data[0]
    if length == 0:
        return None, 1
    if 1 + length > len(data):
        raise PduError("SMSC field runs past the end of the PDU")
    return _format_number(data[1], _digits(data[2 : 1 + length])), 1 + length


def _bcd(b: int) -> int:
    return (b & 0x0F) * 10 + (b >> 4)


def decode_timestamp(data: bytes) -> datetime | None:
    """TP-SCTS / TP-DT (7 octets, swapped semi-octets, zone in quarter hours); None if invalid."""
    if len(data) != 7:
        return None
    year, month, day, hour, minute, second = (_bcd(b) for b in data[:6])
    tz = data[6]
    quarters = (tz & 0x07) * 10 + (tz >> 4)
    if tz & 0x08:
        quarters = -quarters
    century = 1900 if year >= 90 else 2000  # SMS predate 2000; two-digit years do not
    try:
        zone = timezone(timedelta(minutes=15 * quarters))
        return datetime(century + year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        return None


def encode_timestamp(when: datetime) -> bytes:
    """Inverse of ``decode_timestamp`` (for tests and simulators); needs an aware datetime."""
    offset = when.utcoffset()
    if offset is None:
        raise PduError("timestamp needs a time zone")
    quarters = int(offset.total_seconds() // 900)
    values = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytearray(((v % 10) << 4) | (v // 10) for v in values)
    q = abs(quarters)
    out.append(((q % 10) << 4) | (q // 10) | (0x08 if quarters < 0 else 0))
    return bytes(out)


# -- user data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation info from the user data header: part ``seq`` of ``total``."""

    reference: int
    total: int
    seq: int


def _alphabet(dcs: int) -> Encoding:
    group = dcs >> 4
    if group <= 0x07:  # general data coding (00xx) and automatic deletion (01xx)
        if dcs & 0x20:
            return Encoding.DATA8  # compressed: not readable as text
        return (Encoding.GSM7, Encoding.DATA8, Encoding.UCS2, Encoding.GSM7)[(dcs >> 2) & 0x03]
    if group == 0x0E:
        return Encoding.UCS2
    if group == 0x0F:
        return Encoding.DATA8 if dcs & 0x04 else Encoding.GSM7
    return Encoding.GSM7  # message waiting groups 0xC/0xD and reserved groups


def _parse_udh(header: bytes) -> Concat | None:
    concat: Concat | None = None
    pos = 0
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2 : pos + 2 + length]
        pos += 2 + length
        if len(value) != length:
            break
        if iei == 0x00 and length == 3:
            concat = Concat(value[0], value[1], value[2])
        elif iei == 0x08 and length == 4:
            concat = Concat((value[0] << 8) | value[1], value[2], value[3])
    if concat is not None and not 1 <= concat.seq <= concat.total:
        return None
    return concat


def _decode_user_data(
    ud: bytes, udl: int, encoding: Encoding, udhi: bool
) -> tuple[str, Concat | None, bytes]:
    """(text, concatenation info, raw payload without the header)."""
    header_len = 0
    concat = None
    if udhi and ud:
        header_len = min(len(ud), 1 + ud[0])
        concat = _parse_udh(ud[1:header_len])
    if encoding is Encoding.GSM7:
        # The header is padded to a septet boundary, so the text starts at septet `skip`.
        skip = (header_len * 8 + 6) // 7
        septets = unpack_septets(ud, udl)[skip:]
        return decode_gsm7(septets), concat, pack_septets(septets)
    payload = ud[header_len:udl]
    if encoding is Encoding.UCS2:
        payload = payload[: len(payload) // 2 * 2]
        # Keep lone surrogates: a pair may be split across parts; join_parts repairs it.
        return payload.decode("utf-16-be", "surrogatepass"), concat, payload
    return payload.decode("latin-1"), concat, payload


def _encode_user_data(text: str, encoding: Encoding, udh: bytes) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) for ``text`` with an optional header (``udh`` includes its length)."""
    if encoding is Encoding.GSM7:
        header_septets = (len(udh) * 8 + 6) // 7
        fill = header_septets * 7 - len(udh) * 8
        septets = gsm7_septets(text)
        return header_septets + len(septets), udh + pack_septets(septets, fill)
    body = udh + text.encode("utf-16-be", "surrogatepass")
    return len(body), body


# -- SMS-SUBMIT ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitPart:
    """One SMS-SUBMIT ready for ``AT+CMGS=<tpdu_length>``."""

    pdu: str  # hex, SMSC field included
    tpdu_length: int  # octets after the SMSC field
    seq: int
    total: int
    text: str


def encode_submit(
    to: str,
    text: str,
    *,
    smsc: str | None = None,
    status_report: bool = True,
    concat_reference: int = 0,
    validity: int | None = DEFAULT_VALIDITY,
    message_reference: int = 0,
) -> list[SubmitPart]:
    """SMS-SUBMIT PDUs for ``text`` to ``to`` (one per part).

    ``validity`` is a relative TP-VP octet or None for none; ``concat_reference`` (0-255)
    ties the parts of one long message together and must differ between messages sent in
    a row. Modems replace ``message_reference`` with their own counter (``+CMGS: <mr>``).
    """
    address = encode_address(to)
    smsc_field = encode_smsc(smsc)
    encoding, texts = split_text(text)
    dcs = 0x00 if encoding is Encoding.GSM7 else 0x08
    total = len(texts)
    parts: list[SubmitPart] = []
    for seq, chunk in enumerate(texts, start=1):
        udh = b""
        if total > 1:
            udh = bytes([5, 0x00, 3, concat_reference & 0xFF, total, seq])
        first = 0x01  # SMS-SUBMIT
        if validity is not None:
            first |= 0x10  # relative validity period
        if status_report:
            first |= 0x20
        if udh:
            first |= 0x40
        udl, ud = _encode_user_data(chunk, encoding, udh)
        tpdu = bytearray([first, message_reference & 0xFF])
        tpdu += address
        tpdu += bytes([0x00, dcs])  # TP-PID: plain SMS
        if validity is not None:
            tpdu.append(validity & 0xFF)
        tpdu.append(udl)
        tpdu += ud
        parts.append(
            SubmitPart(
                pdu=(smsc_field + tpdu).hex().upper(),
                tpdu_length=len(tpdu),
                seq=seq,
                total=total,
                text=chunk,
            )
        )
    return parts


# -- decoding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmsDeliver:
    """A received SMS (or one part of a long one)."""

    smsc: str | None
    sender: str  # "+" and digits, national digits, or alphanumeric ("Bank")
    sender_toa: int
    timestamp: datetime | None  # service centre time stamp, with its zone
    encoding: Encoding
    text: str  # may end or start with a lone surrogate when ``concat`` is set
    concat: Concat | None
    pid: int
    dcs: int
    data: bytes  # payload without header (septet-packed again for GSM 7-bit)

    @property
    def alphanumeric_sender(self) -> bool:
        return (self.sender_toa >> 4) & 0x07 == TON_ALPHANUMERIC


@dataclass(frozen=True, slots=True)
class SmsSubmit:
    """A decoded SMS-SUBMIT (tests, logs, messages stored as sent on the SIM)."""

    smsc: str | None
    message_reference: int
    recipient: str
    status_report: bool
    validity: bytes | None  # raw TP-VP
    encoding: Encoding
    text: str
    concat: Concat | None
    dcs: int


@dataclass(frozen=True, slots=True)
class SmsStatusReport:
    """A delivery report for a sent SMS, matched to it by ``message_reference``."""

    smsc: str | None
    message_reference: int
    recipient: str
    timestamp: datetime | None  # when the service centre received the SMS
    discharge_time: datetime | None  # when it was delivered, or the status was reached
    status: int

    @property
    def state(self) -> DeliveryState:
        return delivery_state(self.status)


Sms = SmsDeliver | SmsSubmit | SmsStatusReport


def _octets(pdu_hex: str) -> bytes:
    try:
        return bytes.fromhex(pdu_hex.strip())
    except ValueError:
        raise PduError(f"not a hex PDU: {pdu_hex[:40]!r}") from None


def decode_pdu(pdu_hex: str, tpdu_length: int | None = None) -> Sms:
    """Decode a PDU as a modem shows it.

    With ``tpdu_length`` (the ``<length>`` of ``+CMGR``/``+CDS``), a PDU exactly that long
    is taken as a bare TPDU (some modems leave the SMSC field out of ``+CDS``); otherwise
    the PDU starts with the SMSC field.
    """
    data = _octets(pdu_hex)
    if not data:
        raise PduError("empty PDU")
    smsc: str | None = None
    if tpdu_length is None or len(data) != tpdu_length:
        smsc, start = _decode_smsc(data)
        data = data[start:]
    try:
        return _decode_tpdu(data, smsc)
    except IndexError:
        raise PduError("PDU is truncated") from None


def _decode_tpdu(d: bytes, smsc: str | None) -> Sms:
    first = d[0]
    mti = first & 0x03
    if mti == 0x00:
        return _decode_deliver(d, smsc)
    if mti == 0x01:
        return _decode_submit(d, smsc)
    if mti == 0x02:
        return _decode_status_report(d, smsc)
    raise PduError(f"reserved message type in first octet 0x{first:02X}")


def _decode_deliver(d: bytes, smsc: str | None) -> SmsDeliver:
    first = d[0]
    sender, toa, pos = _decode_address(d, 1)
    pid, dcs = d[pos], d[pos + 1]
    timestamp = decode_timestamp(d[pos + 2 : pos + 9])
    udl = d[pos + 9]
    encoding = _alphabet(dcs)
    text, concat, payload = _decode_user_data(d[pos + 10 :], udl, encoding, bool(first & 0x40))
    return SmsDeliver(
        smsc=smsc,
        sender=sender,
        sender_toa=toa,
        timestamp=timestamp,
        encoding=encoding,
        text=text,
        concat=concat,
        pid=pid,
        dcs=dcs,
        data=payload,
    )


def _decode_submit(d: bytes, smsc: str | None) -> SmsSubmit:
    first = d[0]
    mr = d[1]
    recipient, _toa, pos = _decode_address(d, 2)
    dcs = d[pos + 1]
    pos += 2
    vpf = (first >> 3) & 0x03
    vp_len = {0: 0, 2: 1}.get(vpf, 7)
    validity = d[pos : pos + vp_len] if vp_len else None
    pos += vp_len
    udl = d[pos]
    encoding = _alphabet(dcs)
    text, concat, _ = _decode_user_data(d[pos + 1 :], udl, encoding, bool(first & 0x40))
    return SmsSubmit(
        smsc=smsc,
        message_reference=mr,
        recipient=recipient,
        status_report=bool(first & 0x20),
        validity=validity,
        encoding=encoding,
        text=text,
        concat=concat,
        dcs=dcs,
    )


def _decode_status_report(d: bytes, smsc: str | None) -> SmsStatusReport:
    mr = d[1]
    recipient, _toa, pos = _decode_address(d, 2)
    if pos + 15 > len(d):
        raise PduError("status report is truncated")
    return SmsStatusReport(
        smsc=smsc,
        message_reference=mr,
        recipient=recipient,
        timestamp=decode_timestamp(d[pos : pos + 7]),
        discharge_time=decode_timestamp(d[pos + 7 : pos + 14]),
        status=d[pos + 14],
    )


def utc(when: datetime | None) -> datetime:
    """``when`` in UTC, or now when the PDU had no valid time stamp."""
    return datetime.now(UTC) if when is None else when.astimezone(UTC)
