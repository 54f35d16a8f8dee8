"""A live connection to a phone, whatever carries it.

Routing and dispatch talk to ``Session``, never to a WebSocket: the agent's WebSocket
(``connection.py``) is one implementation, the stock app's server-sent-events stream
(``app_session.py``) another, another node's phone (``cluster.py``) a third.
"""

from __future__ import annotations

import abc

from smsgw.protocol import CloseCode
from smsgw.store import Message


class SessionClosed(Exception):
    """The session went away before the frame could be written."""


class Session(abc.ABC):
    device_id: str
    # The phone fetches its offers from the database (the stock app's pull) instead of
    # receiving them in the command: an offer is written before the phone hears of it.
    pulls: bool = False
    # Seconds the phone has to accept an offer; None: the hub's accept_timeout.
    accept_timeout: float | None = None

    @abc.abstractmethod
    async def send_command(self, message: Message, attempt: int) -> None:
        """Offer ``message`` to the phone under ``attempt``; raises ``SessionClosed``."""

    @abc.abstractmethod
    async def close(self, code: CloseCode, reason: str) -> None: ...
