"""Adapters of the providers a route sends through (docs/routes.md).

Each kind is a :class:`Provider`: it sends a message and says what the provider
answered at once (:class:`Accepted` or :class:`Refused`), and, where the provider calls
back, checks a callback's signature and reads it (:class:`Report`). The SDKs are
imported only when a route of their kind is used (the ``providers`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from smsgw.store.records import Message, Route, Status


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message; ``sent``: it has no delivery callbacks, so its
    acceptance is the last word (SENT now)."""

    route_message_id: str
    sent: bool = False
    cost: float | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The provider did not take it. ``retryable``: a transient refusal (throttled, the
    provider down or unreachable before the request was sent), tried again later; else
    the message FAILS with ``error_code``, the provider's own."""

    error_code: str
    error: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Report:
    """A delivery callback: ``status`` None when it changes nothing (queued, sending)."""

    route_message_id: str
    status: Status | None
    error_code: str | None = None
    cost: float | None = None


class Provider(Protocol):
    async def send(self, message: Message, route: Route, callback_url: str) -> Accepted | Refused:
        """Hand ``message`` to the provider; ``callback_url`` is where it reports."""
        ...

    def verify_callback(
        self, route: Route, url: str, params: Mapping[str, list[str]], signature: str | None
    ) -> bool:
        """Whether a callback to ``url`` with these form ``params`` is the provider's."""
        ...

    def parse_callback(self, params: Mapping[str, list[str]]) -> Report | None:
        """The callback read, or None if it is not one this adapter knows."""
        ...


def segment_price(message: Message, route: Route, segments: int | None = None) -> float | None:
    """The configured price of ``message`` on ``route`` (None: no price configured)."""
    if route.price_per_segment is None:
        return None
    return round(route.price_per_segment * max(segments or message.parts, 1), 6)


def provider_for(kind: str) -> Provider | None:
    """The adapter of ``kind`` (None: a kind this hub cannot send through)."""
    if kind == "twilio":
        from smsgw.providers.twilio import TwilioProvider

        return TwilioProvider()
    if kind == "sns":
        from smsgw.providers.sns import SnsProvider

        return SnsProvider()
    return None
