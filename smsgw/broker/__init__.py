"""The message bus between hub nodes: phone ownership, presence and doorbells.

``Broker`` is the interface (``base.py``); ``LocalBroker`` keeps everything in this
process (several nodes in one process share one instance: tests), ``RedisBroker`` uses
Redis so nodes in different processes and hosts can route to each other's phones.
"""

from __future__ import annotations

from smsgw.broker.base import Broker, Envelope, PhoneState
from smsgw.broker.local import LocalBroker

__all__ = ["Broker", "Envelope", "LocalBroker", "PhoneState"]
