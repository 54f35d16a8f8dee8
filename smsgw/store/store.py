"""``Store``: every durable fact of the hub, one implementation over either engine.

The operations are written once, grouped by what they change (``messages.py``,
``devices.py``, ``access.py``, ``templates.py``, ``inbound.py``, ``batches.py``,
``webhooks.py``, ``smsgate.py``, ``routes.py``); a driver (``sqlite.py`` or
``postgres.py``) runs them.
Nothing outside ``smsgw/store/`` may assume a particular engine.
"""

from __future__ import annotations

from dataclasses import replace

from smsgw.events import Subscriptions
from smsgw.secretbox import SecretBox
from smsgw.store.access import Access
from smsgw.store.batches import Batches
from smsgw.store.devices import Devices
from smsgw.store.inbound import InboundMessages
from smsgw.store.messages import Messages
from smsgw.store.routes import Routes
from smsgw.store.secrets import Secrets
from smsgw.store.smsgate import SmsgateRecords
from smsgw.store.sql import Driver, Op, fetch
from smsgw.store.templates import Templates
from smsgw.store.webhooks import Webhooks


class Store(
    Messages,
    Devices,
    Access,
    Templates,
    InboundMessages,
    Batches,
    Webhooks,
    SmsgateRecords,
    Secrets,
    Routes,
):
    """Async storage on the engine ``driver`` speaks to (``SqliteStore``, ``PostgresStore``).

    ``box`` seals the secrets the hub signs with (``SMSGW_SECRET_KEY``); without one
    they are stored in clear."""

    def __init__(self, driver: Driver, box: SecretBox | None = None) -> None:
        self._driver = driver
        self.d = driver.dialect
        self.box = box or SecretBox()
        # The engine's decoder, with this store's key for the secret columns.
        self.dec = replace(self.d.decoder, secret=self.box.open)
        # Who wants which event, kept in memory so a transition that nobody listens to
        # writes and reads nothing extra. Other nodes change webhooks too: the driver
        # says when to look again (PostgreSQL's NOTIFY).
        self._subs = Subscriptions()

    @property
    def driver(self) -> Driver:
        return self._driver

    async def open(self) -> None:
        """Connect, apply pending migrations, and check (and seal) the stored secrets:
        ``SecretKeyError`` when one cannot be opened with the store's key."""
        await self._driver.open()
        try:
            await self.seal_secrets()
        except BaseException:
            await self._driver.close()
            raise
        # Listening before the first load: a change made in between is heard, not lost.
        await self._driver.watch(self.reload_subscriptions)
        await self.reload_subscriptions()

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; returns what was applied."""
        return await self._driver.migrate()

    async def close(self) -> None:
        await self._driver.close()

    async def ping(self) -> None:
        """Raise if the database does not answer (readiness)."""
        await self._driver.ping()

    async def reload_subscriptions(self) -> None:
        found = await self._driver.read(self._subscriptions)
        self._subs.load(found)

    def _subscriptions(self) -> Op[list[tuple[str, str, list[str], bool, str | None]]]:
        found = yield fetch("SELECT id, url, events, enabled, device_id FROM webhooks")
        return [(r[0], r[1], r[2].split(), self.dec.flag(r[3]), r[4]) for r in found]
