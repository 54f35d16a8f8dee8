"""Chaos mode for simulated phones: a ``PhoneClient`` that misbehaves the ways real phones do.

Used by ``bench/chaos.py`` (the hub under chaos, kills and restarts) and by
``android_client simulate --chaos``. Every misbehaviour is one a phone on a bad network
or a killed app really shows, and the hub must survive each without losing a message or
letting two phones own one:

- **drops**: the TCP connection is cut without a close frame (lost signal); the client
  reconnects with its stored state, as after any drop;
- **slow accepts**: some offers are accepted late, sometimes after the hub's accept
  timeout (the hub has moved on: the late accept must not make a second owner);
- **duplicate reports**: a ``sent``, ``failed`` or ``delivered`` frame goes out twice;
- **out of order**: a ``sent`` is held back and goes out after the next report (a
  ``delivered`` can arrive before its ``sent``);
- **silence**: for a while the phone sends nothing at all, not even heartbeats, while its
  socket stays open (a frozen app): the hub must notice, close it and fail over.

Randomness is seeded (``ChaosConfig.seed``), so a run can be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

from .client import PhoneClient
from .outbox import Frame
from .protocol import Accept

REPORTS = frozenset({"sent", "failed", "delivered"})


@dataclass
class ChaosConfig:
    """How often each misbehaviour happens. Periods are mean seconds (exponential)."""

    drop_every: float = 40.0  # 0: never; the client's reconnect backoff decides how long
    slow_accept_rate: float = 0.1
    slow_accept_max: float = 3.0  # seconds: may exceed the hub's accept timeout on purpose
    duplicate_rate: float = 0.05
    reorder_rate: float = 0.05
    silence_every: float = 150.0  # 0: never
    silence_seconds: float = 8.0
    seed: int | None = None


@dataclass
class ChaosCounts:
    drops: int = 0
    slow_accepts: int = 0
    duplicates: int = 0
    reorders: int = 0
    silences: int = 0


class ChaosClient(PhoneClient):
    """A ``PhoneClient`` with ``ChaosConfig``'s misbehaviours; ``counts`` says what it did."""

    def __init__(self, *args: Any, chaos: ChaosConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chaos = chaos or ChaosConfig()
        self.rng = random.Random(self.chaos.seed)
        self.counts = ChaosCounts()
        self.silent = False
        self._held: Frame | None = None

    async def run(self) -> None:
        trouble = asyncio.create_task(self._trouble())
        try:
            await super().run()
        finally:
            trouble.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trouble

    async def _trouble(self) -> None:
        """Drops and silences at random moments, for as long as the phone runs."""
        cfg = self.chaos
        next_drop = self._after(cfg.drop_every)
        next_silence = self._after(cfg.silence_every)
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake = min(next_drop, next_silence)
            await asyncio.sleep(max(0.0, wake - now))
            now = loop.time()
            if now >= next_drop:
                self.drop()
                next_drop = self._after(cfg.drop_every)
            if now >= next_silence:
                self.counts.silences += 1
                self.silent = True
                await asyncio.sleep(cfg.silence_seconds)
                self.silent = False
                next_silence = self._after(cfg.silence_every)

    def _after(self, mean: float) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + (self.rng.expovariate(1 / mean) if mean > 0 else float("inf"))

    def drop(self) -> None:
        """Cut the connection without a close frame; ``run`` reconnects as after any drop."""
        ws = self._ws
        if ws is not None:
            self.counts.drops += 1
            ws.transport.abort()

    async def _emit(self, frame: Frame) -> None:
        if self.silent:
            return  # reports stay in the phone's store and go again after the next hello
        kind = frame.get("type")
        if kind not in REPORTS:
            await super()._emit(frame)
            return
        if kind == "sent" and self._held is None and self.rng.random() < self.chaos.reorder_rate:
            self.counts.reorders += 1
            self._held = frame
            asyncio.get_running_loop().call_later(1.0, self._release_held, frame)
            return
        await super()._emit(frame)
        if self.rng.random() < self.chaos.duplicate_rate:
            self.counts.duplicates += 1
            await super()._emit(frame)
        held, self._held = self._held, None
        if held is not None:
            await super()._emit(held)  # after the report that overtook it

    def _release_held(self, frame: Frame) -> None:
        # Nothing overtook it within a second: it goes now, late.
        if self._held is frame:
            self._held = None
            task = asyncio.ensure_future(PhoneClient._emit(self, frame))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _schedule_accept(self, action: Accept) -> None:
        if self.rng.random() >= self.chaos.slow_accept_rate:
            await super()._schedule_accept(action)
            return
        self.counts.slow_accepts += 1
        delay = self.rng.uniform(0.0, self.chaos.slow_accept_max)

        async def later() -> None:
            await asyncio.sleep(delay)
            await self._execute(self.protocol.accept(action.message_id, action.attempt))

        self._spawn(later(), self._session_tasks)
