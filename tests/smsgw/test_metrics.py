"""GET /metrics: parsed as Prometheus parses it, moving as the farm does (a phone online, a
dispatch, a failover, a phone removed), and never open."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(api: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(r.text)


def phone(device: str, name: str, kind: str = "agent") -> tuple[tuple[str, str], ...]:
    return (("device", device), ("kind", kind), ("name", name))


async def test_metrics_move_with_the_farm(api: httpx.AsyncClient, farm: Farm) -> None:
    empty = await scrape(api)
    assert empty[("smsgw_phones_online", (("kind", "agent"),))] == 0
    assert empty[("smsgw_messages", (("status", "SENT"),))] == 0
    flaky = await farm.add("flaky", failure_rate=1.0, failure_retryable=True, signal=4)
    good = await farm.add("good", signal=1, deliver=False)
    m = await scrape(api)
    assert m[("smsgw_phones_online", (("kind", "agent"),))] == 2
    assert m[("smsgw_phone_online", phone(good.device_id, "good"))] == 1
    assert m[("smsgw_phone_signal_bars", phone(flaky.device_id, "flaky"))] == 4
    assert m[("smsgw_phone_battery_percent", phone(good.device_id, "good"))] == 80
    r = await api.post("/sms/dispatch", json={"to": "+12025550100", "message": "x"})
    assert r.status_code == 200 and r.json()["attempts"] == 2  # failed over to "good"
    m = await scrape(api)
    assert m[("smsgw_messages", (("status", "SENT"),))] == 1
    assert m[("smsgw_phone_sent_today", phone(good.device_id, "good"))] == 1
    assert m[("smsgw_phone_sent_today", phone(flaky.device_id, "flaky"))] == 0
    assert m[("smsgw_outbox_due_messages", ())] == 0
    # A message no phone can take waits in the outbox, and its age shows.
    await api.patch(f"/devices/{good.device_id}", json={"enabled": False})
    await api.patch(f"/devices/{flaky.device_id}", json={"enabled": False})
    r = await api.post("/sms/dispatch", json={"to": "+12025550101", "message": "y", "wait": False})
    assert r.status_code == 202
    m = await scrape(api)
    assert m[("smsgw_outbox_due_messages", ())] == 1
    assert m[("smsgw_phone_enabled", phone(good.device_id, "good"))] == 0
    # A phone going silent is offline; a removed phone's series are gone.
    await farm.phones[0].client.stop()

    async def offline() -> bool:
        return (await scrape(api))[("smsgw_phone_online", phone(flaky.device_id, "flaky"))] == 0

    await wait_for(offline, what="flaky offline")
    assert (await api.delete(f"/devices/{flaky.device_id}")).status_code == 204
    m = await scrape(api)
    assert not any(dict(labels).get("device") == flaky.device_id for _, labels in m)
    assert m[("smsgw_phones_registered", (("kind", "agent"),))] == 1


async def test_metrics_are_never_open(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as c:
        assert (await c.get("/metrics")).status_code == 401
        reader = (await c.post("/keys", json={"name": "r", "scopes": ["read"]},
                               headers={"X-API-Key": ADMIN_KEY})).json()["key"]  # fmt: skip
        assert (
            await c.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        ).status_code == 403
        ok = await c.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert ok.status_code == 200


@pytest.mark.hub_settings(metrics_token="scrape-me")
async def test_a_metrics_token_replaces_the_admin_key(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as c:
        assert (
            await c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        ).status_code == 200
        assert (
            await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await c.get("/metrics", headers={"X-API-Key": ADMIN_KEY})).status_code == 401
