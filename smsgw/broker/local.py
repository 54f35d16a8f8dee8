"""``LocalBroker``: the broker in one process.

Nodes built on the same ``LocalBus`` see each other exactly as nodes sharing Redis do
(fencing, TTLs, per-phone channels, presence), which lets cluster behaviour be tested in
one process and without Redis. Handlers run from ``call_soon``, never inside the
publisher's call, like messages arriving off a socket.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field

from smsgw.broker.base import Broker, Envelope, Handler, PhoneState

PRESENCE = "presence"


@dataclass(slots=True)
class _Owner:
    node: str
    epoch: int
    until: float  # monotonic
    state: PhoneState


@dataclass(slots=True)
class LocalBus:
    """What Redis holds, as dicts."""

    epochs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    owners: dict[str, _Owner] = field(default_factory=dict)
    # channel -> node ids subscribed to it
    subscribers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    handlers: dict[str, Handler] = field(default_factory=dict)

    def publish(self, channel: str, envelope: Envelope) -> int:
        nodes = list(self.subscribers.get(channel, ()))
        loop = asyncio.get_running_loop()
        for node in nodes:
            handler = self.handlers.get(node)
            if handler is not None:
                # A copy, as if it went over the wire: receivers never share objects.
                loop.call_soon(handler, copy.deepcopy(envelope))
        return len(nodes)

    def live_owner(self, device_id: str) -> _Owner | None:
        owner = self.owners.get(device_id)
        if owner is not None and owner.until <= time.monotonic():
            del self.owners[device_id]
            return None
        return owner


class LocalBroker(Broker):
    def __init__(self, bus: LocalBus | None = None, node_id: str | None = None) -> None:
        self.bus = bus or LocalBus()
        self.node_id = node_id or secrets.token_hex(6)

    async def start(self, handler: Handler) -> None:
        self.bus.handlers[self.node_id] = handler
        self.bus.subscribers[f"node:{self.node_id}"].add(self.node_id)
        self.bus.subscribers[PRESENCE].add(self.node_id)

    async def close(self) -> None:
        self.bus.handlers.pop(self.node_id, None)
        for nodes in self.bus.subscribers.values():
            nodes.discard(self.node_id)

    async def claim(self, state: PhoneState, ttl: float) -> int:
        bus, dev = self.bus, state.device_id
        bus.epochs[dev] += 1
        epoch = bus.epochs[dev]
        state.node, state.epoch = self.node_id, epoch
        bus.owners[dev] = _Owner(self.node_id, epoch, time.monotonic() + ttl, copy.copy(state))
        fence = {"k": "fence", "dev": dev, "node": self.node_id, "epoch": epoch}
        bus.publish(f"phone:{dev}", fence)
        bus.publish(PRESENCE, {"k": "up", "dev": dev, "node": self.node_id, "epoch": epoch})
        bus.subscribers[f"phone:{dev}"].add(self.node_id)
        return epoch

    async def refresh(self, states: list[PhoneState], ttl: float) -> list[bool]:
        result = []
        for state in states:
            owner = self.bus.live_owner(state.device_id)
            mine = owner is not None and owner.node == self.node_id and owner.epoch == state.epoch
            if owner is not None and mine:
                owner.until = time.monotonic() + ttl
                owner.state = copy.copy(state)
                owner.state.node = self.node_id
            result.append(mine)
        return result

    async def release(self, device_id: str, epoch: int) -> bool:
        bus = self.bus
        bus.subscribers[f"phone:{device_id}"].discard(self.node_id)
        owner = bus.live_owner(device_id)
        if owner is None or owner.node != self.node_id or owner.epoch != epoch:
            return False
        del bus.owners[device_id]
        bus.publish(PRESENCE, {"k": "down", "dev": device_id, "node": self.node_id, "epoch": epoch})
        return True

    async def to_phone(self, device_id: str, envelope: Envelope) -> int:
        return self.bus.publish(f"phone:{device_id}", envelope)

    def to_node(self, node_id: str, envelope: Envelope) -> None:
        self.bus.publish(f"node:{node_id}", envelope)

    async def broadcast(self, envelope: Envelope) -> None:
        self.bus.publish(PRESENCE, envelope)

    async def online(self) -> list[PhoneState]:
        return [
            copy.copy(owner.state)
            for dev in list(self.bus.owners)
            if (owner := self.bus.live_owner(dev)) is not None
        ]

    async def phone(self, device_id: str) -> PhoneState | None:
        owner = self.bus.live_owner(device_id)
        return copy.copy(owner.state) if owner is not None else None
