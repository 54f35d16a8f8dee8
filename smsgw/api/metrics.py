"""``GET /metrics``: the hub's state in Prometheus' text format (prometheus_client).

Two sources, one answer. Gauges are read at scrape time from what the hub already keeps
(the registry's live phones, the store's counts, the PostgreSQL pool), in a fresh
registry each time. What cannot be read back afterwards (HTTP requests, transitions,
dispatch latency, offer timeouts, failovers, per-phone reports, the SQLite writer's
batches) is counted as it happens in the node's own registry (smsgw/telemetry.py), whose
families are added to the scrape's. A scrape needs ``Authorization: Bearer <token>``:
``SMSGW_METRICS_TOKEN``, or an admin API key when that is unset, so the farm's state is
never open by default.

Per-phone series exist for the phones that exist: a removed phone's series are gone from
the next scrape (the label set is the device table's, bounded by the farm; the live
per-phone counters are pruned to it at each scrape).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut
from smsgw.auth import Scope, client_address
from smsgw.clock import utcnow
from smsgw.errors import ApiError
from smsgw.hub import Hub
from smsgw.store import Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    """The families of one scrape (a fresh registry each time: no state between scrapes,
    so a removed phone's series are not kept)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def _families(hub: Hub, now: datetime) -> list[Metric]:
    devices = await hub.store.list_devices()
    gauges = await hub.store.gauges(now)
    # A phone removed through another node (or reported on just as it was removed here)
    # still has counters on this one: the enrolled list decides.
    hub.metrics.keep_devices({d.id for d in devices})
    online = GaugeMetricFamily("smsgw_phones_online", "Phones connected now", labels=["kind"])
    registered = GaugeMetricFamily("smsgw_phones_registered", "Phones enrolled", labels=["kind"])
    labels = ["device", "name", "kind"]
    up = GaugeMetricFamily("smsgw_phone_online", "1 while the phone is connected", labels=labels)
    battery = GaugeMetricFamily("smsgw_phone_battery_percent", "Battery level", labels=labels)
    signal = GaugeMetricFamily("smsgw_phone_signal_bars", "Signal, 0 to 4", labels=labels)
    flight = GaugeMetricFamily(
        "smsgw_phone_in_flight", "Messages on offer to it or owned, unreported", labels=labels
    )
    sent = GaugeMetricFamily("smsgw_phone_sent_today", "Sent today (UTC)", labels=labels)
    enabled = GaugeMetricFamily(
        "smsgw_phone_enabled", "1 unless an admin disabled it", labels=labels
    )
    seen = GaugeMetricFamily(
        "smsgw_phone_last_seen_age_seconds", "Seconds since the phone was last heard", labels=labels
    )
    counts: dict[tuple[str, bool], int] = {}
    for d in devices:
        live = hub.registry.get(d.id)
        key = [d.id, d.name, d.kind]
        counts[(d.kind, False)] = counts.get((d.kind, False), 0) + 1
        if live is not None:
            counts[(d.kind, True)] = counts.get((d.kind, True), 0) + 1
        up.add_metric(key, 1.0 if live is not None else 0.0)
        enabled.add_metric(key, 1.0 if d.enabled else 0.0)
        level = live.battery if live is not None else d.battery
        bars = live.signal if live is not None else d.signal
        if level is not None and d.kind != "app":  # the app does not report them
            battery.add_metric(key, float(level))
        if bars is not None and d.kind != "app":
            signal.add_metric(key, float(bars))
        flight.add_metric(key, float(live.in_flight if live is not None else 0))
        sent.add_metric(key, float(live.sent_today if live is not None else d.sent_today))
        last = live.last_seen if live is not None else d.last_seen_at
        if last is not None:
            seen.add_metric(key, max(0.0, (now - last).total_seconds()))
    for kind in sorted({k for k, _ in counts} | {"agent", "app"}):
        online.add_metric([kind], float(counts.get((kind, True), 0)))
        registered.add_metric([kind], float(counts.get((kind, False), 0)))
    messages = GaugeMetricFamily("smsgw_messages", "Messages by status", labels=["status"])
    for status in Status:
        messages.add_metric([status.value], float(gauges["messages"].get(status.value, 0)))
    due = GaugeMetricFamily("smsgw_outbox_due_messages", "PENDING messages due now")
    due.add_metric([], float(gauges["due"]))
    oldest = GaugeMetricFamily(
        "smsgw_outbox_oldest_due_age_seconds", "How long the oldest due message has waited"
    )
    oldest.add_metric([], gauges["oldest_due_seconds"])
    deliveries = GaugeMetricFamily(
        "smsgw_webhook_deliveries", "Webhook deliveries by status (pending is the backlog)",
        labels=["status"],
    )  # fmt: skip
    for outcome in ("pending", "succeeded", "dead"):
        deliveries.add_metric([outcome], float(gauges["deliveries"].get(outcome, 0)))
    wakes = CounterMetricFamily("smsgw_wakes_sent", "FCM wake-ups sent by this node")
    wakes.add_metric([], float(hub.waker.wakes_sent))
    read = [online, registered, up, enabled, battery, signal, flight, sent, seen, messages,
            due, oldest, deliveries, wakes]  # fmt: skip
    return [*read, *_pool(hub), *hub.metrics.registry.collect()]


def _pool(hub: Hub) -> list[Metric]:
    """The PostgreSQL pool's connections (by duck type: asyncpg is an optional extra,
    so its driver's class is not imported here; SQLite has no pool)."""
    stats: Callable[[], tuple[int, int, int] | None] | None = getattr(
        hub.store.driver, "pool_stats", None
    )
    found = stats() if stats is not None else None
    if found is None:
        return []
    size, idle, most = found
    families: list[Metric] = []
    for name, text, value in (
        ("smsgw_store_pool_size", "PostgreSQL connections open in the pool", size),
        ("smsgw_store_pool_idle", "Of those, idle (not running a statement)", idle),
        ("smsgw_store_pool_max_size", "The most the pool opens (SMSGW_DB_POOL_SIZE)", most),
    ):
        family = GaugeMetricFamily(name, text)
        family.add_metric([], float(value))
        families.append(family)
    return families


async def _authorize(call: Call) -> None:
    token = call.hub.settings.metrics_token
    if token:
        scheme, _, given = call.request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "Bearer SMSGW_METRICS_TOKEN expected")
        # As bytes: compare_digest refuses a str with non-ASCII characters (a 500).
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            refusal = ApiError(401, "unauthorized", "Bearer SMSGW_METRICS_TOKEN expected")
            raise call.hub.auth.failures.refuse(client_address(call.request), refusal)
        return
    await call.hub.auth.client(call.request, Scope.ADMIN)


@api.route(
    "GET",
    "/metrics",
    tag="health",
    scope=None,
    security="Bearer SMSGW_METRICS_TOKEN, or an admin API key when it is unset",
    summary="Prometheus metrics: phones, outbox, messages, webhooks",
    responses={200: None, 401: ErrorOut, 403: ErrorOut},
)
async def metrics(call: Call) -> Response:
    await _authorize(call)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await _families(call.hub, utcnow())))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
