"""A modem agent end to end: real hub, real WebSocket, ModemBackend on the fake modem."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fake_modem import FakeModem, deliver_pdu, status_report_pdu

from android_client.client import PhoneClient
from android_client.enroll import enroll
from android_client.modem import ModemBackend, ModemConfig
from android_client.modem.pdu import join_parts
from android_client.outbox import MemoryPhoneStore
from tests.harness import ADMIN_KEY, HubServer, wait_for

TO = "+12025550142"
TEXT = "Your parcel is waiting at the pick-up point. " * 5  # 2 parts


async def test_send_deliver_and_receive_through_the_hub(tmp_path: Path, modem: FakeModem) -> None:
    server = await HubServer(tmp_path / "hub.db").start()
    backend = ModemBackend(
        ModemConfig(port=modem.port, command_timeout=2, send_timeout=2, registration_timeout=0)
    )
    client: PhoneClient | None = None
    task: asyncio.Task[None] | None = None
    try:
        enrollment = await enroll(
            server.url, name="gsm1", hardware_id="modem-e2e", api_key=ADMIN_KEY
        )
        client = PhoneClient(server.url, enrollment.device_token, backend, MemoryPhoneStore())
        await backend.start()
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.connected.wait(), 5)
        async with server.client() as api:
            device = (await api.get(f"/devices/{enrollment.device_id}")).json()
            assert (device["battery"], device["charging"], device["signal"]) == (100, True, 4)
            assert device["network"] == "LTE"

            r = await api.post(
                "/sms/send",
                json={"to": TO, "message": TEXT, "device_id": enrollment.device_id},
            )
            assert r.status_code in (200, 201, 202), r.text
            message_id = r.json()["message_id"]
            await modem.wait_until(lambda: len(modem.sent) == 2)
            assert join_parts([s.sms.text for s in modem.sent]) == TEXT

            for sent in modem.sent:
                modem.status_report(*status_report_pdu(sent.mr, TO))

            async def delivered() -> bool:
                msg = (await api.get(f"/sms/{message_id}")).json()
                return bool(msg["status"] == "DELIVERED")

            await wait_for(delivered, what="delivered")

            modem.receive(*deliver_pdu("+12025550199", "STOP"))

            async def inbound() -> bool:
                items = (await api.get("/sms/inbound")).json()["items"]
                return any(i["body"] == "STOP" for i in items)

            await wait_for(inbound, what="inbound stored")
    finally:
        if client is not None:
            await client.stop()
        if task is not None:
            await task
        await backend.aclose()
        await server.stop()
