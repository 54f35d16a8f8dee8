"""Every route against every kind of credential (issue 21): the answers of one table,
``smsgw/access_table.py``, sent to a live hub; no route of the app without a row; and
docs/access.md equal to the table's rendering."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from smsgw.access_table import CREDENTIALS, KINDS, ROWS, Row, render
from smsgw.api import api
from smsgw.api.device_ws import PATH as DEVICE_SOCKET
from smsgw.app import create_app
from smsgw.app_phones import issue_app_token
from smsgw.clock import utcnow
from smsgw.config import Settings
from tests.harness import HubServer

ROOT = Path(__file__).resolve().parents[2]

# The limit on failed authentications would turn this test's hundreds of refusals into
# 429s (it has tests of its own); no agent built, so its download is a stable 404.
pytestmark = pytest.mark.hub_settings(
    auth_failure_limit=0, agent_pyz="/nonexistent/smsgw-agent.pyz"
)

EXPIRED_JWT_TTL = 1  # seconds: the shortest access token SMSGate's API issues


def routes_of_the_app() -> set[tuple[str, str]]:
    """(method, route) for every route a request can reach: the Starlette app's routes
    (the Api's endpoints among them; a GET route's implicit HEAD left out; a Mount as a
    GET of its prefix) and the agent's socket, which uvicorn hands to its own protocol."""
    app = create_app(Settings(database_url="memory://"))
    found = {("GET", DEVICE_SOCKET)}
    for route in app.routes:
        if isinstance(route, Mount):
            found.add(("GET", route.path))
        elif isinstance(route, Route):
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    declared = {(ep.method, ep.path) for ep in api.endpoints}
    assert declared <= found, "every endpoint of the Api is a route of the app"
    return found


def test_every_route_of_the_app_has_a_row_and_every_row_a_route() -> None:
    rows = [(r.method, r.route) for r in ROWS]
    assert len(rows) == len(set(rows)), "a route with two rows"
    routes = routes_of_the_app()
    assert sorted(routes - set(rows)) == [], "routes missing from smsgw/access_table.py"
    assert sorted(set(rows) - routes) == [], "rows of smsgw/access_table.py naming no route"
    assert len(CREDENTIALS) == len(KINDS) == len(ROWS[0].answers)


def test_the_documentation_is_the_table() -> None:
    written = (ROOT / "docs" / "access.md").read_text()
    assert written == render(), (
        "docs/access.md differs from smsgw/access_table.py: "
        "python -m smsgw.access_table > docs/access.md"
    )


async def credentials(hub: HubServer) -> dict[str, str | None]:
    """One secret of each kind, made through the API as a user would (the expired app
    token by the hub's own function, dated in the past: the API's shortest is a minute)."""
    secrets: dict[str, str | None] = {"none": None}
    async with hub.client() as admin:
        r = await admin.post(
            "/api/3rdparty/v1/auth/token", json={"scopes": ["all:any"], "ttl": EXPIRED_JWT_TTL}
        )
        assert r.status_code == 201, r.text
        secrets["expired JWT"] = r.json()["access_token"]
        issued = time.monotonic()
        r = await admin.post("/devices/register", json={"name": "agent", "hardware_id": "hw-a"})
        secrets["agent"] = r.json()["device_token"]
        r = await admin.post("/devices/app-tokens", json={"name": "access"})
        secrets["app token"] = r.json()["token"]
        auth = {"Authorization": f"Bearer {secrets['app token']}"}
        r = await admin.post("/api/mobile/v1/device", json={"name": "app"}, headers=auth)
        assert r.status_code == 201, r.text
        secrets["app phone"] = r.json()["token"]
        for scope in ("read", "send", "admin"):
            r = await admin.post("/keys", json={"name": scope, "scopes": [scope]})
            secrets[scope] = r.json()["key"]
        old = utcnow() - timedelta(minutes=2)
        secrets["expired app token"] = (await issue_app_token(hub.hub, "old", 60, old)).token
        r = await admin.post("/keys", json={"name": "revoked", "scopes": ["admin"]})
        revoked = r.json()
        assert (await admin.delete(f"/keys/{revoked['id']}")).status_code == 204
        secrets["revoked"] = revoked["key"]
    # An access token's exp is in whole seconds and checked against the clock's.
    await asyncio.sleep(max(0.0, issued + EXPIRED_JWT_TTL + 1.1 - time.monotonic()))
    assert set(secrets) == set(KINDS)
    return secrets


def headers_for(row: Row, secret: str | None) -> dict[str, str]:
    if secret is None:
        return {}
    if row.basic:
        return {"Authorization": "Basic " + base64.b64encode(f"x:{secret}".encode()).decode()}
    return {"Authorization": f"Bearer {secret}"}


async def answer(client: httpx.AsyncClient, hub: HubServer, row: Row, secret: str | None) -> int:
    headers = headers_for(row, secret)
    if row.route == DEVICE_SOCKET:
        url = hub.url.replace("http://", "ws://") + row.probe
        try:
            async with connect(url, additional_headers=headers):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code
    # Streamed: a granted stream (the app's events) answers its status and is left at once.
    async with client.stream(row.method, row.probe, json=row.body, headers=headers) as r:
        return r.status_code


async def test_every_route_answers_every_credential_as_the_table_says(hub: HubServer) -> None:
    secrets = await credentials(hub)
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=hub.url, timeout=15) as client:

        async def one(row: Row, kind: str) -> str | None:
            async with gate:
                got = await answer(client, hub, row, secrets[kind])
            want = row.answer(kind)
            return None if got == want else f"{row.method} {row.route} [{kind}]: {got}, not {want}"

        results = await asyncio.gather(*(one(row, kind) for row in ROWS for kind in KINDS))
        # Whatever the credential: an unknown path and an unserved method.
        for secret in secrets.values():
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            assert (await client.get("/nowhere", headers=headers)).status_code == 404
            assert (await client.delete("/health", headers=headers)).status_code == 405
    wrong = [r for r in results if r is not None]
    assert wrong == [], "\n".join(wrong)
