"""The outbox round's bounds, on the store of the pass's engine and an in-process registry
(no sockets)."""

from __future__ import annotations

from datetime import datetime

from smsgw.config import Settings
from smsgw.dispatcher import ROUND_LIMIT, Dispatcher
from smsgw.protocol import CloseCode
from smsgw.registry import LocalRegistry
from smsgw.session import Session
from smsgw.store import Message, Store
from tests.builders import live_device, new_message


class Silent(Session):
    """A phone that takes offers and never answers them."""

    def __init__(self) -> None:
        self.offers = 0

    async def send_command(self, message: Message, attempt: int) -> None:
        self.offers += 1

    async def close(self, code: CloseCode, reason: str) -> None:
        pass


def count_limits(store: Store) -> list[int]:
    """The ``limit`` of every ``due_messages`` call the store gets from now on."""
    limits: list[int] = []
    due = store.due_messages

    async def counted(now: datetime, limit: int) -> list[Message]:
        limits.append(limit)
        return await due(now, limit)

    store.due_messages = counted  # type: ignore[method-assign]
    return limits


async def test_a_round_takes_at_most_round_limit_and_asks_for_the_next(
    engine_store: Store,
) -> None:
    store = engine_store
    limits = count_limits(store)
    registry = LocalRegistry()
    settings = Settings(admin_key="x" * 32, max_in_flight=4, accept_timeout=60.0)
    dispatcher = Dispatcher(store, registry, settings)
    phones = [Silent() for _ in range(2 * ROUND_LIMIT)]  # room for 8 x ROUND_LIMIT
    for i, phone in enumerate(phones):
        await registry.attach(live_device(phone, f"p{i}", max_in_flight=4))
    for _ in range(ROUND_LIMIT + 20):
        await store.create_message(new_message())
    try:
        assert await dispatcher.drain_once() == ROUND_LIMIT
        assert limits == [ROUND_LIMIT]  # counted free slots up to the limit, no more
        assert dispatcher._maybe_due  # a full round: the outbox goes on at once
        assert await dispatcher.drain_once() == 20  # the rest, in the next round
    finally:
        await dispatcher.stop()
