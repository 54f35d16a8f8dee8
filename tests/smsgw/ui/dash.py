"""A signed-in dashboard user over real HTTP (httpx with a cookie jar)."""

from __future__ import annotations

import re

import httpx

from tests.harness import HubServer

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sign_in(hub: HubServer, key: str, *, expect: int = 303) -> httpx.AsyncClient:
    """A client whose cookie jar holds a session for ``key`` (closed by the caller)."""
    client = httpx.AsyncClient(base_url=hub.url, timeout=15.0)
    page = await client.get("/ui/sign-in")
    assert page.status_code == 200
    r = await client.post("/ui/sign-in", data={"csrf": csrf_of(page.text), "key": key})
    assert r.status_code == expect, r.text
    return client


async def post_form(
    client: httpx.AsyncClient, page: str, action: str, **fields: str
) -> httpx.Response:
    """Submit a form as a browser would: the CSRF token from ``page``, then the post."""
    shown = await client.get(page)
    assert shown.status_code == 200, shown.text
    return await client.post(action, data={"csrf": csrf_of(shown.text), **fields})
