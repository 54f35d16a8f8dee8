"""The phones grid, live: server-sent events carrying the rows that changed.

Once a second the stream reads the phones as ``GET /devices/`` answers them, renders each
row, and sends only the rows whose HTML changed (``phone``) and the ids of phones that
are gone (``gone``); static/ui.js swaps them into the table. The page is never polled
whole, and an idle farm costs one read a second per open grid. A stream lasts at most
``STREAM_SECONDS`` and asks the browser to reconnect (EventSource does it by itself), so a
node can stop without waiting on dashboards, and a revoked session is noticed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from smsgw.api import devices
from smsgw.auth import Scope
from smsgw.ui.bridge import call
from smsgw.ui.page import TEMPLATES, Ui, sessions, view
from smsgw.ui.pages import day_stats, phone_rates

TICK_SECONDS = 1.0
STREAM_SECONDS = 60.0
RATES_SECONDS = 30.0  # the 24 h delivery rates move slowly: re-read them this often


def event(name: str, data: str) -> str:
    """One SSE event; every line of ``data`` gets its own ``data:`` prefix."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\n{lines}\n"


@view
async def phone_events(ui: Ui) -> Response:
    row = TEMPLATES.get_template("phone_row.html")

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        shown: dict[str, str] = {}
        rates: dict[str, dict[str, object]] = {}
        rates_at = 0.0
        end = time.monotonic() + STREAM_SECONDS
        while time.monotonic() < end and not ui.hub.draining:
            if await sessions(ui.request).current(ui.request) is None:
                yield event("signed-out", "")
                return
            if time.monotonic() - rates_at > RATES_SECONDS:
                rates, rates_at = phone_rates((await day_stats(ui)).by_device), time.monotonic()
            listed = (await call(ui, devices.list_devices)).items
            seen = set()
            for p in listed:
                seen.add(p.id)
                html = row.render(p=p, rate=rates.get(p.id), csrf=ui.who.session.csrf,
                                  can_admin=ui.who.principal.allows(Scope.ADMIN))  # fmt: skip
                if shown.get(p.id) != html:
                    shown[p.id] = html
                    yield event("phone", html)
            for gone in [i for i in shown if i not in seen]:
                del shown[gone]
                yield event("gone", gone)
            await asyncio.sleep(TICK_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
