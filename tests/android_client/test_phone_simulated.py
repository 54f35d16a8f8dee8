"""SimulatedBackend: seeded failures, delivery and inbound callbacks, segment counting."""

from __future__ import annotations

import asyncio

import pytest

from android_client.backend import InboundSms
from android_client.simulated import SimulatedBackend, SimulatedConfig, sms_parts


async def test_send_records_transmissions_and_counts_parts() -> None:
    backend = SimulatedBackend(SimulatedConfig(deliver=False))
    result = await backend.send_sms("m1", "+1555", "x" * 161, None)
    assert result.ok and result.parts == 2
    assert backend.transmitted == [("m1", "+1555", "x" * 161)]


async def test_failures_are_seeded_and_flagged() -> None:
    async def outcomes(seed: int) -> list[bool]:
        backend = SimulatedBackend(SimulatedConfig(failure_rate=0.5, seed=seed, deliver=False))
        return [(await backend.send_sms(f"m{i}", "+1", "b", None)).ok for i in range(40)]

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert True in first and False in first

    backend = SimulatedBackend(SimulatedConfig(failure_rate=1.0, failure_retryable=False))
    result = await backend.send_sms("m1", "+1", "b", None)
    assert not result.ok and result.retryable is False and result.error_code
    assert backend.transmitted == [] and backend.failures == [("m1", "+1", "b")]


async def test_delivery_report_reaches_the_callback() -> None:
    backend = SimulatedBackend(SimulatedConfig(deliver=True, delivery_delay=0.01))
    got: asyncio.Queue[str] = asyncio.Queue()

    async def on_delivery(message_id: str) -> None:
        await got.put(message_id)

    backend.set_delivery_callback(on_delivery)
    await backend.send_sms("m1", "+1", "b", None)
    assert await asyncio.wait_for(got.get(), 5) == "m1"
    assert backend.delivered == ["m1"]


async def test_no_delivery_when_disabled_and_aclose_cancels_pending() -> None:
    backend = SimulatedBackend(SimulatedConfig(deliver=True, delivery_delay=60))
    await backend.send_sms("m1", "+1", "b", None)
    await backend.aclose()
    assert backend.delivered == []


async def test_inbound_waits_for_a_listener() -> None:
    backend = SimulatedBackend()
    first = await backend.receive_sms("+1555", "early")  # nobody listening yet
    got: list[InboundSms] = []

    async def on_inbound(sms: InboundSms) -> None:
        got.append(sms)

    backend.set_inbound_callback(on_inbound)
    await backend.flush_inbound()
    second = await backend.receive_sms("+1666", "later")
    assert [(s.local_id, s.sender, s.body) for s in got] == [
        (first, "+1555", "early"),
        (second, "+1666", "later"),
    ]
    assert first != second
    assert got[0].received_at.tzinfo is not None


async def test_status_and_accepting_follow_the_config() -> None:
    backend = SimulatedBackend(SimulatedConfig(battery=150, signal=-1, never_accept=True))
    status = await backend.status()
    assert (status.battery, status.signal) == (100, 0)  # clamped to what the hub accepts
    assert backend.accepting is False
    backend.config.never_accept = False
    backend.config.accept_delay = 1.5
    assert backend.accepting is True and backend.accept_delay == 1.5


def test_config_rejects_bad_failure_rate() -> None:
    with pytest.raises(ValueError):
        SimulatedConfig(failure_rate=1.5)


@pytest.mark.parametrize(
    ("body", "parts"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two septets
        ("€" * 81, 2),
        ("é" * 160, 1),  # in the GSM basic set
        ("ж" * 70, 1),  # forces UCS-2
        ("ж" * 71, 2),
        ("😀" * 35, 1),  # surrogate pairs count twice
        ("😀" * 36, 2),
    ],
)
def test_sms_parts(body: str, parts: int) -> None:
    assert sms_parts(body) == parts
