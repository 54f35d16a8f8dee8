"""Fixtures for the modem backend tests: a fake modem on a pty and backends driving it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_modem import FakeModem, MakeBackend, Recorder

from android_client.modem import ModemBackend, ModemConfig


@pytest.fixture
async def modem() -> AsyncIterator[FakeModem]:
    fake = FakeModem().start()
    yield fake
    fake.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_backend(modem: FakeModem, recorder: Recorder) -> AsyncIterator[MakeBackend]:
    """``await make_backend(start=True, listen=True, **config)`` → a backend on the fake."""
    created: list[ModemBackend] = []

    async def make(*, start: bool = True, listen: bool = True, **config: Any) -> ModemBackend:
        options: dict[str, Any] = {
            "command_timeout": 2.0,
            "send_timeout": 2.0,
            "registration_timeout": 0.0,
        }
        state = config.pop("state", None)  # the agent's PhoneStore, if the test gives one
        options.update(config)
        backend = ModemBackend(ModemConfig(port=modem.port, **options), state=state)
        created.append(backend)
        if listen:
            recorder.attach(backend)
        if start:
            await backend.start()
            if listen:  # the start-up scan of stored SMS is done: later ones come by +CMTI
                await modem.wait_until(lambda: "AT+CMGL=4" in modem.commands)
        return backend

    yield make
    for backend in created:
        await backend.aclose()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> ModemBackend:
    return await make_backend()
