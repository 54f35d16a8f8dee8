"""A live connection to a phone, whatever carries it.

Routing and dispatch talk to ``Session``, never to a WebSocket: the WebSocket transport
is one implementation, and a later server-sent-events transport is another.
"""

from __future__ import annotations

import abc

from smsgw.protocol import CloseCode
from smsgw.store import Message


class SessionClosed(Exception):
    """The session went away before the frame could be written."""


class Session(abc.ABC):
    device_id: str

    @abc.abstractmethod
    async def send_command(self, message: Message, attempt: int) -> None:
        """Offer ``message`` to the phone under ``attempt``; raises ``SessionClosed``."""

    @abc.abstractmethod
    async def close(self, code: CloseCode, reason: str) -> None: ...
