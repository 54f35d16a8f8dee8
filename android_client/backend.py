"""How SMS actually leave (and reach) the device.

A ``Backend`` hides the radio: Termux:API tools on a phone (``termux.py``), AT commands on a
GSM modem (``modem/``), timers and a seeded random generator in the simulator. The
``PhoneClient`` only talks to this interface, so the protocol code is the same for all.

Lifecycle: ``await start()`` once before the client connects (raises ``BackendError`` when
the backend cannot work at all), ``await aclose()`` once at the end.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

DeliveryCallback = Callable[[str], Awaitable[None]]
# (message_id, error_code, error): the network says a sent message was NOT delivered.
DeliveryFailureCallback = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SendResult:
    """Outcome of one transmission attempt on the radio."""

    ok: bool
    error_code: str | None = None
    error: str | None = None
    retryable: bool = False
    parts: int = 1


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What the phone reports in ``hello`` and ``heartbeat`` frames."""

    battery: int
    charging: bool
    signal: int
    network: str | None = None

    def __post_init__(self) -> None:
        # The hub refuses out-of-range values; fail here, where the bug is.
        if not 0 <= self.battery <= 100:
            raise ValueError(f"battery must be 0-100, got {self.battery}")
        if not 0 <= self.signal <= 4:
            raise ValueError(f"signal must be 0-4, got {self.signal}")


@dataclass(frozen=True, slots=True)
class SimInfo:
    """A SIM card the phone can send from."""

    slot: int
    carrier: str | None = None
    number: str | None = None

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"slot": self.slot}
        if self.carrier is not None:
            wire["carrier"] = self.carrier
        if self.number is not None:
            wire["number"] = self.number
        return wire


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS received by the phone, to be forwarded to the hub."""

    local_id: str
    sender: str
    body: str
    received_at: datetime
    sim_slot: int | None = None


InboundCallback = Callable[[InboundSms], Awaitable[None]]


class BackendError(Exception):
    """The backend cannot work (tool not installed, modem not answering, no SIM, ...).

    The message is shown to the person running the agent, so it says what to do.
    """


class Backend(abc.ABC):
    """The radio side of a phone.

    Subclasses implement ``send_sms`` and ``status`` and call ``_report_delivery`` /
    ``_report_inbound`` when the carrier reports a delivery or an SMS arrives.
    """

    def __init__(self) -> None:
        self._delivery_cb: DeliveryCallback | None = None
        self._delivery_failure_cb: DeliveryFailureCallback | None = None
        self._inbound_cb: InboundCallback | None = None
        # Inbound SMS that arrived before anyone listened (app not connected yet).
        self._undelivered_inbound: list[InboundSms] = []

    @abc.abstractmethod
    async def send_sms(
        self, message_id: str, to: str, body: str, sim_slot: int | None
    ) -> SendResult:
        """Transmit one SMS; return once the radio reports success or failure."""

    @abc.abstractmethod
    async def status(self) -> DeviceStatus:
        """Current battery, charging, signal and network state."""

    def sims(self) -> list[SimInfo]:
        """SIM cards available for sending."""
        return [SimInfo(slot=0)]

    @property
    def accepting(self) -> bool:
        """False makes the phone ignore ``send`` offers (e.g. user paused sending)."""
        return True

    def unavailable(self) -> str | None:
        """Why the radio cannot send now (a modem that stopped answering), or None. Offers
        are then refused at once (retryable), so the hub fails over in milliseconds."""
        return None

    @property
    def accept_delay(self) -> float:
        """Seconds between receiving an offer and accepting it (used by the client)."""
        return 0.0

    @property
    def min_send_interval(self) -> float:
        """Shortest gap in seconds this radio needs between two transmissions.

        Pacing itself is done by the client (``pacing.Pacer``) for every backend; the
        effective gap is the larger of this and the agent's ``--min-interval``.
        """
        return 0.0

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare the radio (wake lock, modem checks); raise ``BackendError`` if unusable."""

    def set_delivery_callback(self, cb: DeliveryCallback | None) -> None:
        self._delivery_cb = cb

    def set_delivery_failure_callback(self, cb: DeliveryFailureCallback | None) -> None:
        self._delivery_failure_cb = cb

    def set_inbound_callback(self, cb: InboundCallback | None) -> None:
        self._inbound_cb = cb

    async def flush_inbound(self) -> None:
        """Hand SMS received while nobody listened to the current inbound callback."""
        while self._undelivered_inbound and self._inbound_cb is not None:
            await self._inbound_cb(self._undelivered_inbound.pop(0))

    async def _report_delivery(self, message_id: str) -> None:
        if self._delivery_cb is not None:
            await self._delivery_cb(message_id)

    async def _report_delivery_failure(self, message_id: str, error_code: str, error: str) -> None:
        if self._delivery_failure_cb is not None:
            await self._delivery_failure_cb(message_id, error_code, error)

    async def _report_inbound(self, sms: InboundSms) -> None:
        if self._inbound_cb is None:
            self._undelivered_inbound.append(sms)
        else:
            await self._inbound_cb(sms)

    async def aclose(self) -> None:
        """Release resources (timers, receivers); the base class just forgets callbacks."""
        self._delivery_cb = None
        self._delivery_failure_cb = None
        self._inbound_cb = None
