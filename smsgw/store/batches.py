"""Bulk sends, and the counts of what went where (``/stats``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Batch, Message, Stats
from smsgw.store.rows import MESSAGE_FIELDS
from smsgw.store.sql import Op, copy, execute, fetch, fetchrow, fetchval, read


class Batches(Operations):
    async def create_batch(self, batch: Batch, messages: list[Message]) -> None:
        """The batch and all its messages in one transaction."""
        await self._driver.write(lambda: self._create_batch(batch, messages))

    def _create_batch(self, batch: Batch, messages: list[Message]) -> Op[None]:
        # A batch id that exists raises UniqueViolation: nothing of the batch is written.
        yield execute(
            "INSERT INTO batches (id, name, total, rejected, created_at, kind, device_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            batch.id,
            batch.name,
            batch.total,
            batch.rejected,
            batch.created_at,
            batch.kind,
            batch.device_id,
        )
        if messages:
            yield copy("messages", MESSAGE_FIELDS, [rows.message_values(m) for m in messages])

    @read
    def get_batch(self, batch_id: str) -> Op[Batch | None]:
        """With ``by_status`` counted from its messages."""
        row = yield fetchrow("SELECT * FROM batches WHERE id = $1", batch_id)
        if row is None:
            return None
        counts = yield fetch(
            "SELECT status, count(*) FROM messages WHERE batch_id = $1 GROUP BY status",
            batch_id,
        )
        return rows.batch(row, {r[0]: r[1] for r in counts}, self.dec)

    @read
    def gauges(self, now: datetime) -> Op[dict[str, Any]]:
        """What /metrics shows of the database at one moment: messages by status, the
        outbox's due messages and the age of the oldest, webhook deliveries by status."""
        by_status = yield fetch("SELECT status, count(*) FROM messages GROUP BY status")
        due = yield fetchrow(
            "SELECT count(*), min(coalesce(next_attempt_at, created_at)) FROM messages "
            "WHERE status = 'PENDING' AND (next_attempt_at IS NULL OR next_attempt_at <= $1)",
            now,
        )
        deliveries = yield fetch("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
        oldest = self.dec.dt(due[1]) if due[1] is not None else None
        return {
            "messages": {r[0]: int(r[1]) for r in by_status},
            "due": int(due[0]),
            "oldest_due_seconds": (now - oldest).total_seconds() if oldest else 0.0,
            "deliveries": {r[0]: int(r[1]) for r in deliveries},
        }

    async def stats(self, since: datetime, until: datetime) -> Stats:
        """Counts over messages, inbound SMS and OTP codes created in [since, until)."""
        return await self._driver.read(lambda: self._stats(since, until), snapshot=True)

    def _stats(self, since: datetime, until: datetime) -> Op[Stats]:
        in_range = "created_at >= $1 AND created_at < $2"
        found = yield fetch(
            f"SELECT status, count(*) FROM messages WHERE {in_range} GROUP BY status",
            since,
            until,
        )
        by_status: dict[str, int] = {r[0]: r[1] for r in found}
        by_day: dict[str, dict[str, int]] = {}
        found = yield fetch(
            f"SELECT {self.d.utc_day('created_at')}, status, count(*) FROM messages "
            f"WHERE {in_range} GROUP BY 1, 2",
            since,
            until,
        )
        for day, status, n in found:
            by_day.setdefault(day, {})[status] = n
        by_hour: dict[str, dict[str, int]] = {}
        found = yield fetch(
            f"SELECT {self.d.utc_hour('created_at')}, status, count(*) FROM messages "
            f"WHERE {in_range} GROUP BY 1, 2",
            since,
            until,
        )
        for hour, status, n in found:
            by_hour.setdefault(hour, {})[status] = n
        failovers = yield fetchval(
            "SELECT count(*) FROM message_attempts "
            "WHERE attempt > 1 AND offered_at >= $1 AND offered_at < $2",
            since,
            until,
        )
        by_device: dict[str, dict[str, int]] = {}
        found = yield fetch(
            f"SELECT device_id, status, count(*) FROM messages WHERE {in_range} "
            "AND device_id IS NOT NULL AND status != 'PENDING' GROUP BY 1, 2",
            since,
            until,
        )
        for device, status, n in found:
            by_device.setdefault(device, {})[status] = n
        found = yield fetch(
            "SELECT coalesce(error_code, 'unknown'), count(*) FROM messages "
            f"WHERE {in_range} AND status = 'FAILED' GROUP BY 1",
            since,
            until,
        )
        reasons: dict[str, int] = {r[0]: r[1] for r in found}
        inbound = yield fetchval(
            f"SELECT count(*) FROM inbound_messages WHERE {in_range}", since, until
        )
        otp = yield fetchrow(
            f"SELECT count(*), count(verified_at) FROM otp_codes WHERE {in_range}", since, until
        )
        # Messages routes own (docs/routes.md), by route name (its id once removed).
        by_route: dict[str, dict[str, float]] = {}
        found = yield fetch(
            "SELECT COALESCE(r.name, m.route_id), m.status, count(*), COALESCE(SUM(m.cost), 0) "
            "FROM messages m LEFT JOIN routes r ON r.id = m.route_id "
            "WHERE m.created_at >= $1 AND m.created_at < $2 AND m.route_id IS NOT NULL "
            "AND m.status != 'PENDING' GROUP BY 1, 2",
            since,
            until,
        )
        for name, status, n, cost in found:
            entry = by_route.setdefault(name, {"cost": 0.0})
            entry[status] = n
            entry["cost"] = round(entry["cost"] + float(cost), 6)
        return Stats(
            by_status,
            by_day,
            by_hour,
            by_device,
            reasons,
            inbound,
            otp[0],
            otp[1],
            failovers,
            by_route,
        )
