"""The sliding windows of smsgw/ratelimit.py, and ``AuthFailures`` on them: the limit, its
window, memory bounded however many addresses fail, IPv6 counted by /64 (the limiter over
HTTP: tests/smsgw/test_auth_failures_e2e.py)."""

from __future__ import annotations

from smsgw.errors import ApiError
from smsgw.ratelimit import AuthFailures, SlidingWindow, client_key

REFUSAL = ApiError(401, "unauthorized", "no")


def test_a_bounded_window_forgets_the_key_hit_least_recently() -> None:
    w = SlidingWindow(10.0, max_keys=3)
    for n, key in enumerate("abc"):
        assert w.acquire(key, 5, now=float(n)) is None
    assert w.acquire("a", 5, now=3.0) is None  # "a" is now the most recent
    assert w.acquire("d", 5, now=4.0) is None  # so "b" goes
    assert len(w) == 3
    assert w.acquire("b", 1, now=5.0) is None  # forgotten: counted from zero
    assert w.acquire("a", 2, now=5.0) == 5.0  # kept: its hits at 0 and 3 still count


def test_a_released_hit_no_longer_counts() -> None:
    w = SlidingWindow(60.0)
    assert w.acquire("k", 1, now=1.0) is None
    w.release("k", 1.0)
    assert w.acquire("k", 1, now=2.0) is None
    assert w.acquire("k", 1, now=3.0) == 59.0


def test_a_sweep_never_loses_the_hit_that_triggered_it() -> None:
    w = SlidingWindow(1.0)
    for n in range(9_999):
        w.acquire(f"k{n}", 5, now=0.0)
    # The 10,000th call sweeps (everything is quiet by now), then counts its own hit.
    assert w.acquire("last", 1, now=5.0) is None
    assert w.acquire("last", 1, now=5.5) == 1.0


def test_failures_past_the_limit_become_429_until_the_window_moves() -> None:
    failures = AuthFailures(3, window=60.0)
    assert [failures.refuse("192.0.2.1", REFUSAL).status for _ in range(3)] == [401] * 3
    over = failures.refuse("192.0.2.1", REFUSAL)
    assert over.status == 429 and over.code == "too_many_auth_failures"
    assert over.headers is not None
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert over.headers["X-RateLimit-Limit"] == "3/min"
    assert failures.refuse("192.0.2.2", REFUSAL).status == 401  # per address
    assert AuthFailures(0).refuse("192.0.2.1", REFUSAL) is REFUSAL  # 0: off


def test_memory_is_bounded_by_the_number_of_addresses() -> None:
    failures = AuthFailures(2, max_clients=100)
    for n in range(10_000):
        failures.refuse(f"10.0.{n // 256}.{n % 256}", REFUSAL)
    assert len(failures) == 100
    # The addresses failing now are kept: the latest one is still counted.
    assert failures.refuse("10.0.39.15", REFUSAL).status == 401
    assert failures.refuse("10.0.39.15", REFUSAL).status == 429


def test_an_ipv6_client_counts_as_its_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key(None) == client_key("") == "-"
