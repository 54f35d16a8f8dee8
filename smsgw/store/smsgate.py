"""What SMSGate's 3rd-party API keeps beside smsgw's own records (docs/smsgate-api.md).

Its message to many recipients is a batch of kind ``smsgate`` (one smsgw message per
recipient, so each is routed and failed over on its own); here are the reads that list
those batches by their aggregate state, the API's settings document, and the access
tokens revoked before they expire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Batch, Message
from smsgw.store.rows import MESSAGE_COLUMNS
from smsgw.store.rules import group_state_sql
from smsgw.store.secrets import map_document
from smsgw.store.sql import Op, Params, execute, fetch, fetchrow, fetchval, read, write

SMSGATE = "smsgate"


@dataclass(slots=True)
class GroupFilter:
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None  # the aggregate state, SMSGate's name
    device_id: str | None = None  # asked for, or sent through, this phone
    newest_first: bool = True
    limit: int = 50
    offset: int = 0


class SmsgateRecords(Operations):
    @read
    def get_group(self, group_id: str) -> Op[tuple[Batch, list[Message]] | None]:
        """A batch with its messages, in the order of the request's recipients."""
        return (yield from self._group(group_id))

    def _group(self, group_id: str) -> Op[tuple[Batch, list[Message]] | None]:
        row = yield fetchrow("SELECT * FROM batches WHERE id = $1", group_id)
        if row is None:
            return None
        found = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE batch_id = $1 ORDER BY created_at, id",
            group_id,
        )
        return rows.batch(row, {}, self.dec), [rows.message(r, self.dec) for r in found]

    @read
    def list_groups(self, f: GroupFilter) -> Op[tuple[list[tuple[Batch, list[Message]]], int]]:
        """A page of the API's messages and how many match in all (``X-Total-Count``)."""
        p = Params(SMSGATE)
        where = ["b.kind = $1"]
        if f.since is not None:
            where.append(f"b.created_at >= {p(f.since)}")
        if f.until is not None:
            where.append(f"b.created_at < {p(f.until)}")
        having = []
        if f.state is not None:
            having.append(f"{group_state_sql('m.status')} = {p(f.state)}")
        if f.device_id is not None:
            dev = p(f.device_id)
            having.append(
                f"(b.device_id = {dev} OR sum(CASE WHEN m.device_id = {dev} THEN 1 ELSE 0 END) > 0)"
            )
        grouped = (
            "SELECT b.id, b.created_at FROM batches b JOIN messages m ON m.batch_id = b.id "
            f"WHERE {' AND '.join(where)} GROUP BY b.id, b.created_at, b.device_id"
            + (f" HAVING {' AND '.join(having)}" if having else "")
        )
        total = yield fetchval(f"SELECT count(*) FROM ({grouped}) g", *p.values)
        order = "DESC" if f.newest_first else "ASC"
        page = yield fetch(
            f"{grouped} ORDER BY b.created_at {order}, b.id {order} "
            f"LIMIT {p(f.limit)} OFFSET {p(f.offset)}",
            *p.values,
        )
        if not page:
            return [], int(total)
        # The page's batches and all their messages in two reads, not one per message.
        ids = Params()
        listed = ", ".join(ids(r["id"]) for r in page)
        batch_rows = yield fetch(f"SELECT * FROM batches WHERE id IN ({listed})", *ids.values)
        message_rows = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE batch_id IN ({listed}) "
            "ORDER BY created_at, id",
            *ids.values,
        )
        batches = {r["id"]: rows.batch(r, {}, self.dec) for r in batch_rows}
        by_batch: dict[str, list[Message]] = {}
        for r in message_rows:
            by_batch.setdefault(r["batch_id"], []).append(rows.message(r, self.dec))
        groups = [(batches[r["id"]], by_batch.get(r["id"], [])) for r in page]
        return groups, int(total)

    # -- the API's settings document ------------------------------------------------------

    @write
    def hub_setting(self, name: str, default: dict[str, Any], now: datetime) -> Op[dict[str, Any]]:
        """The stored document ``name``; stores ``default`` first if there is none (two
        nodes asking at once agree on the first one stored). Its ``webhooks.signing_key``
        is sealed at rest (``smsgw/store/secrets.py``)."""
        yield execute(
            "INSERT INTO hub_settings (name, value, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            name,
            json.dumps(map_document(default, self.box.seal)),
            now,
        )
        value = yield fetchval("SELECT value FROM hub_settings WHERE name = $1", name)
        return map_document(dict(json.loads(value)), self.dec.secret)

    @write
    def put_hub_setting(self, name: str, value: dict[str, Any], now: datetime) -> Op[None]:
        yield execute(
            "INSERT INTO hub_settings (name, value, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            name,
            json.dumps(map_document(value, self.box.seal)),
            now,
        )

    # -- revoked access tokens --------------------------------------------------------------

    @write
    def revoke_token(self, jti: str, expires_at: datetime, now: datetime) -> Op[None]:
        """``jti`` no longer authenticates; tokens past their expiry are forgotten."""
        yield execute(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            jti,
            expires_at,
        )
        yield execute("DELETE FROM revoked_tokens WHERE expires_at < $1", now)

    @read
    def token_revoked(self, jti: str) -> Op[bool]:
        found = yield fetchval("SELECT 1 FROM revoked_tokens WHERE jti = $1", jti)
        return found is not None
