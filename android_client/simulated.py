"""A phone without a radio, for tests, demos and load: ``SimulatedBackend``.

Sending waits ``send_delay`` and succeeds or fails at random (seeded, so runs repeat);
delivery reports follow after ``delivery_delay``; ``receive_sms`` injects an inbound SMS.
Every SMS that "left the phone" is recorded in ``transmitted`` so tests can prove that no
message went out twice; with ``transmit_log`` set, each transmission is also appended to
that file (one JSON line when it starts, one when it ends), so a test can count them across
agent processes. ``SimulatedConfig`` is read on every call, so a test may change it while
the phone runs (e.g. set ``never_accept`` to make the phone go silent).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .backend import Backend, DeviceStatus, InboundSms, SendResult, SimInfo
from .segments import count_parts

# GSM 03.38 basic character set; anything else forces UCS-2 encoding.
# The hub and the simulated radio count segments the same way.
sms_parts = count_parts


@dataclass
class SimulatedConfig:
    """Behaviour of a simulated phone. Delays are in seconds."""

    accept_delay: float = 0.0  # applied by PhoneClient before sending ``accepted``
    send_delay: float = 0.0
    failure_rate: float = 0.0  # probability in [0, 1] that a transmission fails
    failure_retryable: bool = True
    deliver: bool = True  # emit a delivery report after each successful send
    delivery_delay: float = 0.0
    never_accept: bool = False  # ignore ``send`` offers entirely (hub failover tests)
    battery: int = 80
    charging: bool = False
    signal: int = 3
    network: str | None = "LTE"
    sims: list[SimInfo] = field(default_factory=lambda: [SimInfo(slot=0, carrier="Simulated")])
    seed: int | None = None
    transmit_log: Path | None = None  # JSON lines: {"event": "sending"|"sent"|"failed", ...}

    def __post_init__(self) -> None:
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")


class SimulatedBackend(Backend):
    """A ``Backend`` driven by ``SimulatedConfig`` instead of a radio."""

    def __init__(self, config: SimulatedConfig | None = None) -> None:
        super().__init__()
        self.config = config or SimulatedConfig()
        self.rng = random.Random(self.config.seed)
        self.transmitted: list[tuple[str, str, str]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.delivered: list[str] = []
        # Unique across restarts: the hub stores inbound SMS once per (device, local_id).
        self._local_ids = (f"sim-{secrets.token_hex(4)}-{n}" for n in itertools.count(1))
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepting(self) -> bool:
        return not self.config.never_accept

    @property
    def accept_delay(self) -> float:
        return self.config.accept_delay

    def sims(self) -> list[SimInfo]:
        return list(self.config.sims)

    async def status(self) -> DeviceStatus:
        cfg = self.config
        return DeviceStatus(
            battery=min(100, max(0, cfg.battery)),
            charging=cfg.charging,
            signal=min(4, max(0, cfg.signal)),
            network=cfg.network,
        )

    async def send_sms(
        self, message_id: str, to: str, body: str, sim_slot: int | None
    ) -> SendResult:
        self._log("sending", message_id, to)
        if self.config.send_delay > 0:
            await asyncio.sleep(self.config.send_delay)
        if self.rng.random() < self.config.failure_rate:
            self.failures.append((message_id, to, body))
            self._log("failed", message_id, to)
            return SendResult(
                ok=False,
                error_code="generic_failure",
                error="simulated radio failure",
                retryable=self.config.failure_retryable,
                parts=0,
            )
        self.transmitted.append((message_id, to, body))
        self._log("sent", message_id, to)
        if self.config.deliver:
            task = asyncio.create_task(self._deliver_later(message_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return SendResult(ok=True, parts=sms_parts(body))

    def _log(self, event: str, message_id: str, to: str) -> None:
        path = self.config.transmit_log
        if path is None:
            return
        line = json.dumps({"event": event, "message_id": message_id, "to": to})
        # One small append per event; written before send_sms returns, so a kill after
        # "sent" is recorded cannot lose the line.
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    async def _deliver_later(self, message_id: str) -> None:
        if self.config.delivery_delay > 0:
            await asyncio.sleep(self.config.delivery_delay)
        else:
            await asyncio.sleep(0)  # let the caller record "sent" first, as a carrier would
        self.delivered.append(message_id)
        await self._report_delivery(message_id)

    async def receive_sms(self, sender: str, body: str, sim_slot: int | None = 0) -> str:
        """Inject an SMS as if the phone had just received it; returns its local id."""
        sms = InboundSms(
            local_id=next(self._local_ids),
            sender=sender,
            body=body,
            received_at=datetime.now(UTC),
            sim_slot=sim_slot,
        )
        await self._report_inbound(sms)
        return sms.local_id

    async def aclose(self) -> None:
        """Cancel pending delivery reports."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().aclose()
