"""Sliding-window rate limits, in memory on each hub node.

Used for requests per minute per API key, messages per day per API key, and messages per
hour per recipient (against SMS pumping). Counts live in this process: they restart from
zero when the hub restarts, and with several nodes each node counts its own traffic.
"""

from __future__ import annotations

import math
import time
from collections import deque


class SlidingWindow:
    def __init__(self, window: float) -> None:
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def acquire(self, key: str, limit: int | None, now: float | None = None) -> float | None:
        """Count one hit for ``key`` unless that would pass ``limit`` within the window.
        Returns None when allowed, else the seconds until a hit would be allowed."""
        if limit is None:
            return None
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        self._sweep(now)
        if len(hits) >= limit:
            return max(1.0, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        return None

    def _sweep(self, now: float) -> None:
        # Forget keys that went quiet, so memory follows active keys, not all keys ever.
        self._calls += 1
        if self._calls % 10_000:
            return
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]


class Limits:
    """The hub's limiters, one window each."""

    def __init__(self) -> None:
        self.requests = SlidingWindow(60.0)
        self.key_messages = SlidingWindow(86_400.0)
        self.recipient_messages = SlidingWindow(3_600.0)
