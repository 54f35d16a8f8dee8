"""The ``Broker`` interface: what hub nodes need from a shared bus, and nothing more.

A node that holds a phone's socket *owns the phone* (not its messages: those are owned
through the database's compare-and-set, never through the broker). Ownership is a key
with a TTL and an epoch: every claim takes a new, larger epoch, so a newer connection on
another node wins and the older node, fenced, closes its socket. Presence (the state
routing reads: battery, signal, quota…) is readable from every node. Commands travel on a
per-phone channel (the number of receivers tells "not there" at once); answers travel on
the per-node channel of the node that asked.

Envelopes are small JSON objects with a kind ``k``. The ones the broker itself emits:
``fence`` (phone channel: a newer owner took the phone), ``up`` / ``down`` (presence
channel: a phone came online on a node or went offline).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Envelope = dict[str, Any]
Handler = Callable[[Envelope], None]


@dataclass(slots=True)
class PhoneState:
    """A phone as every node sees it: where it is and what routing reads of it."""

    device_id: str
    node: str
    epoch: int = 0
    name: str = ""
    enabled: bool = True
    daily_quota: int = 0
    max_in_flight: int = 1
    battery: int = 0
    charging: bool = False
    signal: int = 0
    network: str | None = None
    sims: list[dict[str, Any]] = field(default_factory=list)
    sent_count: int = 0
    sent_day: str | None = None
    in_flight: int = 0
    connected_at: float = 0.0  # unix seconds
    last_seen: float = field(default_factory=time.time)
    # Seconds the phone has to accept an offer when not the hub's (the stock app's pull).
    accept_timeout: float | None = None
    kind: str = "agent"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhoneState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Broker(abc.ABC):
    """One node's handle on the bus. ``node_id`` names the node on it."""

    node_id: str

    @abc.abstractmethod
    async def start(self, handler: Handler) -> None:
        """Listen on this node's channel and the presence channel; every envelope that
        arrives (there, or on the channel of a phone this node owns) goes to ``handler``,
        in arrival order, on the event loop. ``handler`` must not block."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def claim(self, state: PhoneState, ttl: float) -> int:
        """Make this node the phone's owner for ``ttl`` seconds under a new epoch (returned
        and written into ``state``); fence the previous owner, announce the phone online
        and start receiving its channel."""

    @abc.abstractmethod
    async def refresh(self, states: list[PhoneState], ttl: float) -> list[bool]:
        """Extend ownership and publish the current state of phones this node owns. For
        each: False when a newer epoch took it (this node must close its socket)."""

    @abc.abstractmethod
    async def release(self, device_id: str, epoch: int) -> bool:
        """Stop receiving the phone's channel; if ``epoch`` still owns it, forget the
        ownership and announce it offline. True when it was still ours."""

    @abc.abstractmethod
    async def to_phone(self, device_id: str, envelope: Envelope) -> int:
        """Publish on the phone's channel; returns how many nodes received it (0: nobody
        holds the phone now)."""

    @abc.abstractmethod
    def to_node(self, node_id: str, envelope: Envelope) -> None:
        """Queue ``envelope`` for ``node_id``. Envelopes from one node to another arrive
        in the order they were queued; delivery is best-effort (a dead node hears
        nothing, which the database's leases already cover)."""

    @abc.abstractmethod
    async def broadcast(self, envelope: Envelope) -> None:
        """Publish to every node (this one included), on the presence channel: for
        node-wide state kept in memory, such as the opt-out list."""

    @abc.abstractmethod
    async def online(self) -> list[PhoneState]:
        """Every phone some live node owns now."""

    @abc.abstractmethod
    async def phone(self, device_id: str) -> PhoneState | None:
        """The phone's published state if some live node owns it."""
