"""The PyPI client of "SMS Gateway for Android" (``android-sms-gateway``), unchanged,
against a real hub: what an integration written for SMSGate does after its base URL is
changed to smsgw's. WebSocket phones and stand-ins of the app send behind it.

The async client runs in the test's event loop; the sync client (what most scripts use)
runs in a thread, since the hub under test shares this loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from android_sms_gateway import client, domain, errors
from android_sms_gateway.enums import ProcessState, WebhookEvent

from tests.app_farm import Apps
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for

A, B = "+12025550111", "+12025550112"


@pytest.fixture
def base(hub: HubServer) -> str:
    return hub.url + "/api/3rdparty/v1"


async def read_key(api: httpx.AsyncClient) -> str:
    r = await api.post("/keys", json={"name": "reader", "scopes": ["read"]})
    return str(r.json()["key"])


async def until_state(c: client.AsyncAPIClient, mid: str, want: ProcessState) -> Any:
    found: list[Any] = []

    async def reached() -> bool:
        found[:] = [await c.get_state(mid)]
        return bool(found[0].state == want)

    await wait_for(reached, what=f"{mid} {want}")
    return found[0]


async def test_send_and_follow_to_delivered_with_basic_auth(
    base: str, farm: Farm, apps: Apps
) -> None:
    await farm.add("agent")
    await apps.add()
    async with client.AsyncAPIClient("my-login", ADMIN_KEY, base_url=base) as c:
        sent = await c.send(
            domain.Message(phone_numbers=[A, B], text_message=domain.TextMessage(text="Hello"))
        )
        assert sent.state is ProcessState.Pending
        assert [r.phone_number for r in sent.recipients] == [A, B]
        done = await until_state(c, sent.id, ProcessState.Delivered)
        assert {r.state for r in done.recipients} == {ProcessState.Delivered}
        assert set(done.states) >= {"Pending", "Processed", "Sent", "Delivered"}
        listed = await c.get_messages(
            query=domain.MessagesQueryFilter(state="Delivered"),
            pagination=domain.QueryPagination(limit=10, offset=0),
            sort="-created_at",
        )
        assert [m.id for m in listed] == [sent.id]
        devices = await c.list_devices()
        assert len(devices) == 2 and all(d.last_seen is not None for d in devices)


async def test_a_data_message_and_a_message_by_its_own_id(base: str, apps: Apps) -> None:
    app = await apps.add()
    payload = base64.b64encode(b"\x00ping").decode()
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        msg = domain.Message(
            id="client-id-1",
            phone_numbers=[A],
            data_message=domain.DataMessage(data=payload, port=53739),
            with_delivery_report=False,
        )
        sent = await c.send(msg)
        assert sent.id == "client-id-1"
        done = await until_state(c, "client-id-1", ProcessState.Sent)
        assert done.device_id == app.device_id
        with pytest.raises(errors.APIError) as caught:
            await c.send(msg)  # the same id again
        assert caught.value.status_code == 409
        with pytest.raises(errors.BadRequestError):
            await c.send(
                domain.Message(
                    phone_numbers=["not a number"], text_message=domain.TextMessage(text="x")
                )
            )


async def test_cancel_and_errors_as_the_client_raises_them(
    base: str, api: httpx.AsyncClient
) -> None:
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        sent = await c.send(
            domain.Message(phone_numbers=[A], text_message=domain.TextMessage(text="x"))
        )
        await c.cancel_message(sent.id)  # no phone: it is still Pending
        assert (await c.get_state(sent.id)).state is ProcessState.Cancelled
        with pytest.raises(errors.NotFoundError):
            await c.get_state("no-such-message")
    async with client.AsyncAPIClient("x", "sk_000000000000_wrong", base_url=base) as c:
        with pytest.raises(errors.UnauthorizedError):
            await c.list_devices()
    async with client.AsyncAPIClient(None, await read_key(api), base_url=base) as c:  # Bearer
        assert await c.list_devices() == []
        with pytest.raises(errors.ForbiddenError) as caught:
            await c.send(
                domain.Message(phone_numbers=[A], text_message=domain.TextMessage(text="x"))
            )
        assert caught.value.response == {
            "message": "scope required: messages:send",
            "code": "insufficient_scope",
        }


async def test_tokens_generate_refresh_and_revoke(base: str, farm: Farm) -> None:
    await farm.add()
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        token = await c.generate_token(
            domain.TokenRequest(scopes=["messages:send", "messages:read"], ttl=600)
        )
        assert token.token_type == "Bearer" and token.refresh_token
    async with client.AsyncAPIClient(None, token.access_token, base_url=base) as t:
        sent = await t.send(
            domain.Message(phone_numbers=[A], text_message=domain.TextMessage(text="x"))
        )
        await until_state(t, sent.id, ProcessState.Delivered)
        # client-py 4.3's AsyncAPIClient.refresh_token() calls post() without its payload
        # (a TypeError in the client itself); its sync client's refresh_token() works.

        def refresh() -> domain.TokenResponse:
            with client.APIClient(None, token.access_token, base_url=base) as sync:
                assert token.refresh_token is not None
                return sync.refresh_token(token.refresh_token)

        renewed = await asyncio.to_thread(refresh)
        assert renewed.id != token.id
        with pytest.raises(errors.UnauthorizedError):
            await t.get_state(sent.id)  # the refreshed pair ended the first
    async with client.AsyncAPIClient(None, renewed.access_token, base_url=base) as t:
        assert (await t.get_state(sent.id)).state is ProcessState.Delivered
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        await c.revoke_token(renewed.id)
    async with client.AsyncAPIClient(None, renewed.access_token, base_url=base) as t:
        with pytest.raises(errors.UnauthorizedError):
            await t.get_state(sent.id)


async def test_webhooks_settings_inbox_and_health(base: str, farm: Farm) -> None:
    phone = await farm.add()
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        made = await c.create_webhook(
            domain.Webhook(
                id="wh-1", url="https://example.invalid/hook", event=WebhookEvent.SMS_RECEIVED
            )
        )
        assert made.id == "wh-1" and made.event is WebhookEvent.SMS_RECEIVED
        with pytest.raises(errors.BadRequestError):
            await c.create_webhook(
                domain.Webhook(id=None, url="not_a_url", event=WebhookEvent.SMS_SENT)
            )
        assert [w.id for w in await c.get_webhooks()] == ["wh-1"]
        await c.delete_webhook("wh-1")
        assert await c.get_webhooks() == []
        settings = await c.get_settings()
        assert settings.webhooks is not None and settings.webhooks.signing_key
        await c.patch_settings(
            domain.DeviceSettings(webhooks=domain.SettingsWebhooks(signing_key="k-1"))
        )
        assert (await c.get_settings()).webhooks.signing_key == "k-1"  # type: ignore[union-attr]
        await phone.backend.receive_sms(B, "hello")

        async def received() -> bool:
            return len(await c.list_inbox_messages()) == 1

        await wait_for(received, what="inbox")
        (sms,) = await c.list_inbox_messages()
        assert sms.sender == B and sms.content_preview == "hello" and sms.message_type == "SMS"
        for check in (c.health_check, c.liveness_check, c.readiness_check, c.startup_check):
            assert (await check()).status.value == "pass"


async def test_the_sync_client_in_a_script(base: str, farm: Farm) -> None:
    await farm.add()

    def script() -> tuple[str, str]:
        with client.APIClient("login", ADMIN_KEY, base_url=base) as c:
            sent = c.send(
                domain.Message(
                    phone_numbers=[A], text_message=domain.TextMessage(text="from a script")
                )
            )
            token = c.generate_token(domain.TokenRequest(scopes=["messages:read"]))
        with client.APIClient(None, token.access_token, base_url=base) as t:
            return sent.id, t.get_state(sent.id).state.value

    mid, state = await asyncio.to_thread(script)
    assert state in ("Pending", "Processed", "Sent", "Delivered")
    async with client.AsyncAPIClient("x", ADMIN_KEY, base_url=base) as c:
        await until_state(c, mid, ProcessState.Delivered)
