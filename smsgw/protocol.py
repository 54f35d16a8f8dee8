"""The device protocol, free of I/O: text frames in, events and frames out.

A hub-side ``DeviceProtocol`` is fed the text of each frame a phone sends and returns
typed events; the hub answers by calling methods that queue frames, which the transport
(a WebSocket today, something else tomorrow) drains with ``data_to_send()``. Nothing in
here touches a socket, a clock or the database, so every rule of the protocol is unit-
tested without any of them. The wire format is documented in docs/protocol.md.
"""

from __future__ import annotations

import enum
import itertools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = "1.0"
SUPPORTED_MAJOR = 1

# Maximum frame size the hub accepts. Frames are small JSON objects; a body of 10 UCS-2
# segments is under 2 KiB. The transport enforces this before parsing (close 1009).
MAX_FRAME_BYTES = 64 * 1024

# After this many consecutive bad frames the phone is clearly not speaking our protocol.
MAX_CONSECUTIVE_ERRORS = 20


class CloseCode(enum.IntEnum):
    """WebSocket close codes the hub uses; the agent honours them (see docs/protocol.md)."""

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


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    id: str = Field(min_length=1, max_length=64)


class SimCard(BaseModel):
    model_config = ConfigDict(extra="ignore")
    slot: int = Field(ge=0, le=7)
    carrier: str | None = Field(default=None, max_length=64)
    number: str | None = Field(default=None, max_length=32)


class HelloFrame(_Frame):
    type: Literal["hello"]
    protocol: str = Field(max_length=16)
    app_version: str = Field(default="", max_length=64)
    battery: int = Field(ge=0, le=100)
    charging: bool = False
    signal: int = Field(ge=0, le=4)
    network: str | None = Field(default=None, max_length=32)
    sims: list[SimCard] = Field(default_factory=list, max_length=8)
    held: list[str] = Field(default_factory=list, max_length=10_000)
    fcm_token: str | None = Field(default=None, max_length=4096)


class AcceptedFrame(_Frame):
    type: Literal["accepted"]
    message_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)


class SentFrame(_Frame):
    type: Literal["sent"]
    message_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)
    parts: int | None = Field(default=None, ge=1)


class FailedFrame(_Frame):
    type: Literal["failed"]
    message_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)
    error_code: str = Field(max_length=64)
    error: str = Field(default="", max_length=512)
    retryable: bool


class DeliveredFrame(_Frame):
    type: Literal["delivered"]
    message_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)


class HeartbeatFrame(_Frame):
    type: Literal["heartbeat"]
    battery: int = Field(ge=0, le=100)
    charging: bool = False
    signal: int = Field(ge=0, le=4)
    network: str | None = Field(default=None, max_length=32)


class InboundFrame(_Frame):
    type: Literal["inbound"]
    local_id: str = Field(min_length=1, max_length=128)
    sender: str = Field(alias="from", min_length=1, max_length=32)
    body: str = Field(max_length=20_000)
    received_at: datetime
    sim_slot: int | None = Field(default=None, ge=0, le=7)


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
PHONE_FRAME_TYPES = frozenset(
    {"hello", "accepted", "sent", "failed", "delivered", "heartbeat", "inbound"}
)


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
        except ValueError:
            return self._bad_frame(None, "invalid_json", "frame is not valid JSON")
        if not isinstance(raw, dict):
            return self._bad_frame(None, "invalid_frame", "frame must be a JSON object")
        ref = raw.get("id") if isinstance(raw.get("id"), str) else None
        kind = raw.get("type")
        if kind not in PHONE_FRAME_TYPES:
            return self._bad_frame(ref, "unknown_type", f"unknown frame type {kind!r}")
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
        if not isinstance(version, str) or _major(version) != SUPPORTED_MAJOR:
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
            json.dumps({"type": kind, "id": frame_id, **fields}, separators=(",", ":"))
        )
        self._urgent = self._urgent or urgent
        return frame_id


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p not in PHONE_FRAME_TYPES)
        parts.append(f"{loc or 'frame'}: {err['msg']}")
    return "; ".join(parts)


def idle_timeout(heartbeat_interval: float) -> float:
    """A socket silent this long is dead: 2.5 intervals tolerate one lost heartbeat."""
    return 2.5 * heartbeat_interval
