"""The benchmark suite (``python -m bench.run``); see bench/README.md."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a load process on uvloop when it is installed: the phones and REST clients
    share one core, and a cheaper loop there keeps them from being the bottleneck."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
