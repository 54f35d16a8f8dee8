"""The dashboard in a real browser (Chromium, Playwright) against a real hub with
simulated phones: sign in, watch a phone come online without a reload, send a message and
see it reach DELIVERED on its page, disable a phone, replay a webhook delivery, a wrong
key refused, a form without its CSRF token refused.

``SMSGW_UPDATE_SCREENSHOTS=1`` writes the overview and the phones grid to docs/img/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.harness import ADMIN_KEY, Farm, HubServer, wait_for
from tests.receiver import Receiver
from tests.smsgw.ui.browser import chromium

DOCS_IMG = Path(__file__).resolve().parents[3] / "docs" / "img"
pytestmark = pytest.mark.hub_settings(
    webhook_poll_interval=0.05, webhook_retry_schedule=[0.2], webhook_timeout=1.0
)


async def signed_in(page: Page, hub: HubServer) -> None:
    await page.goto(f"{hub.url}/ui/phones")
    await expect(page).to_have_url(re.compile(r"/ui/sign-in\?next=/ui/phones$"))
    await page.fill("input[name=key]", "sk_000000000000_wrong")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("invalid or revoked API key")
    await page.fill("input[name=key]", ADMIN_KEY)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{hub.url}/ui/phones")


async def test_the_dashboard_in_a_browser(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, tmp_path: Path
) -> None:
    receiver = await Receiver(mode="fail").start()
    r = await api.post("/webhooks", json={"url": receiver.url, "events": ["message.delivered"]})
    receiver.secrets.append(r.json()["secret"])
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            await signed_in(page, hub)

            # A phone comes online while the grid is open: its row appears, no reload.
            await expect(page.locator("#phones tbody tr")).to_have_count(0)
            phone = await farm.add("pixel-7", deliver=True)
            row = page.locator(f"#phone-{phone.device_id}")
            await expect(row).to_be_visible(timeout=10_000)
            await expect(row.locator(".state")).to_have_text("online")

            # Send: the live preview, then the result, then the message's own page.
            await page.click("nav >> text=Send")
            await page.fill("input[name=to]", "+12025550123")
            await page.fill("textarea[name=message]", "Hello from the dashboard ✓")
            await expect(page.locator("#preview-figures")).to_contain_text("UCS-2")
            await page.click("#send button[type=submit]")
            await expect(page.locator("#result")).to_contain_text(re.compile("SENT|DELIVERED"))
            await page.click("#result a >> nth=0")
            await wait_for(lambda: bool(phone.backend.transmitted), what="the phone sent it")
            for _ in range(50):  # the carrier's report arrives after SENT
                if "DELIVERED" in (await page.locator("#status").text_content() or ""):
                    break
                await page.wait_for_timeout(200)
                await page.reload()
            await expect(page.locator("#status")).to_have_text("DELIVERED")
            await expect(page.locator(".timeline")).to_contain_text("offered to")

            # The webhook refused, the delivery is dead: replay it from its webhook's page.
            async def dead() -> bool:
                hooks = (await api.get("/webhooks")).json()["items"]
                got = await api.get(f"/webhooks/{hooks[0]['id']}/deliveries?status=dead")
                return bool(got.json()["items"])

            await wait_for(dead, what="a dead delivery")
            receiver.mode = "ok"
            await page.click("nav >> text=Webhooks")
            await page.click(f"text={receiver.url}")
            await page.select_option("select[name=status]", "dead")
            await page.click("form.search button")
            await page.click("text=Replay")
            await expect(page.locator(".notice")).to_contain_text("queued again")
            await wait_for(lambda: len(receiver.received) == 1, what="the replayed delivery")

            # Two more phones for a fuller picture, one of them gone offline.
            await page.click("nav >> text=Phones")
            await farm.add("galaxy-a12", signal=2, battery=34)
            gone = await farm.add("modem-box", signal=1)
            await gone.client.stop()
            await expect(page.locator(f"#phone-{gone.device_id} .state")).to_have_text(
                "offline", timeout=10_000
            )

            # Overview and the grid, for the docs.
            await page.click("nav >> text=Overview")
            await expect(page.locator("#online-agent")).to_have_text("2")
            await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            if os.environ.get("SMSGW_UPDATE_SCREENSHOTS") == "1":
                await page.screenshot(path=str(DOCS_IMG / "dashboard-overview.png"), full_page=True)

            # Disable the phone from the grid; the row says so.
            await page.click("nav >> text=Phones")
            await row.locator("button", has_text="Disable").click()
            await expect(page.locator(".notice")).to_contain_text("disabled")
            assert (await api.get(f"/devices/{phone.device_id}")).json()["enabled"] is False
            await page.click("nav >> text=Phones")
            await expect(row.locator(".state")).to_contain_text("disabled")
            if os.environ.get("SMSGW_UPDATE_SCREENSHOTS") == "1":
                await page.screenshot(path=str(DOCS_IMG / "dashboard-phones.png"), full_page=True)

            # A form whose CSRF token was taken out is refused, and nothing changes.
            enable = row.locator("form")
            await enable.locator("input[name=csrf]").evaluate("e => e.remove()")
            await enable.locator("button").click()
            await expect(page.locator(".error")).to_contain_text("csrf_failed")
            assert (await api.get(f"/devices/{phone.device_id}")).json()["enabled"] is False

            assert errors == []
            # Nothing was loaded from another host.
            assert all(u.startswith(hub.url) for u in requests), [
                u for u in requests if not u.startswith(hub.url)
            ]
    finally:
        await receiver.stop()


async def test_swagger_ui_loads_from_the_hub_only(hub: HubServer) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        await page.goto(f"{hub.url}/docs")
        await expect(page.locator(".swagger-ui .title")).to_contain_text("smsgw", timeout=15_000)
        await expect(page.get_by_text("/sms/dispatch", exact=True).first).to_be_visible()
        assert requests and all(u.startswith(hub.url) for u in requests), requests
