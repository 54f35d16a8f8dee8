"""The device protocol's wire format: the one definition the hub and the agent import.

Everything both sides must agree on is here and nowhere else: the protocol version, the
close codes, every frame type with its fields (type, whether required, default, bounds,
wire name), and the builders of the frames each side sends. Zero dependencies and no
I/O, so the agent's distribution carries it without the hub, and a phone written in
another language can be checked against it (docs/protocol.md is written from it:
tests/android_client/test_wire.py holds the two together).

The agent validates the hub's frames with ``parse_hub_frame`` (pure Python); the hub
builds pydantic models of the phone's frames from ``PHONE_FRAMES`` (smsgw/protocol.py),
because it parses three of them for every message and pydantic does it in Rust.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = "1.0"
SUPPORTED_MAJOR = 1

# The largest frame the hub accepts (close 1009 above it). A body of 10 UCS-2 segments is
# under 2 KiB.
MAX_FRAME_BYTES = 64 * 1024


class CloseCode(enum.IntEnum):
    """WebSocket close codes the hub sends; what the agent does on each (docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # hub shutting down: reconnect with backoff
    UNSUPPORTED_DATA = 1003  # binary frame
    MESSAGE_TOO_BIG = 1009
    REPLACED = 4000  # a newer session for this device took over: do not reconnect
    REVOKED = 4001  # device deleted or token revoked: stop
    PROTOCOL_VERSION = 4002  # unknown major version: stop, upgrade the agent
    PROTOCOL_ERROR = 4003  # no/invalid hello, or too many bad frames
    HEARTBEAT_TIMEOUT = 4004  # silent for 2.5 heartbeat intervals: reconnect
    DRAINING = 4005  # this hub node is shutting down: reconnect (elsewhere) after the delay


def major(version: str) -> int | None:
    """The major number of a protocol version ("1.0" -> 1), None if it has none."""
    head = version.split(".", 1)[0]
    # ASCII digits only ("²".isdigit() is true, int("²") raises), and few of them (int()
    # refuses a string of more than 4300 digits): a version is read before it is checked.
    if head.isascii() and head.isdigit() and len(head) <= 16:
        return int(head)
    return None


# The largest integer a count may hold: the databases store attempts as 32-bit INTEGERs.
MAX_INT = 2**31 - 1


def parse_date(value: object) -> datetime:
    """A date of a frame: an ISO 8601 string (``datetime.fromisoformat``), taken as UTC
    without a zone, in UTC. ValueError for anything else, and for a date that has no UTC
    equivalent (``9999-12-31T23:00:00-05:00``), which no store could keep."""
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 date is expected")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("an ISO 8601 date is expected") from None


# -- fields -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """One field of a frame. ``low``/``high`` bound a number's value, or a string's or a
    list's length. ``items`` is a list's element: a scalar type, or an object's fields."""

    kind: type
    required: bool = True
    default: Any = None
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    name: str | None = None  # the wire name when it is not the field's ("from")
    items: type | dict[str, Spec] | None = None


def _opt(kind: type, default: Any = None, **kw: Any) -> Spec:
    return Spec(kind, required=False, default=default, nullable=default is None, **kw)


ID = Spec(str, low=1, high=64)
MESSAGE_ID = Spec(str, high=64)
ATTEMPT = Spec(int, low=1, high=MAX_INT)
BATTERY = Spec(int, low=0, high=100)
SIGNAL = Spec(int, low=0, high=4)
NETWORK = _opt(str, high=32)
SIM_SLOT = _opt(int, low=0, high=7)

SIM: dict[str, Spec] = {
    "slot": Spec(int, low=0, high=7),
    "carrier": _opt(str, high=64),
    "number": _opt(str, high=32),
}

# What the phone sends. Every frame also has ``type`` and ``id`` (``ID``); unknown fields
# are ignored (a newer agent may send more).
PHONE_FRAMES: dict[str, dict[str, Spec]] = {
    "hello": {
        "protocol": Spec(str, high=16),
        "app_version": _opt(str, "", high=64),
        "battery": BATTERY,
        "charging": _opt(bool, False),
        "signal": SIGNAL,
        "network": NETWORK,
        "sims": _opt(list, (), high=8, items=SIM),
        "held": _opt(list, (), high=10_000, items=str),
        "fcm_token": _opt(str, high=4096),
    },
    "accepted": {"message_id": MESSAGE_ID, "attempt": ATTEMPT},
    "sent": {
        "message_id": MESSAGE_ID,
        "attempt": ATTEMPT,
        "parts": _opt(int, low=1, high=MAX_INT),
    },
    "failed": {
        "message_id": MESSAGE_ID,
        "attempt": ATTEMPT,
        "error_code": Spec(str, high=64),
        "error": _opt(str, "", high=512),
        "retryable": Spec(bool),
    },
    "delivered": {"message_id": MESSAGE_ID, "attempt": ATTEMPT},
    "heartbeat": {
        "battery": BATTERY,
        "charging": _opt(bool, False),
        "signal": SIGNAL,
        "network": NETWORK,
    },
    "inbound": {
        "local_id": Spec(str, low=1, high=128),
        "sender": Spec(str, low=1, high=32, name="from"),
        "body": Spec(str, high=20_000),
        "received_at": Spec(datetime),
        "sim_slot": SIM_SLOT,
    },
}

# What the hub sends. ``id`` is always there; ``ref`` names the phone's frame answered.
HUB_FRAMES: dict[str, dict[str, Spec]] = {
    "welcome": {
        "ref": _opt(str),
        "protocol": _opt(str, PROTOCOL_VERSION),
        "device_id": Spec(str),
        "heartbeat_interval": _opt(float, 30.0, low=0),
        "server_time": _opt(str),
    },
    "send": {
        "message_id": MESSAGE_ID,  # the phone's answers carry it, and they are bounded
        "attempt": ATTEMPT,
        "to": Spec(str),
        "body": Spec(str),
        "sim_slot": SIM_SLOT,
        "parts": _opt(int, low=1, high=MAX_INT),
        "expires_at": _opt(str),
    },
    "ownership": {
        "ref": _opt(str),
        "message_id": Spec(str),
        # 0: an answer about a held id the hub does not know
        "attempt": Spec(int, low=0, high=MAX_INT),
        "owner": Spec(bool),
    },
    "ack": {"ref": Spec(str)},
    "error": {"ref": _opt(str), "code": Spec(str), "message": _opt(str, "")},
}


class WireError(ValueError):
    """A frame that does not match its definition: ``field`` says where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- checking a frame -------------------------------------------------------------------------


def check(frames: Mapping[str, dict[str, Spec]], raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` checked against its frame type's fields: a dict of every field by its
    attribute name, defaults filled in, unknown fields dropped; WireError otherwise."""
    kind = raw.get("type")
    fields = frames.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise WireError("type", f"unknown frame type {kind!r}")
    out: dict[str, Any] = {"type": kind, "id": _value("id", ID, raw.get("id"), "id" in raw)}
    for attr, spec in fields.items():
        wire_name = spec.name or attr
        out[attr] = _value(wire_name, spec, raw.get(wire_name), wire_name in raw)
    return out


def _value(where: str, spec: Spec, value: Any, present: bool) -> Any:
    if not present:
        if spec.required:
            raise WireError(where, "missing")
        return list(spec.default) if isinstance(spec.default, tuple) else spec.default
    if value is None:
        if spec.nullable:
            return None
        raise WireError(where, "may not be null")
    value = _typed(where, spec.kind, value)
    size = len(value) if isinstance(value, (str, list)) else value
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if spec.low is not None and size < spec.low:
            raise WireError(where, f"below {spec.low:g}")
        if spec.high is not None and size > spec.high:
            raise WireError(where, f"above {spec.high:g}")
    if isinstance(value, list) and spec.items is not None:
        return [_item(f"{where}.{i}", spec.items, v) for i, v in enumerate(value)]
    return value


def _typed(where: str, kind: type, value: Any) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(where, "a number is expected")
        try:
            number = float(value)  # an integer of 400 digits does not fit: OverflowError
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise WireError(where, "a finite number is expected")
        return number
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(where, "an integer is expected")
        return value
    if kind is datetime:
        try:
            return parse_date(value)
        except ValueError as exc:
            raise WireError(where, str(exc)) from None
    if not isinstance(value, kind):
        raise WireError(where, f"{kind.__name__} expected")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate (\ud800 in the JSON), as the hub
            raise WireError(where, "a string of Unicode characters is expected") from None
    return value


def _item(where: str, items: type | dict[str, Spec], value: Any) -> Any:
    if isinstance(items, dict):
        if not isinstance(value, dict):
            raise WireError(where, "an object is expected")
        return {a: _value(f"{where}.{a}", s, value.get(a), a in value) for a, s in items.items()}
    return _typed(where, items, value)


# -- the hub's frames, as the agent reads them -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    id: str
    ref: str | None
    protocol: str
    device_id: str
    heartbeat_interval: float
    server_time: str | None


@dataclass(frozen=True, slots=True)
class Send:
    id: str
    message_id: str
    attempt: int
    to: str
    body: str
    sim_slot: int | None
    parts: int | None
    expires_at: str | None


@dataclass(frozen=True, slots=True)
class Ownership:
    id: str
    ref: str | None
    message_id: str
    attempt: int
    owner: bool


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    ref: str


@dataclass(frozen=True, slots=True)
class Error:
    id: str
    ref: str | None
    code: str
    message: str


HubFrame = Welcome | Send | Ownership | Ack | Error
_HUB_CLASSES: dict[str, type[HubFrame]] = {
    "welcome": Welcome,
    "send": Send,
    "ownership": Ownership,
    "ack": Ack,
    "error": Error,
}


def parse_hub_frame(raw: Mapping[str, Any]) -> HubFrame:
    """A hub frame as a typed record; WireError if it does not match its definition."""
    fields = check(HUB_FRAMES, raw)
    kind = fields.pop("type")
    return _HUB_CLASSES[kind](**fields)


# -- building frames ------------------------------------------------------------------------


def frame(kind: str, frame_id: str, **fields: Any) -> dict[str, Any]:
    """A frame of ``kind`` (either side's) with these fields by attribute name, written with
    their wire names; a field the definition does not have is a programming error."""
    spec = PHONE_FRAMES.get(kind) or HUB_FRAMES[kind]
    out: dict[str, Any] = {"type": kind, "id": frame_id}
    for attr, value in fields.items():
        s = spec.get(attr)
        if s is None:
            raise KeyError(f"{kind} frames have no field {attr!r}")
        out[s.name or attr] = value
    return out


# -- the reference tables of docs/protocol.md -----------------------------------------------

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean",
               datetime: "ISO 8601 date", list: "list"}  # fmt: skip


def _describe(spec: Spec) -> str:
    kind = _TYPE_NAMES[spec.kind]
    if spec.kind is list and spec.items is not None:
        inner = "object" if isinstance(spec.items, dict) else _TYPE_NAMES[spec.items]
        kind = f"list of {inner}"
    limits = []
    unit = "" if spec.kind in (int, float) else (" items" if spec.kind is list else " chars")
    for sign, bound in (("≥", spec.low), ("≤", spec.high)):
        if bound is not None:
            limits.append(f"{sign} {int(bound) if bound == int(bound) else bound}{unit}")
    if limits:
        kind += f" ({', '.join(limits)})"
    if spec.required:
        return f"{kind}, required"
    default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    shown = "null" if default is None else repr(default).replace("'", '"').lower()
    return f"{kind}, optional{', may be null' if spec.nullable else ''}; default {shown}"


def reference() -> str:
    """The field tables of docs/protocol.md §3, written from the definition above
    (tests/android_client/test_wire.py checks that the doc holds exactly these)."""
    lines = []
    for title, frames in (("Phone → hub", PHONE_FRAMES), ("Hub → phone", HUB_FRAMES)):
        lines += [f"#### {title}", "", "| frame | field | type |", "|---|---|---|"]
        for kind, fields in frames.items():
            lines.append(f"| `{kind}` | `id` | {_describe(ID)} |")
            for attr, spec in fields.items():
                lines.append(f"| | `{spec.name or attr}` | {_describe(spec)} |")
                if isinstance(spec.items, dict):
                    for sub, s in spec.items.items():
                        lines.append(f"| | `{spec.name or attr}[].{sub}` | {_describe(s)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
