"""Scraping a live hub's ``GET /metrics`` in tests: the text parsed as Prometheus parses it,
and the HTTP middleware (smsgw/httpmetrics.py) on the hub under test."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

import tests.harness
from smsgw.httpmetrics import HttpMetrics, middleware

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape_text(api: httpx.AsyncClient) -> str:
    r = await api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


async def scrape(api: httpx.AsyncClient) -> Samples:
    return samples(await scrape_text(api))


def with_http_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hubs started by ``HubServer`` from now on count their HTTP requests: the
    middleware is added innermost, where ``create_app`` is to list it, unless
    ``create_app`` already does (then this changes nothing)."""
    create = tests.harness.create_app

    def create_app(*args: Any, **kwargs: Any) -> Starlette:
        app = create(*args, **kwargs)
        if not any(m.cls is HttpMetrics for m in app.user_middleware):
            app.user_middleware.append(middleware(app.state.hub))
        return app

    monkeypatch.setattr(tests.harness, "create_app", create_app)
