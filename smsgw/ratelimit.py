"""Sliding-window rate limits, in memory on each hub node.

Used for requests per minute per API key, messages per day per API key, messages per
hour per recipient (against SMS pumping), failed authentications per client address
(``AuthFailures``: against guessing credentials) and failed OTP verifications per number.
Counts live in this process: they restart from zero when the hub restarts, and with
several nodes each node counts its own traffic.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque

from smsgw.errors import ApiError, over_limit


class SlidingWindow:
    """Hits per key within the last ``window`` seconds. With ``max_keys``, at most that
    many keys are kept: a new key past it drops the one hit least recently (for keys an
    attacker chooses, such as client addresses)."""

    def __init__(self, window: float, max_keys: int | None = None) -> None:
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def acquire(self, key: str, limit: int | None, now: float | None = None) -> float | None:
        """Count one hit for ``key`` unless that would pass ``limit`` within the window.
        Returns None when allowed, else the seconds until a hit would be allowed."""
        if limit is None:
            return None
        now = time.monotonic() if now is None else now
        self._sweep(now)  # first: a sweep must not drop the deque this hit goes into
        hits = self._track(key, now)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= limit:
            return max(1.0, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        return None

    def release(self, key: str, stamp: float) -> None:
        """Take back a hit counted at ``stamp`` (a reservation that turned out not to
        count)."""
        hits = self._hits.get(key)
        if hits is not None and stamp in hits:
            hits.remove(stamp)

    def __len__(self) -> int:
        return len(self._hits)

    def _track(self, key: str, now: float) -> deque[float]:
        if self.max_keys is None:
            return self._hits.setdefault(key, deque())
        # Bounded: the dict's order is the order keys were last hit (each hit moves its
        # key to the end), so the first key is the one hit least recently: a quiet one if
        # there is any. Dropping it costs O(1), not a scan per new key in a flood.
        hits = self._hits.pop(key, None)
        if hits is None:
            hits = deque()
            while len(self._hits) >= self.max_keys:
                del self._hits[next(iter(self._hits))]
        self._hits[key] = hits
        return hits

    def _sweep(self, now: float) -> None:
        # Forget keys that went quiet, so memory follows active keys, not all keys ever.
        self._calls += 1
        if self._calls % 10_000:
            return
        self._forget_quiet(now)

    def _forget_quiet(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]


# Client addresses whose failures are remembered at once. One costs about 1.7 KiB with 20
# stamps (measured with tracemalloc), so a flood of distinct addresses holds at most about
# 17 MiB; past this, the address that failed least recently is forgotten first.
MAX_CLIENTS = 10_000


def client_key(address: str | None) -> str:
    """What failures are counted under: the address itself, except that an IPv6 address
    counts as its /64 (one subscriber's network: its owner picks any address in it at
    will) and an IPv4-mapped one as its IPv4 address. No address (a Unix socket): one
    shared key."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthFailures:
    """Failed authentications per client address, against guessing credentials.

    Every place that refuses a presented credential (an API key on any API, a device
    token, an enrollment code, an app token, an access token, the metrics token, the
    dashboard's sign-in) passes its refusal through ``refuse``: the first ``limit``
    failures of an address within ``window`` seconds keep their 401; past that, failures
    get 429 ``too_many_auth_failures`` with ``Retry-After`` until the oldest leaves the
    window. Only failures are counted and refused: a valid credential from the same
    address is served as always, so one guesser behind a shared (NAT) address locks
    nobody out. A missing credential is not a guess and is not counted."""

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = MAX_CLIENTS) -> None:
        self.limit = limit  # 0: off
        self.window = window
        self._failures = SlidingWindow(window, max_keys=max_clients)

    def refuse(self, client: str | None, error: ApiError) -> ApiError:
        """Count a failed authentication from ``client`` (its address); the error to
        answer: ``error`` (the 401) within the limit, else a 429."""
        if self.limit <= 0:
            return error
        wait = self._failures.acquire(client_key(client), self.limit)
        if wait is None:
            return error
        per = "min" if self.window == 60 else f"{self.window:g}s"
        return over_limit(
            "too_many_auth_failures",
            f"more than {self.limit} failed authentications from this address within "
            f"{self.window:g} s (valid credentials are still accepted)",
            wait,
            f"{self.limit}/{per}",
        )

    def __len__(self) -> int:
        return len(self._failures)


class Limits:
    """The hub's limiters, one window each."""

    def __init__(self) -> None:
        self.requests = SlidingWindow(60.0)
        self.key_messages = SlidingWindow(86_400.0)
        self.recipient_messages = SlidingWindow(3_600.0)
        # Failed OTP verifications per number, across its codes (smsgw/api/otp.py).
        self.otp_failures = SlidingWindow(3_600.0, max_keys=100_000)
