"""PhoneClient against a scripted fake hub on 127.0.0.1 (real sockets, no real hub)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fakehub import TIMEOUT, FakeHub, FakeSession, wait_task

from android_client.client import PhoneClient
from android_client.outbox import MemoryPhoneStore
from android_client.simulated import SimulatedBackend, SimulatedConfig

Factory = Callable[..., tuple[PhoneClient, "asyncio.Task[None]"]]


@pytest.fixture
async def start_client(hub: FakeHub) -> AsyncIterator[Factory]:
    started: list[tuple[PhoneClient, asyncio.Task[None]]] = []

    def factory(
        token: str = "dev_ok",
        backend: SimulatedBackend | None = None,
        store: MemoryPhoneStore | None = None,
        **kw: object,
    ) -> tuple[PhoneClient, asyncio.Task[None]]:
        client = PhoneClient(
            hub.url,
            token,
            backend or SimulatedBackend(),
            store or MemoryPhoneStore(),
            backoff_base=0.01,
            backoff_max=0.05,
            **kw,  # type: ignore[arg-type]
        )
        task = asyncio.create_task(client.run())
        started.append((client, task))
        return client, task

    yield factory
    for client, task in started:
        await client.stop()
        await wait_task(task)
        await client.backend.aclose()


async def open_session(hub: FakeHub, client: PhoneClient, **welcome_kw: Any) -> FakeSession:
    session = await hub.next_session()
    hello = await session.recv_type("hello")
    await session.welcome(hello, **welcome_kw)
    await asyncio.wait_for(client.connected.wait(), TIMEOUT)
    return session


async def test_hello_has_the_documented_shape(hub: FakeHub, start_client: Factory) -> None:
    backend = SimulatedBackend(SimulatedConfig(battery=55, charging=True, signal=1, network="5G"))
    client, _ = start_client(backend=backend, app_version="test-9")
    session = await hub.next_session()
    assert session.token == "dev_ok"
    hello = await session.recv()
    assert hello == {
        "type": "hello",
        "id": hello["id"],
        "protocol": "1.0",
        "app_version": "test-9",
        "battery": 55,
        "charging": True,
        "signal": 1,
        "network": "5G",
        "sims": [{"slot": 0, "carrier": "Simulated"}],
        "held": [],
    }
    assert isinstance(hello["id"], str) and 0 < len(hello["id"]) <= 64
    assert not client.connected.is_set()
    await session.welcome(hello, device_id="dev-42")
    await asyncio.wait_for(client.connected.wait(), TIMEOUT)
    assert client.device_id == "dev-42" and client.welcomes == 1


async def test_send_accept_own_report_sequence(hub: FakeHub, start_client: Factory) -> None:
    backend = SimulatedBackend(SimulatedConfig(deliver=True))
    client, _ = start_client(backend=backend)
    s = await open_session(hub, client)

    await s.offer("m1", body="hello world")
    accepted = await s.recv_type("accepted")
    assert (accepted["message_id"], accepted["attempt"]) == ("m1", 1)
    await s.offer("m1", attempt=1)  # the same offer again: dropped
    assert backend.transmitted == []  # nothing on the radio before ownership

    await s.send("ownership", ref=accepted["id"], message_id="m1", attempt=1, owner=True)
    sent = await s.recv_type("sent")
    assert (sent["message_id"], sent["attempt"], sent["parts"]) == ("m1", 1, 1)
    await s.send("ack", ref=sent["id"])
    delivered = await s.recv_type("delivered")
    assert (delivered["message_id"], delivered["attempt"]) == ("m1", 1)
    await s.send("ack", ref=delivered["id"])

    # A late accept answered with owner false: dropped, never transmitted.
    await s.offer("m2")
    accepted2 = await s.recv_type("accepted")
    assert accepted2["message_id"] == "m2"  # the duplicate m1 offer produced nothing
    await s.send("ownership", ref=accepted2["id"], message_id="m2", attempt=1, owner=False)
    await s.offer("m3")  # frames are handled in order: m3's accept means m2 was dropped
    assert (await s.recv_type("accepted"))["message_id"] == "m3"

    assert backend.transmitted == [("m1", "+15550001", "hello world")]
    assert client.store.get_held("m2") is None
    assert client.store.reports() == []
    ids = [accepted["id"], sent["id"], delivered["id"], accepted2["id"]]
    assert len(set(ids)) == len(ids)


async def test_accept_delay_from_backend_config(hub: FakeHub, start_client: Factory) -> None:
    backend = SimulatedBackend(SimulatedConfig(accept_delay=0.05))
    client, _ = start_client(backend=backend)
    s = await open_session(hub, client)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await s.offer("m1")
    await s.recv_type("accepted")
    assert loop.time() - t0 >= 0.04


async def test_heartbeats_follow_the_welcome_interval(hub: FakeHub, start_client: Factory) -> None:
    client, _ = start_client()
    s = await open_session(hub, client, hb=0.02)
    beat = await s.recv_type("heartbeat")
    assert {k: beat[k] for k in ("battery", "charging", "signal", "network")} == {
        "battery": 80,
        "charging": False,
        "signal": 3,
        "network": "LTE",
    }


@pytest.mark.parametrize("code", [4000, 4001, 4002, 4003])
async def test_stop_close_codes_end_the_client(
    hub: FakeHub, start_client: Factory, code: int
) -> None:
    client, task = start_client()
    s = await open_session(hub, client)
    await s.close(code, "bye")
    await wait_task(task)
    assert client.close_code == code
    assert (
        client.stopped_reason
        == {
            4000: "replaced",
            4001: "revoked",
            4002: "protocol_version",
            4003: "protocol_error",
        }[code]
    )
    assert not client.connected.is_set()
    assert hub.sessions.empty()  # no reconnection attempt


@pytest.mark.parametrize("code", [1000, 1001, 4004])
async def test_other_close_codes_reconnect_and_resend_reports(
    hub: FakeHub, start_client: Factory, code: int
) -> None:
    backend = SimulatedBackend(SimulatedConfig(deliver=False))
    client, task = start_client(backend=backend)
    s1 = await open_session(hub, client)
    await s1.offer("m1")
    accepted = await s1.recv_type("accepted")
    await s1.send("ownership", ref=accepted["id"], message_id="m1", attempt=1, owner=True)
    sent = await s1.recv_type("sent")
    await s1.close(code)  # the hub never acked the report

    s2 = await hub.next_session()
    hello = await s2.recv_type("hello")
    assert hello["held"] == ["m1"]  # transmitted but unacknowledged: still held
    assert client.close_code == code and not task.done()
    await s2.welcome(hello)
    assert await s2.recv_type("sent") == sent  # same frame, same id
    # The hub answers ownership for held ids; an already transmitted one is not re-sent.
    await s2.send("ownership", ref=None, message_id="m1", attempt=1, owner=True)
    await s2.send("ack", ref=sent["id"])
    await s2.offer("m9")
    await s2.recv_type("accepted")
    assert client.welcomes == 2
    assert client.store.get_held("m1") is None and client.store.reports() == []
    assert backend.transmitted == [("m1", "+15550001", "body of m1")]


async def test_inbound_is_resent_until_acked(hub: FakeHub, start_client: Factory) -> None:
    backend = SimulatedBackend()
    client, _ = start_client(backend=backend)
    s1 = await open_session(hub, client)
    local_id = await backend.receive_sms("+15557777", "ping")
    inbound = await s1.recv_type("inbound")
    assert (inbound["local_id"], inbound["from"], inbound["body"]) == (
        local_id,
        "+15557777",
        "ping",
    )
    await s1.close(1001)

    s2 = await open_session(hub, client)
    assert await s2.recv_type("inbound") == inbound
    await s2.send("ack", ref=inbound["id"])
    await s2.offer("sync")
    await s2.recv_type("accepted")
    assert client.store.inbound() == []


async def test_never_accept_ignores_offers(hub: FakeHub, start_client: Factory) -> None:
    class FlakyBackend(SimulatedBackend):
        """Ignores the first offer only, so the test needs no sleep to see it ignored."""

        answers = [False, True]

        @property
        def accepting(self) -> bool:
            return self.answers.pop(0) if self.answers else True

    backend = FlakyBackend(SimulatedConfig(never_accept=True))
    client, _ = start_client(backend=backend)
    s = await open_session(hub, client)
    await s.offer("m1")
    await s.offer("m2")
    assert (await s.recv_type("accepted"))["message_id"] == "m2"
    assert client.store.get_held("m1") is None


async def test_refused_token_stops_as_revoked(hub: FakeHub, start_client: Factory) -> None:
    client, task = start_client(token="dev_wrong")
    await wait_task(task)
    assert client.stopped_reason == "revoked"
    assert client.http_status == 401
    assert hub.refused == 1 and hub.sessions.empty()


async def test_stop_closes_with_going_away(hub: FakeHub, start_client: Factory) -> None:
    client, task = start_client()
    s = await open_session(hub, client)
    await client.stop()
    assert task.done() and client.stopped_reason == "stopped"
    assert await s.wait_closed() == 1001
    assert not client.connected.is_set()


async def test_kill_drops_the_connection_without_a_close_frame(
    hub: FakeHub, start_client: Factory
) -> None:
    client, task = start_client()
    s = await open_session(hub, client)
    await client.kill()
    assert task.done() and client.stopped_reason == "killed"
    assert await s.wait_closed() == 1006  # abnormal closure: no close frame


async def test_restart_with_the_same_store_resumes(hub: FakeHub, start_client: Factory) -> None:
    """A killed phone restarted on its store lists its held ids and transmits once."""
    store = MemoryPhoneStore()
    backend = SimulatedBackend()
    client, _ = start_client(backend=backend, store=store)
    s1 = await open_session(hub, client)
    await s1.offer("m1")
    await s1.recv_type("accepted")
    await client.kill()

    client2, _ = start_client(backend=backend, store=store)
    s2 = await hub.next_session()
    hello = await s2.recv_type("hello")
    assert hello["held"] == ["m1"]
    await s2.welcome(hello)
    await s2.send("ownership", ref=None, message_id="m1", attempt=1, owner=True)
    sent = await s2.recv_type("sent")
    assert sent["message_id"] == "m1"
    assert backend.transmitted == [("m1", "+15550001", "body of m1")]
    assert client2.welcomes == 1


class _Stuck(SimulatedBackend):
    """A radio that says it cannot send now (as a modem being reset does)."""

    reason: str | None = "the modem stopped answering"

    def unavailable(self) -> str | None:
        return self.reason


async def test_an_unavailable_radio_refuses_offers_at_once(
    hub: FakeHub, start_client: Factory
) -> None:
    backend = _Stuck(SimulatedConfig())
    client, _ = start_client(backend=backend)
    s = await open_session(hub, client)
    await s.offer("m1")
    failed = await s.recv_type("failed")
    assert (failed["message_id"], failed["error_code"], failed["retryable"]) == (
        "m1", "unavailable", True,
    )  # fmt: skip
    assert "stopped answering" in failed["error"]
    backend.reason = None  # answering again: offers are taken
    await s.offer("m2")
    assert (await s.recv_type("accepted"))["message_id"] == "m2"
    assert backend.transmitted == []
