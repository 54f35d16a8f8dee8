"""The dashboard's pages: what the API's read endpoints answer, rendered.

Every list is one page of the API's own keyset pagination (``cursor``): a page reads at
most its limit of rows, however many the tables hold.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.responses import Response

from smsgw.api import devices, keys, messages, optouts, stats, templates, webhooks
from smsgw.api.models import (
    DeliveryQuery,
    InboundQuery,
    MessageQuery,
    OptOutQuery,
    TemplateQuery,
)
from smsgw.clock import utcnow
from smsgw.store import Status
from smsgw.ui import bridge
from smsgw.ui.bridge import call
from smsgw.ui.charts import last_day
from smsgw.ui.page import Ui, view

PAGE = 50


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def phone_rates(by_device: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per phone over the window: sent (left the phone), delivered, failed, and the
    delivery rate (DELIVERED of what left it) and success rate, as /stats defines them."""
    out: dict[str, dict[str, Any]] = {}
    for device, counts in by_device.items():
        sent, delivered = counts.get("SENT", 0), counts.get("DELIVERED", 0)
        failed = counts.get("FAILED", 0)
        out[device] = {
            "sent": sent + delivered,
            "delivered": delivered,
            "failed": failed,
            "delivery_rate": _rate(delivered, sent + delivered),
            "success_rate": _rate(sent + delivered, sent + delivered + failed),
        }
    return out


async def day_stats(ui: Ui) -> Any:
    now = utcnow()
    return await call(
        ui, stats.stats, body=stats.StatsQuery(**{"from": now - timedelta(hours=24), "to": now})
    )


@view
async def overview(ui: Ui) -> Response:
    now = utcnow()
    day = await day_stats(ui)
    phones = (await call(ui, devices.list_devices)).items
    kinds: dict[str, dict[str, int]] = {}
    for p in phones:
        row = kinds.setdefault(p.kind, {"online": 0, "offline": 0})
        row["online" if p.online else "offline"] += 1
    gauges = await ui.hub.store.gauges(now)  # the figures /metrics reports
    today = now.strftime("%Y-%m-%d")
    today_counts: dict[str, int] = {}
    for hour, counts in day.by_hour.items():
        if hour.startswith(today):
            for status, n in counts.items():
                today_counts[status] = today_counts.get(status, 0) + n
    return ui.render(
        "overview.html",
        kinds=kinds,
        day=day,
        today=today_counts,
        waiting=gauges["due"],
        oldest=gauges["oldest_due_seconds"],
        backlog=gauges["deliveries"].get("pending", 0),
        dead=gauges["deliveries"].get("dead", 0),
        chart=last_day(day.by_hour, now),
    )


@view
async def phones(ui: Ui) -> Response:
    listed = (await call(ui, devices.list_devices)).items
    rates = phone_rates((await day_stats(ui)).by_device)
    return ui.render("phones.html", phones=listed, rates=rates)


@view
async def phone(ui: Ui) -> Response:
    device = await call(ui, devices.get_device, device_id=ui.path("device_id"))
    rates = phone_rates((await day_stats(ui)).by_device)
    recent = await call(
        ui, messages.list_messages, body=MessageQuery(device_id=device.id, limit=20)
    )
    return ui.render("phone.html", p=device, rate=rates.get(device.id), recent=recent.items)


def _query(ui: Ui, names: tuple[str, ...]) -> dict[str, str]:
    q = ui.request.query_params
    return {n: q[n].strip() for n in names if q.get(n, "").strip()}


@view
async def message_list(ui: Ui) -> Response:
    search = _query(ui, ("recipient", "custom_id", "status", "device_id", "since", "cursor"))
    page = await call(
        ui, messages.list_messages, body=bridge.model(ui, MessageQuery, {**search, "limit": PAGE})
    )
    more = {k: v for k, v in search.items() if k != "cursor"}
    return ui.render(
        "messages.html", page=page, search=search, more=more, statuses=[s.value for s in Status]
    )


@view
async def message(ui: Ui) -> Response:
    msg = await call(ui, messages.get_message, message_id=ui.path("message_id"))
    sent = await ui.hub.store.subject_deliveries(msg.id)
    return ui.render(
        "message.html",
        m=msg,
        deliveries=[webhooks.delivery_out(d) for d in sent],
        cancellable=msg.status is Status.PENDING and bridge.allowed(ui, messages.cancel_message),
    )


@view
async def send_form(ui: Ui) -> Response:
    return ui.render("send.html", result=None, form={})


@view
async def inbox(ui: Ui) -> Response:
    search = _query(ui, ("from", "device_id", "cursor"))
    page = await call(
        ui, messages.list_inbound, body=bridge.model(ui, InboundQuery, {**search, "limit": PAGE})
    )
    opted = {i.sender for i in page.items if i.sender in ui.hub.opted_out}
    more = {k: v for k, v in search.items() if k != "cursor"}
    return ui.render("inbox.html", page=page, opted=opted, search=search, more=more)


@view
async def webhook_list(ui: Ui) -> Response:
    hooks = (await call(ui, webhooks.list_webhooks)).items
    return ui.render("webhooks.html", hooks=hooks)


@view
async def webhook(ui: Ui) -> Response:
    hook_id = ui.path("webhook_id")
    hook = await call(ui, webhooks.get_webhook, webhook_id=hook_id)
    search = _query(ui, ("status", "cursor"))
    page = await call(
        ui,
        webhooks.list_deliveries,
        body=bridge.model(ui, DeliveryQuery, {**search, "limit": PAGE}),
        webhook_id=hook_id,
    )
    more = {k: v for k, v in search.items() if k != "cursor"}
    return ui.render("webhook.html", hook=hook, page=page, search=search, more=more)


@view
async def key_list(ui: Ui) -> Response:
    return ui.render("keys.html", keys=(await call(ui, keys.list_keys)).items, created=None)


@view
async def template_list(ui: Ui) -> Response:
    found = await call(ui, templates.list_templates, body=TemplateQuery())
    return ui.render("templates.html", templates=found.items)


@view
async def opt_out_list(ui: Ui) -> Response:
    search = _query(ui, ("cursor",))
    page = await call(
        ui, optouts.list_opt_outs, body=bridge.model(ui, OptOutQuery, {**search, "limit": PAGE})
    )
    return ui.render("optouts.html", page=page)
