"""GET /metrics: parsed as Prometheus parses it, moving as the farm does (a phone online, a
dispatch, a failover, a phone removed), and never open. The live counters and histograms
(smsgw/telemetry.py, smsgw/httpmetrics.py) under a scripted farm: a dispatch, an offer
timeout and its failover, a phone's failure, HTTP requests by route template, a removed
phone's series."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router

from smsgw.api.metrics import _pool
from smsgw.httpmetrics import HttpMetrics
from smsgw.store import Status
from smsgw.telemetry import HubMetrics, error_label
from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.pgtest import harness_store
from tests.scrape import Samples, samples, scrape


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


def transitions(m: Samples, status: str, error: str = "") -> float:
    labels = (("error", error), ("status", status))
    return m.get(("smsgw_message_transitions_total", labels), 0.0)


def outcome(m: Samples, device: str, what: str) -> float:
    return m.get(("smsgw_phone_messages_total", (("device", device), ("outcome", what))), 0.0)


def requests(m: Samples, method: str, route: str, status: int) -> float:
    labels = (("method", method), ("route", route), ("status", str(status)))
    return m.get(("smsgw_http_requests_total", labels), 0.0)


async def test_a_dispatch_moves_the_live_counters(api: httpx.AsyncClient, farm: Farm) -> None:
    before = await scrape(api)
    assert before[("smsgw_dispatch_seconds_count", ())] == 0
    assert transitions(before, "SENT") == 0
    good = await farm.add("good")
    r = await api.post("/sms/dispatch", json={"to": "+12025550110", "message": "x"})
    assert r.status_code == 200 and r.json()["status"] == "SENT", r.text

    async def delivered() -> bool:
        return outcome(await scrape(api), good.device_id, "delivered") == 1

    await wait_for(delivered, what="the delivery report counted")
    m = await scrape(api)
    assert m[("smsgw_dispatch_seconds_count", ())] == 1
    # One dispatch through a phone of this node: seconds at most, never negative.
    assert 0 <= m[("smsgw_dispatch_seconds_sum", ())] < 10
    assert m[("smsgw_dispatch_seconds_bucket", (("le", "+Inf"),))] == 1
    assert transitions(m, "QUEUED") == 1
    assert transitions(m, "SENT") == 1
    assert transitions(m, "DELIVERED") == 1
    assert transitions(m, "FAILED") == 0
    assert outcome(m, good.device_id, "sent") == 1
    assert m[("smsgw_offer_timeouts_total", ())] == 0
    assert m[("smsgw_failovers_total", ())] == 0
    if harness_store() == "postgres":
        # PostgreSQL has no writer thread: its pool is read at scrape time instead.
        assert m[("smsgw_store_batch_size_count", ())] == 0
        assert any(name.startswith("smsgw_store_pool") for name, _ in m)
    else:
        # The SQLite writer stored it (with the enrollment and everything else) in batches.
        assert m[("smsgw_store_batch_size_count", ())] >= 2
        batches = m[("smsgw_store_batch_size_count", ())]
        assert m[("smsgw_store_batch_size_sum", ())] >= batches
        assert m[("smsgw_store_commit_seconds_count", ())] == batches
        assert not any(name.startswith("smsgw_store_pool") for name, _ in m)  # PostgreSQL's
    assert not any(name.endswith("_created") for name, _ in m)


async def test_an_offer_timeout_and_a_failure_fail_over(api: httpx.AsyncClient, farm: Farm) -> None:
    mute = await farm.add("mute", never_accept=True, signal=4)
    good = await farm.add("good", signal=1, deliver=False)
    r = await api.post("/sms/dispatch", json={"to": "+12025550111", "message": "x"})
    assert r.status_code == 200 and r.json()["attempts"] == 2, r.text
    assert r.json()["device_id"] == good.device_id
    m = await scrape(api)
    assert m[("smsgw_offer_timeouts_total", ())] == 1
    assert m[("smsgw_failovers_total", ())] == 1
    assert m[("smsgw_dispatch_seconds_count", ())] == 1
    # The timeout cost the dispatch the accept timeout (1 s in tests) at least.
    assert m[("smsgw_dispatch_seconds_sum", ())] >= 1.0
    assert outcome(m, good.device_id, "sent") == 1
    assert outcome(m, mute.device_id, "failed") == 0  # silent is not a failure report
    # A phone that refuses retryably: a failure of that phone, the message PENDING again
    # (by its error code) and on to the next phone.
    await api.patch(f"/devices/{mute.device_id}", json={"enabled": False})
    flaky = await farm.add("flaky", failure_rate=1.0, failure_retryable=True, signal=4)
    r = await api.post("/sms/dispatch", json={"to": "+12025550112", "message": "y"})
    assert r.status_code == 200 and r.json()["device_id"] == good.device_id, r.text
    m = await scrape(api)
    assert outcome(m, flaky.device_id, "failed") == 1
    assert transitions(m, "PENDING", "generic_failure") == 1
    assert m[("smsgw_failovers_total", ())] == 2
    assert m[("smsgw_offer_timeouts_total", ())] == 1
    assert outcome(m, good.device_id, "sent") == 2


async def test_cancelled_and_unanswered_messages_are_transitions(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    r = await api.post("/sms/dispatch", json={"to": "+12025550113", "message": "x", "wait": False})
    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]
    assert (await api.delete(f"/sms/{message_id}")).status_code == 200
    assert (await api.delete(f"/sms/{message_id}")).status_code == 200  # counted once
    m = await scrape(api)
    assert transitions(m, "CANCELLED") == 1


async def test_http_requests_by_route_template(api: httpx.AsyncClient, hub: HubServer) -> None:
    missing = "0190f5c2-0000-7000-8000-000000000000"
    assert (await api.get(f"/sms/{missing}")).status_code == 404
    assert (await api.get("/sms/0190f5c2-0000-7000-8000-000000000001")).status_code == 404
    assert (await api.get("/no/such/path")).status_code == 404
    assert (await api.get("/health")).status_code == 200
    async with hub.client(key=None) as anonymous:
        assert (await anonymous.get("/devices/")).status_code == 401
    m = await scrape(api)
    # The template, never the raw path: both ids are one series.
    assert requests(m, "GET", "/sms/{message_id}", 404) == 2
    assert requests(m, "GET", "<unmatched>", 404) == 1
    assert requests(m, "GET", "/health", 200) == 1
    assert requests(m, "GET", "/devices/", 401) == 1
    by_id = (("method", "GET"), ("route", "/sms/{message_id}"))
    assert m[("smsgw_http_request_duration_seconds_count", by_id)] == 2
    assert not any(missing in dict(labels).get("route", "") for _, labels in m)
    # A scrape counts too, under its own route, once answered: in the next one.
    m = await scrape(api)
    assert requests(m, "GET", "/metrics", 200) == 1


async def test_a_removed_phones_counters_vanish(api: httpx.AsyncClient, farm: Farm) -> None:
    gone = await farm.add("gone", signal=4)
    stays = await farm.add("stays", signal=1)
    r = await api.post("/sms/dispatch", json={"to": "+12025550114", "message": "x"})
    assert r.status_code == 200 and r.json()["device_id"] == gone.device_id, r.text
    await api.patch(f"/devices/{gone.device_id}", json={"enabled": False})
    r = await api.post("/sms/dispatch", json={"to": "+12025550115", "message": "y"})
    assert r.status_code == 200 and r.json()["device_id"] == stays.device_id, r.text
    m = await scrape(api)
    assert outcome(m, gone.device_id, "sent") == 1
    assert (await api.delete(f"/devices/{gone.device_id}")).status_code == 204
    m = await scrape(api)
    assert not any(dict(labels).get("device") == gone.device_id for _, labels in m)
    assert outcome(m, stays.device_id, "sent") == 1
    assert transitions(m, "SENT") == 2  # the node's counts stay: only the phone's go


def test_a_phone_removed_elsewhere_is_pruned_and_errors_are_bounded() -> None:
    metrics = HubMetrics()
    metrics.reported("a", Status.SENT)
    metrics.reported("b", Status.FAILED, "a phone's own words, 64 chars at most")
    metrics.keep_devices({"a"})  # the scrape's enrolled phones: "b" was removed on a peer
    m = samples(_text(metrics))
    assert outcome(m, "a", "sent") == 1
    assert not any(dict(labels).get("device") == "b" for _, labels in m)
    assert transitions(m, "FAILED", "other") == 1
    assert error_label("generic_failure") == "generic_failure"
    assert error_label(None) == ""
    metrics.reported("b", Status.FAILED, "x")  # a series made again after pruning counts
    assert outcome(samples(_text(metrics)), "b", "failed") == 1


def test_the_postgresql_pool_is_read_at_scrape_time() -> None:
    pool = SimpleNamespace(pool_stats=lambda: (4, 3, 10))
    hub = SimpleNamespace(store=SimpleNamespace(driver=pool))
    found = {f.name: f.samples[0].value for f in _pool(hub)}  # type: ignore[arg-type]
    assert found == {
        "smsgw_store_pool_size": 4,
        "smsgw_store_pool_idle": 3,
        "smsgw_store_pool_max_size": 10,
    }
    closed = SimpleNamespace(store=SimpleNamespace(driver=SimpleNamespace(pool_stats=lambda: None)))
    assert _pool(closed) == []  # type: ignore[arg-type]


def _text(metrics: HubMetrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_the_http_middleware_counts_crashes_and_mounts() -> None:
    async def crash(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    metrics = HubMetrics()
    app = Starlette(
        routes=[
            Route("/crash", crash),
            Mount("/ui", app=Router([Route("/pages/{name}", page)])),
        ],
        middleware=[Middleware(HttpMetrics, metrics=metrics)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
        assert (await c.get("/crash")).status_code == 500
        assert (await c.get("/ui/pages/one")).status_code == 200
        assert (await c.get("/ui/pages/two")).status_code == 200
        assert (await c.get("/ui/nothing")).status_code == 404
        assert (await c.request("BREW", "/crash")).status_code == 405
    m = samples(_text(metrics))
    assert requests(m, "GET", "/crash", 500) == 1  # the crash, answered 500 outside
    assert requests(m, "GET", "/ui/pages/{name}", 200) == 2  # inside a mount: its prefix
    assert requests(m, "GET", "/ui/{path}", 404) == 1  # the mount's own 404
    assert requests(m, "other", "/crash", 405) == 1  # a client's own method is not a label
