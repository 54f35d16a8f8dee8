"""Request ids on responses and log lines; JSON log lines (smsgw/logs.py)."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest

from smsgw import logs
from tests.app_farm import Apps
from tests.harness import HubServer


async def test_every_response_carries_a_request_id(hub: HubServer, api: httpx.AsyncClient) -> None:
    first = await api.get("/health")
    second = await api.get("/sms/nope")  # an error answer too
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and ids[0] != ids[1]
    echoed = await api.get("/health", headers={"X-Request-Id": "client-42.a:b"})
    assert echoed.headers["x-request-id"] == "client-42.a:b"
    # An id that could break a log line or a header is replaced, not echoed.
    bad = await api.get("/health", headers={"X-Request-Id": "x" * 65})
    assert bad.headers["x-request-id"] != "x" * 65
    evil = await api.get("/health", headers={"X-Request-Id": 'a" b{}'})
    assert re.fullmatch(r"[0-9a-f]{16}", evil.headers["x-request-id"])


async def test_log_lines_of_a_request_carry_its_id(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(logs._WithRequestId())
    app = await apps.add(start=False)
    with caplog.at_level(logging.INFO, logger="smsgw"):
        r = await app.register()  # the hub logs the new app phone while answering
    rid = r.headers["x-request-id"]
    mine = [rec.getMessage() for rec in caplog.records if getattr(rec, "request_id", None) == rid]
    assert any("registered" in m for m in mine), [
        (rec.getMessage(), getattr(rec, "request_id", None)) for rec in caplog.records
    ]


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info", "json")
    token = logs.request_id.set("req-1")
    try:
        logging.getLogger("smsgw.test").warning("hello %s", "there")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("smsgw.test").exception("failed")
    finally:
        logs.request_id.reset(token)
        logs.setup("warning", "text")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "hello there" and lines[0]["request_id"] == "req-1"
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "smsgw.test"
    assert "ValueError: boom" in lines[1]["exception"]
