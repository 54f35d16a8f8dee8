"""How much the fuzzers do: small bounded budgets in the normal suite, raised for a long
local run by one environment variable.

``SMSGW_FUZZ_SECONDS`` (default 6): how long each live fuzzer sends
(tests/fuzz/test_device_fuzz.py, tests/fuzz/test_mobile_fuzz.py); their frame and
dispatch counts, and the property tests' hypothesis examples, grow in proportion. When it
is set, hypothesis draws new random examples on each run (a long run explores new cases);
unset, the examples are derived from each test's name (``derandomize``), so CI sees the
same cases on every run. ``SMSGW_FUZZ_SEED`` seeds the live fuzzers (default: fixed).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_SECONDS = 6.0


def _number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


SECONDS = _number("SMSGW_FUZZ_SECONDS", DEFAULT_SECONDS)
# How much bigger than the default run this one is: counts are multiplied by it.
SCALE = max(1.0, SECONDS / DEFAULT_SECONDS)
LONG = "SMSGW_FUZZ_SECONDS" in os.environ
SEED = int(_number("SMSGW_FUZZ_SEED", 21))


def scaled(count: int) -> int:
    return int(count * SCALE)


def hypothesis_settings(examples: int, **kw: object) -> settings:
    """Settings for a property test: ``examples`` (scaled), no wall-clock deadline (two
    shared cores make timings noisy), no example database written into the tree, and
    reproducible unless a long run was asked for."""
    return settings(
        max_examples=scaled(examples),
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kw,  # type: ignore[arg-type]
    )
