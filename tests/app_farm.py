"""Stock-app phones on a test hub: ``tests/fakes/smsgate_app.py`` instances registered
with an app token, closed at the end of the test (the ``apps`` fixture of tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fakes.smsgate_app import FakeApp
from tests.harness import HubServer

MOBILE = "/api/mobile/v1"


async def app_token(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await api.post("/devices/app-tokens", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


class Apps:
    """Fake apps on the hub, closed at the end of the test."""

    def __init__(self, hub: HubServer, api: httpx.AsyncClient) -> None:
        self.hub, self.api = hub, api
        self.apps: list[FakeApp] = []
        self._token: str | None = None

    async def token(self) -> str:
        if self._token is None:
            self._token = (await app_token(self.api, name="farm"))["token"]
        return self._token

    async def add(self, *, start: bool = True, base: str | None = None, **kw: Any) -> FakeApp:
        if "private_token" not in kw and "code" not in kw:
            kw["private_token"] = await self.token()
        app = FakeApp(base or self.hub.url + MOBILE, **kw)
        self.apps.append(app)
        if start:
            await app.start()
        return app

    async def close(self) -> None:
        for app in self.apps:
            await app.close()
