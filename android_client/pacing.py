"""How fast one device may send: a minimum gap between SMS and a daily cap.

Carriers block SIMs that send in bursts, and Android itself holds back an app that sends
more than 30 SMS in 30 minutes (see docs/android.md). The agent enforces two limits for
every backend, in the client layer:

- ``min_interval``: at least this many seconds between the starts of two transmissions
  (the larger of the agent's setting and ``Backend.min_send_interval``);
- ``daily_cap``: at most this many transmissions per local calendar day. Once reached, new
  offers are refused with a retryable ``failed`` (``daily_cap``) so the hub fails over at
  once; an owned message that reaches the radio after the cap is reported the same way.

The day's count is kept in the ``PhoneStore``, so restarting the agent does not reset it.
A transmission counts when it starts (a crash mid-send still used up the slot).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date

from .outbox import PhoneStore
from .protocol import Refusal

log = logging.getLogger(__name__)

DAILY_COUNT_KEY = "daily_count"
DEFAULT_MIN_INTERVAL = 2.0
DEFAULT_DAILY_CAP = 90


class Pacer:
    """Spaces transmissions and counts them against the daily cap (None: no cap)."""

    def __init__(
        self,
        store: PhoneStore,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        daily_cap: int | None = DEFAULT_DAILY_CAP,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = date.today,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0")
        if daily_cap is not None and daily_cap < 0:
            raise ValueError("daily_cap must be >= 0")
        self.store = store
        self.min_interval = min_interval
        self.daily_cap = daily_cap
        self._clock = clock
        self._today = today
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._last_start: float | None = None
        # Held commands already counted (transmitting now): not "pending" for refusal().
        self._counted: set[str] = set()

    def sent_today(self) -> int:
        raw = self.store.get_meta(DAILY_COUNT_KEY)
        if raw is None:
            return 0
        try:
            data = json.loads(raw)
            day, count = str(data["day"]), int(data["count"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable daily counter: %.100s", raw)
            return 0
        return count if day == self._today().isoformat() else 0

    def refusal(self) -> Refusal | None:
        """Whether to refuse a new offer: sent today plus held-but-unsent reach the cap."""
        if self.daily_cap is None:
            return None
        pending = sum(
            1
            for cmd in self.store.held()
            if cmd.state != "transmitted" and cmd.message_id not in self._counted
        )
        if self.sent_today() + pending >= self.daily_cap:
            return self._cap_refusal()
        return None

    async def turn(self, message_id: str, floor: float = 0.0) -> Refusal | None:
        """Wait for this message's slot and count it; a ``Refusal`` if the cap is reached.

        Call ``finished(message_id)`` once the transmission is over.
        """
        async with self._lock:
            if self.daily_cap is not None and self.sent_today() >= self.daily_cap:
                return self._cap_refusal()
            interval = max(self.min_interval, floor)
            if self._last_start is not None:
                delay = self._last_start + interval - self._clock()
                if delay > 0:
                    await self._sleep(delay)
            self._last_start = self._clock()
            self._counted.add(message_id)
            self.store.set_meta(
                DAILY_COUNT_KEY,
                json.dumps({"day": self._today().isoformat(), "count": self.sent_today() + 1}),
            )
        return None

    def finished(self, message_id: str) -> None:
        self._counted.discard(message_id)

    def _cap_refusal(self) -> Refusal:
        return Refusal("daily_cap", f"daily cap of {self.daily_cap} SMS reached on this device")
