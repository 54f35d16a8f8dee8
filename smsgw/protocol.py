"""The device protocol, free of I/O: text frames in, events and frames out.

A hub-side ``DeviceProtocol`` is fed the text of each frame a phone sends and returns
typed events; the hub answers by calling methods that queue frames, which the transport
(a WebSocket today, something else tomorrow) drains with ``data_to_send()``. Nothing in
here touches a socket, a clock or the database, so every rule of the protocol is unit-
tested without any of them. The wire format is defined once, for the hub and the agent,
in ``android_client/wire.py``, and documented in docs/protocol.md.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from android_client import wire
from android_client.wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_MAJOR,
    CloseCode,
    major,
)

# Also for the modules that import them from here.
__all__ = ["MAX_FRAME_BYTES", "PROTOCOL_VERSION", "SUPPORTED_MAJOR", "CloseCode"]

# After this many consecutive bad frames the phone is clearly not speaking our protocol.
MAX_CONSECUTIVE_ERRORS = 20

# A JSON escape of U+0000 (an even number of backslashes before it, so not a quoted
# backslash followed by "u0000"). PostgreSQL's text cannot hold U+0000: a phone's string
# carrying one would fail its write and end the session, so the hub reads it as U+FFFD.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


def _rule(spec: wire.Spec) -> Any:
    """A pydantic ``Field`` with the rules of a field of the wire definition."""
    kw: dict[str, Any] = {}
    if spec.name is not None:
        kw["alias"] = spec.name
    if spec.kind in (int, bool):
        kw["strict"] = True  # as the agent's validator: "1" is not 1, 1 is not true
    bounds = ("ge", "le") if spec.kind in (int, float) else ("min_length", "max_length")
    for key, bound in zip(bounds, (spec.low, spec.high), strict=True):
        if bound is not None:
            kw[key] = int(bound)
    if not spec.required:
        if isinstance(spec.default, tuple):
            kw["default_factory"] = list
        else:
            kw["default"] = spec.default
    return Field(**kw)


def _field(frame: str, name: str) -> Any:
    return _rule(wire.PHONE_FRAMES[frame][name])


class _Frame(BaseModel):
    # Fields are read by their wire names only, as the agent's validator reads them: an
    # inbound's "sender" is not its "from".
    model_config = ConfigDict(extra="ignore")
    id: str = _rule(wire.ID)


class SimCard(BaseModel):
    model_config = ConfigDict(extra="ignore")
    slot: int = _rule(wire.SIM["slot"])
    carrier: str | None = _rule(wire.SIM["carrier"])
    number: str | None = _rule(wire.SIM["number"])


# The phone's frames as pydantic models: names and types restated for the type checker,
# every rule (required, default, bounds, wire name) taken from android_client/wire.py;
# tests/android_client/test_wire.py checks that each model has exactly its frame's fields.


class HelloFrame(_Frame):
    type: Literal["hello"]
    protocol: str = _field("hello", "protocol")
    app_version: str = _field("hello", "app_version")
    battery: int = _field("hello", "battery")
    charging: bool = _field("hello", "charging")
    signal: int = _field("hello", "signal")
    network: str | None = _field("hello", "network")
    sims: list[SimCard] = _field("hello", "sims")
    held: list[str] = _field("hello", "held")
    fcm_token: str | None = _field("hello", "fcm_token")


class AcceptedFrame(_Frame):
    type: Literal["accepted"]
    message_id: str = _field("accepted", "message_id")
    attempt: int = _field("accepted", "attempt")


class SentFrame(_Frame):
    type: Literal["sent"]
    message_id: str = _field("sent", "message_id")
    attempt: int = _field("sent", "attempt")
    parts: int | None = _field("sent", "parts")


class FailedFrame(_Frame):
    type: Literal["failed"]
    message_id: str = _field("failed", "message_id")
    attempt: int = _field("failed", "attempt")
    error_code: str = _field("failed", "error_code")
    error: str = _field("failed", "error")
    retryable: bool = _field("failed", "retryable")


class DeliveredFrame(_Frame):
    type: Literal["delivered"]
    message_id: str = _field("delivered", "message_id")
    attempt: int = _field("delivered", "attempt")


class HeartbeatFrame(_Frame):
    type: Literal["heartbeat"]
    battery: int = _field("heartbeat", "battery")
    charging: bool = _field("heartbeat", "charging")
    signal: int = _field("heartbeat", "signal")
    network: str | None = _field("heartbeat", "network")


class InboundFrame(_Frame):
    type: Literal["inbound"]
    local_id: str = _field("inbound", "local_id")
    sender: str = _field("inbound", "sender")
    body: str = _field("inbound", "body")
    # The agent's rule, not pydantic's: an ISO 8601 string (not a number of seconds), in
    # UTC, and one that has a UTC equivalent (what the store writes).
    received_at: Annotated[datetime, BeforeValidator(wire.parse_date)] = _field(
        "inbound", "received_at"
    )
    sim_slot: int | None = _field("inbound", "sim_slot")


PhoneFrame = Annotated[
    HelloFrame
    | AcceptedFrame
    | SentFrame
    | FailedFrame
    | DeliveredFrame
    | HeartbeatFrame
    | InboundFrame,
    Field(discriminator="type"),
]
_phone_frame: TypeAdapter[PhoneFrame] = TypeAdapter(PhoneFrame)
PHONE_FRAME_TYPES = frozenset(wire.PHONE_FRAMES)


# --- events handed to the hub -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid frame from the phone (hello, report, heartbeat or inbound)."""

    frame: (
        HelloFrame
        | AcceptedFrame
        | SentFrame
        | FailedFrame
        | DeliveredFrame
        | (HeartbeatFrame | InboundFrame)
    )


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The protocol wants the connection closed; the transport closes it with this code."""

    code: CloseCode
    reason: str


Event = FrameReceived | CloseRequested


class DeviceProtocol:
    """Hub side of one device connection.

    Rules enforced here: the first frame must be a ``hello`` with a supported major
    version; later hellos, unknown types and invalid frames get an ``error`` frame and
    the connection stays up, unless the phone keeps sending garbage.
    """

    def __init__(self) -> None:
        self.state = State.AWAITING_HELLO
        self._outgoing: list[str] = []
        self._urgent = False  # whether a queued frame is more than an ack
        self._ids = itertools.count(1)
        self._consecutive_errors = 0

    # -- input --------------------------------------------------------------------

    def receive_text(self, text: str) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if "\\u0000" in text:
            text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
        if self.state is State.OPEN:
            # Fast path: pydantic parses and validates the JSON in one pass. Anything it
            # refuses goes down the slow path below, which explains what is wrong.
            try:
                fast = _phone_frame.validate_json(text)
            except ValidationError:
                pass
            else:
                if not isinstance(fast, HelloFrame):
                    self._consecutive_errors = 0
                    return [FrameReceived(fast)]
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
            return self._bad_frame(None, "invalid_json", "frame is not valid JSON")
        if not isinstance(raw, dict):
            return self._bad_frame(None, "invalid_frame", "frame must be a JSON object")
        ref = _ref(raw.get("id"))
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in PHONE_FRAME_TYPES:
            shown = repr(kind)
            shown = shown if len(shown) <= 64 else shown[:60] + "..."
            return self._bad_frame(ref, "unknown_type", f"unknown frame type {shown}")
        if self.state is State.AWAITING_HELLO and kind != "hello":
            return self._close(CloseCode.PROTOCOL_ERROR, "first frame must be hello")
        if kind == "hello":
            return self._receive_hello(raw, ref)
        try:
            frame = _phone_frame.validate_python(raw)
        except ValidationError as exc:
            return self._bad_frame(ref, "invalid_frame", _summarise(exc))
        self._consecutive_errors = 0
        return [FrameReceived(frame)]

    def receive_binary(self) -> list[Event]:
        return self._close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")

    def _receive_hello(self, raw: dict[str, Any], ref: str | None) -> list[Event]:
        if self.state is State.OPEN:
            return self._bad_frame(ref, "unexpected_hello", "session already open")
        version = raw.get("protocol")
        if not isinstance(version, str) or major(version) != SUPPORTED_MAJOR:
            return self._close(
                CloseCode.PROTOCOL_VERSION,
                f"unsupported protocol {version!r}; this hub speaks {PROTOCOL_VERSION}",
            )
        try:
            frame = _phone_frame.validate_python(raw)
        except ValidationError as exc:
            return self._close(CloseCode.PROTOCOL_ERROR, "invalid hello: " + _summarise(exc))
        self.state = State.OPEN
        return [FrameReceived(frame)]

    def _bad_frame(self, ref: str | None, code: str, message: str) -> list[Event]:
        if self.state is State.AWAITING_HELLO:
            return self._close(CloseCode.PROTOCOL_ERROR, f"{code}: {message}"[:120])
        self._consecutive_errors += 1
        if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            return self._close(CloseCode.PROTOCOL_ERROR, "too many invalid frames")
        self.error(ref, code, message)
        return []

    def _close(self, code: CloseCode, reason: str) -> list[Event]:
        self.state = State.CLOSED
        # Close reasons must fit in a control frame (123 bytes).
        return [CloseRequested(code, reason.encode()[:120].decode(errors="ignore"))]

    # -- output -------------------------------------------------------------------

    def welcome(
        self, ref: str, *, device_id: str, heartbeat_interval: float, server_time: str
    ) -> None:
        self._queue(
            "welcome",
            ref=ref,
            protocol=PROTOCOL_VERSION,
            device_id=device_id,
            heartbeat_interval=heartbeat_interval,
            server_time=server_time,
        )

    def send_command(
        self,
        *,
        message_id: str,
        attempt: int,
        to: str,
        body: str,
        sim_slot: int | None,
        parts: int,
        expires_at: str | None,
    ) -> str:
        return self._queue(
            "send",
            message_id=message_id,
            attempt=attempt,
            to=to,
            body=body,
            sim_slot=sim_slot,
            parts=parts,
            expires_at=expires_at,
        )

    def ownership(self, ref: str | None, *, message_id: str, attempt: int, owner: bool) -> None:
        self._queue("ownership", ref=ref, message_id=message_id, attempt=attempt, owner=owner)

    def ack(self, ref: str) -> None:
        # Not urgent: the phone only needs an ack to forget what it keeps, so the transport
        # may hold it back briefly and send it in one write with the next frame.
        self._queue("ack", urgent=False, ref=ref)

    def error(self, ref: str | None, code: str, message: str) -> None:
        self._queue("error", ref=ref, code=code, message=message)

    @property
    def pending(self) -> bool:
        """Whether frames are queued."""
        return bool(self._outgoing)

    @property
    def urgent(self) -> bool:
        """Whether a queued frame should go out now (anything but acks)."""
        return self._urgent

    def data_to_send(self) -> list[str]:
        out, self._outgoing = self._outgoing, []
        self._urgent = False
        return out

    def _queue(self, kind: str, *, urgent: bool = True, **fields: Any) -> str:
        frame_id = f"h{next(self._ids)}"
        self._outgoing.append(
            json.dumps(wire.frame(kind, frame_id, **fields), separators=(",", ":"))
        )
        self._urgent = self._urgent or urgent
        return frame_id


def _ref(frame_id: object) -> str | None:
    """The id of a refused frame, to answer in ``error.ref``: only one that is a valid id
    (a string of 1 to 64 characters that UTF-8 can write), else null."""
    if not isinstance(frame_id, str) or not 1 <= len(frame_id) <= 64:
        return None
    try:
        frame_id.encode()
    except UnicodeEncodeError:  # a lone surrogate (\ud800)
        return None
    return frame_id


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p not in PHONE_FRAME_TYPES)
        parts.append(f"{loc or 'frame'}: {err['msg']}")
    return "; ".join(parts)


def idle_timeout(heartbeat_interval: float) -> float:
    """A socket silent this long is dead: 2.5 intervals tolerate one lost heartbeat."""
    return 2.5 * heartbeat_interval
