"""The phone side of the device protocol, free of I/O: hub frames in, actions out.

``PhoneProtocol`` decides what a phone does with each hub frame (docs/protocol.md) and
which frames it answers with. It never touches a socket, a clock or the radio: it returns
actions (``Emit`` a frame, ``Accept`` after the accept delay, ``Transmit`` on the radio,
``Welcomed``) that ``PhoneClient`` carries out, and it is told the outcome of each
transmission. Durable state lives in a ``PhoneStore``, so the rules are unit-tested with
an in-memory store and no network.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import wire
from .backend import DeviceStatus, InboundSms, SendResult, SimInfo
from .outbox import Frame, HeldCommand, PhoneStore
from .wire import PROTOCOL_VERSION, Ack, Error, Ownership, Send, Welcome, WireError

log = logging.getLogger(__name__)

# Error codes the hub uses for frames that will never be valid: re-sending them after a
# reconnect would only loop, so the refused report is dropped.
PERMANENT_ERRORS = frozenset({"invalid_json", "invalid_frame", "unknown_type"})


# --- actions for the I/O layer -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """Write this frame if a session is open (stored frames are re-sent after welcome)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Accept:
    """Call ``PhoneProtocol.accept`` for this offer once the accept delay has passed."""

    message_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send this SMS on the radio, then call ``transmitted`` (or ``transmit_aborted``)."""

    command: HeldCommand


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The session is open: start heartbeats at this interval."""

    device_id: str
    heartbeat_interval: float


Action = Emit | Accept | Transmit | Welcomed


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the phone will not take an offer now; sent as a retryable ``failed``."""

    error_code: str
    error: str


class PhoneProtocol:
    """Device-side rules of the protocol, shared by every connection of one phone.

    ``accepting`` is asked for each offer; when it returns False the phone ignores
    ``send`` frames entirely (the hub then times out and offers the message elsewhere).
    ``refuse`` is asked next; a ``Refusal`` answers the offer with a retryable ``failed``
    at once (e.g. the daily cap is reached), so the hub fails over without waiting.
    """

    def __init__(
        self,
        store: PhoneStore,
        *,
        app_version: str = "sim-0.1",
        accepting: Callable[[], bool] = lambda: True,
        refuse: Callable[[], Refusal | None] = lambda: None,
        id_prefix: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._clock = clock  # only to age out what is kept for late delivery reports
        self.app_version = app_version
        self._accepting = accepting
        self._refuse = refuse
        # Random prefix: ids stay unique across reconnects and restarts, so a stored report
        # keeps its id and the hub's ack of any copy of it clears it.
        prefix = id_prefix if id_prefix is not None else secrets.token_hex(4)
        self._ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._inflight: set[str] = set()
        self._sim_slots: set[int] | None = None
        self.hello_id: str | None = None
        self.device_id: str | None = None

    # -- frames the phone starts ---------------------------------------------------

    def new_id(self) -> str:
        return next(self._ids)

    def hello(
        self, status: DeviceStatus, sims: Sequence[SimInfo], fcm_token: str | None = None
    ) -> Frame:
        """First frame of every connection; lists the held commands."""
        self._sim_slots = {sim.slot for sim in sims}
        hello = wire.PHONE_FRAMES["hello"]
        frame = self._frame(
            "hello",
            protocol=PROTOCOL_VERSION,
            app_version=_clip(self.app_version, hello["app_version"]),
            **_status_fields(status),
            sims=_wire_sims(sims),
            # Past the bound the hub would refuse the hello (and the phone stop): the rest
            # stay held, and the hub's sends of them again are duplicates, dropped.
            held=[cmd.message_id for cmd in self.store.held()][: _high(hello["held"])],
        )
        if fcm_token is not None and len(fcm_token) <= _high(hello["fcm_token"]):
            frame["fcm_token"] = fcm_token
        self.hello_id = frame["id"]
        return frame

    def heartbeat(self, status: DeviceStatus) -> Frame:
        return self._frame("heartbeat", **_status_fields(status))

    def disconnected(self) -> None:
        self.hello_id = None

    # -- hub frames ---------------------------------------------------------------

    def receive_text(self, text: str) -> list[Action]:
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
            log.warning("hub sent invalid JSON: %.200s", text)
            return []
        if not isinstance(raw, dict):
            log.warning("hub sent a non-object frame: %.200s", text)
            return []
        return self.receive(raw)

    def receive(self, raw: Mapping[str, Any]) -> list[Action]:
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in wire.HUB_FRAMES:
            # A newer hub may add frame types; ignoring them keeps old phones working.
            log.info("ignoring unknown hub frame type %.100r", kind)
            return []
        try:
            frame = wire.parse_hub_frame(raw)
        except WireError as exc:
            log.warning("hub sent an invalid %s frame: %s", raw.get("type"), exc)
            return []
        if isinstance(frame, Welcome):
            return self._on_welcome(frame)
        if isinstance(frame, Send):
            return self._on_send(frame)
        if isinstance(frame, Ownership):
            return self._on_ownership(frame)
        if isinstance(frame, Ack):
            self._on_ack(frame.ref)
            return []
        self._on_error(frame)
        return []

    def _on_welcome(self, frame: Welcome) -> list[Action]:
        if self.hello_id is not None and frame.ref not in (None, self.hello_id):
            log.warning("welcome refers to %r, not our hello %r", frame.ref, self.hello_id)
        self.device_id = frame.device_id
        interval = frame.heartbeat_interval if frame.heartbeat_interval > 0 else 30.0
        actions: list[Action] = [Welcomed(frame.device_id, interval)]
        # At-least-once towards the hub: everything not acked yet goes again.
        actions += [Emit(report) for report in self.store.reports()]
        actions += [Emit(inbound) for inbound in self.store.inbound()]
        return actions

    def _on_send(self, frame: Send) -> list[Action]:
        held = self.store.get_held(frame.message_id)
        if held is not None:
            if frame.attempt <= held.attempt or held.state != "accepted":
                # The same offer again, or a message this phone already owns (it is not
                # transmitted twice): nothing to do.
                log.debug("dropping duplicate send for %s", frame.message_id)
                return []
            # The hub gave up waiting on the older attempt and offers the message again:
            # the new attempt replaces it (an accept of the old one would be disowned).
            self.store.drop_held(frame.message_id)
        if not self._accepting():
            return []
        if (
            frame.sim_slot is not None
            and self._sim_slots is not None
            and frame.sim_slot not in self._sim_slots
        ):
            # Refuse without accepting: another phone may have that slot.
            return [
                self._report(
                    "failed",
                    message_id=frame.message_id,
                    attempt=frame.attempt,
                    error_code="no_sim",
                    error=f"no SIM in slot {frame.sim_slot}",
                    retryable=True,
                )
            ]
        refusal = self._refuse()
        if refusal is not None:
            return [
                self._report(
                    "failed",
                    message_id=frame.message_id,
                    attempt=frame.attempt,
                    error_code=refusal.error_code,
                    error=refusal.error,
                    retryable=True,
                )
            ]
        self.store.put_held(
            HeldCommand(
                message_id=frame.message_id,
                attempt=frame.attempt,
                to=frame.to,
                body=frame.body,
                sim_slot=frame.sim_slot,
            )
        )
        return [Accept(frame.message_id, frame.attempt)]

    def accept(self, message_id: str, attempt: int) -> list[Action]:
        """The accept delay is over: accept the offer if it is still ours to accept."""
        held = self.store.get_held(message_id)
        if held is None or held.attempt != attempt or held.state != "accepted":
            return []
        return [Emit(self._frame("accepted", message_id=message_id, attempt=attempt))]

    def _on_ownership(self, frame: Ownership) -> list[Action]:
        held = self.store.get_held(frame.message_id)
        if held is None:
            return []
        if frame.attempt < held.attempt:
            log.debug("stale ownership for %s attempt %d", frame.message_id, frame.attempt)
            return []
        if not frame.owner:
            if held.state == "accepted":
                self.store.drop_held(frame.message_id)
            else:
                # Already on the radio: nothing to undo; the report settles it.
                log.warning("hub disowned %s while %s", frame.message_id, held.state)
            return []
        if held.state == "transmitted" or frame.message_id in self._inflight:
            return []
        # "accepted", or "owned" left over from a crash mid-transmission: (re)transmit.
        owned = held.with_state("owned", attempt=frame.attempt)
        self.store.put_held(owned)
        self._inflight.add(frame.message_id)
        return [Transmit(owned)]

    def _on_ack(self, ref: str) -> None:
        with self.store.batch():
            report = self.store.drop_report(ref)
            if report is not None:
                self._forget_reported(report)
                return
            self.store.drop_inbound(ref)

    def _on_error(self, frame: Error) -> None:
        log.warning("hub refused frame %s: %s %s", frame.ref, frame.code, frame.message)
        if frame.ref is None or frame.code not in PERMANENT_ERRORS:
            return
        with self.store.batch():
            report = self.store.drop_report(frame.ref)
            if report is not None:
                self._forget_reported(report)
            else:
                self.store.drop_inbound(frame.ref)

    def _forget_reported(self, report: Frame) -> None:
        if report.get("type") not in ("sent", "failed"):
            return
        held = self.store.get_held(str(report.get("message_id")))
        if held is not None and held.attempt == report.get("attempt"):
            self.store.drop_held(held.message_id)

    # -- events from the radio ----------------------------------------------------

    def transmitted(self, message_id: str, attempt: int, result: SendResult) -> list[Action]:
        """The radio finished: record it and report ``sent`` or ``failed``."""
        self._inflight.discard(message_id)
        with self.store.batch():
            held = self.store.get_held(message_id)
            if held is not None and held.attempt == attempt:
                self.store.put_held(held.with_state("transmitted"))
            if result.ok:
                self._remember_sent(message_id, attempt)
                fields: dict[str, Any] = {"message_id": message_id, "attempt": attempt}
                if result.parts >= 1:
                    fields["parts"] = result.parts
                return [self._report("sent", **fields)]
            return [
                self._report(
                    "failed",
                    message_id=message_id,
                    attempt=attempt,
                    error_code=result.error_code or "send_failed",
                    error=result.error or "",
                    retryable=result.retryable,
                )
            ]

    def transmit_aborted(self, message_id: str) -> None:
        """Transmission was cancelled (client stopping); it stays ``owned``."""
        self._inflight.discard(message_id)

    def delivered(self, message_id: str) -> list[Action]:
        held = self.store.get_held(message_id)
        attempt = held.attempt if held is not None else self.store.sent_attempt(message_id)
        if attempt is None:
            log.warning("delivery report for unknown message %s", message_id)
            return []
        with self.store.batch():
            self.store.drop_sent(message_id)
            return [self._report("delivered", message_id=message_id, attempt=attempt)]

    def delivery_failed(self, message_id: str, error_code: str, error: str) -> list[Action]:
        """The network reported a sent message as not delivered: a final ``failed``."""
        held = self.store.get_held(message_id)
        attempt = held.attempt if held is not None else self.store.sent_attempt(message_id)
        if attempt is None:
            log.warning("delivery failure for unknown message %s", message_id)
            return []
        self.store.drop_sent(message_id)
        return [
            self._report(
                "failed",
                message_id=message_id,
                attempt=attempt,
                error_code=error_code,
                error=error,
                retryable=False,
            )
        ]

    def inbound(self, sms: InboundSms) -> list[Action]:
        frame = self._frame(
            "inbound",
            local_id=sms.local_id,
            sender=sms.sender,
            body=sms.body,
            received_at=sms.received_at.isoformat(),
            sim_slot=sms.sim_slot,
        )
        self.store.put_inbound(frame)
        return [Emit(frame)]

    # -- helpers ------------------------------------------------------------------

    def _frame(self, kind: str, **fields: Any) -> Frame:
        return wire.frame(kind, self.new_id(), **fields)

    def _report(self, kind: str, **fields: Any) -> Emit:
        if kind == "failed":
            # A backend's error text (a tool's stderr, an exception) may be longer than
            # the hub takes; a refused report would be dropped and the hub never learn.
            spec = wire.PHONE_FRAMES["failed"]
            fields["error_code"] = _clip(fields["error_code"], spec["error_code"])
            fields["error"] = _clip(fields["error"], spec["error"])
        frame = self._frame(kind, **fields)
        self.store.put_report(frame)
        return Emit(frame)

    def _remember_sent(self, message_id: str, attempt: int) -> None:
        # Durable (SqlitePhoneStore): a delivery report after a restart still finds it.
        self.store.put_sent(message_id, attempt, self._clock())


def _status_fields(status: DeviceStatus) -> dict[str, Any]:
    network = status.network
    return {
        "battery": status.battery,
        "charging": status.charging,
        "signal": status.signal,
        "network": None if network is None else _clip(network, wire.NETWORK),
    }


def _high(spec: wire.Spec) -> int:
    assert spec.high is not None
    return int(spec.high)


def _clip(text: str, spec: wire.Spec) -> str:
    """Free text (a version, a carrier's name, an error) cut to what the hub accepts."""
    return text[: _high(spec)]


def _wire_sims(sims: Sequence[SimInfo]) -> list[dict[str, object]]:
    """The SIM cards as ``hello`` carries them: slots the wire has, names cut to fit."""
    spec = wire.PHONE_FRAMES["hello"]["sims"]
    fields = wire.SIM
    out: list[dict[str, object]] = []
    for sim in sims:
        slot = fields["slot"]
        if not (slot.low or 0) <= sim.slot <= _high(slot):
            continue  # a slot no send can name
        entry: dict[str, object] = {"slot": sim.slot}
        for name, value in (("carrier", sim.carrier), ("number", sim.number)):
            if value is not None:
                entry[name] = _clip(value, fields[name])
        out.append(entry)
    return out[: _high(spec)]
