"""Every stored secret the hub signs with, brought to the form the store's key says.

Which columns hold such secrets: ``hub_secrets.value``, ``webhooks.secret`` and
``webhooks.previous_secret``, ``routes.credentials`` (a JSON document), and
``webhooks.signing_key`` inside the documents of ``hub_settings`` (the SMSGate API's
settings). Each is written through ``Store.box`` and read through ``Store.dec.secret``
(``smsgw/secretbox.py``); the documents through the two helpers below.

``Store.open`` runs :meth:`Secrets.seal_secrets` before anything else reads a secret: a
value it cannot open stops the store from opening (the hub refuses to start, naming the
setting), and with a key every value still in clear, or sealed under
``SMSGW_SECRET_KEY_PREVIOUS``, is sealed again under the key, in one transaction. Each
rewrite is a compare-and-set on the value it read, so nodes starting together on one
PostgreSQL database do not undo each other (both seal the same plaintext).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smsgw.secretbox import SecretBox
from smsgw.store.operations import Operations
from smsgw.store.sql import Op, execute, fetch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecretsReport:
    """What one pass found: values rewritten, and values already as the key says."""

    rewritten: int
    kept: int


def _doc_secret(doc: Any) -> str | None:
    """The SMSGate API's ``webhooks.signing_key`` in a settings document, if any."""
    hooks = doc.get("webhooks") if isinstance(doc, dict) else None
    key = hooks.get("signing_key") if isinstance(hooks, dict) else None
    return key if isinstance(key, str) else None


def map_document(doc: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """``doc`` with its signing key passed through ``fn`` (seal or open); a copy, so the
    caller's document keeps its clear value."""
    key = _doc_secret(doc)
    if key is None:
        return doc
    return {**doc, "webhooks": {**doc["webhooks"], "signing_key": fn(key)}}


class Secrets(Operations):
    box: SecretBox

    async def seal_secrets(self, *, clear: bool = False) -> SecretsReport:
        """Rewrite every stored secret as the key says (``clear``: in clear, to stop using
        the key). Raises ``SecretKeyError`` if one cannot be opened."""
        to = SecretBox() if clear else self.box
        report = await self._driver.write(lambda: self._reseal(to))
        if report.rewritten:
            how = f"under key id {to.key_id}" if to.enabled else "in clear"
            log.warning("stored %d secret(s) %s", report.rewritten, how)
        return report

    def _reseal(self, to: SecretBox) -> Op[SecretsReport]:
        opened = self.box.open  # raises on a value it cannot open: nothing is written
        rewritten = kept = 0
        found = yield fetch("SELECT name, value FROM hub_secrets ORDER BY name")
        for name, value in found:
            if to.current(value):
                kept += 1
                continue
            rewritten += yield execute(
                "UPDATE hub_secrets SET value = $1 WHERE name = $2 AND value = $3",
                to.seal(opened(value)),
                name,
                value,
            )
        found = yield fetch("SELECT id, secret, previous_secret FROM webhooks ORDER BY id")
        for hook_id, secret, previous in found:
            if to.current(secret) and (previous is None or to.current(previous)):
                kept += 1
                continue
            rewritten += yield execute(
                "UPDATE webhooks SET secret = $1, previous_secret = $2 WHERE id = $3 "
                "AND secret = $4 AND COALESCE(previous_secret, '') = COALESCE($5::text, '')",
                to.seal(opened(secret)),
                None if previous is None else to.seal(opened(previous)),
                hook_id,
                secret,
                previous,
            )
        found = yield fetch("SELECT id, credentials FROM routes ORDER BY id")
        for route_id, sealed in found:
            if to.current(sealed):
                kept += 1
                continue
            rewritten += yield execute(
                "UPDATE routes SET credentials = $1 WHERE id = $2 AND credentials = $3",
                to.seal(opened(sealed)),
                route_id,
                sealed,
            )
        found = yield fetch("SELECT name, value FROM hub_settings ORDER BY name")
        for name, value in found:
            key = _doc_secret(json.loads(value))
            if key is None or to.current(key):
                kept += key is not None
                continue
            doc = map_document(json.loads(value), lambda k: to.seal(opened(k)))
            rewritten += yield execute(
                "UPDATE hub_settings SET value = $1 WHERE name = $2 AND value = $3",
                json.dumps(doc),
                name,
                value,
            )
        return SecretsReport(rewritten, kept)
