"""What phones receive: inbound SMS, and the opt-out list their STOPs (and the API) keep."""

from __future__ import annotations

from smsgw.clock import new_id
from smsgw.events import EventType, inbound_data
from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Inbound, InboundFilter, OptOut
from smsgw.store.sql import Op, Params, execute, fetch, read, write


class InboundMessages(Operations):
    async def store_inbound(self, inbound: Inbound) -> bool:
        """Store once per (device, local_id); False when it was a duplicate."""
        inbound.id = inbound.id or new_id()
        return await self._driver.write(lambda: self._store_inbound(inbound))

    def _store_inbound(self, i: Inbound) -> Op[bool]:
        n = yield execute(
            "INSERT INTO inbound_messages (id, device_id, local_id, sender, body, "
            "sim_slot, received_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (device_id, local_id) DO NOTHING",
            i.id,
            i.device_id,
            i.local_id,
            i.sender,
            i.body,
            i.sim_slot,
            i.received_at,
            i.created_at,
        )
        if n != 1:
            return False
        yield from self._event(EventType.SMS_RECEIVED, i.id, inbound_data(i), i.created_at)
        return True

    @read
    def list_inbound(self, flt: InboundFilter) -> Op[list[Inbound]]:
        p = Params()
        where = self._page_where(
            p, [("sender", flt.sender), ("device_id", flt.device_id)], flt.since, flt.after
        )
        found = yield fetch(
            f"SELECT * FROM inbound_messages {where} "
            f"ORDER BY created_at DESC, id DESC LIMIT {p(flt.limit)}",
            *p.values,
        )
        return [rows.inbound(r, self.dec) for r in found]

    # -- opt-out ----------------------------------------------------------------------

    @write
    def add_opt_out(self, entry: OptOut) -> Op[bool]:
        """False if the number was already opted out (the first entry stays)."""
        n = yield execute(
            "INSERT INTO opt_outs (number, source, reason, created_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (number) DO NOTHING",
            entry.number,
            entry.source,
            entry.reason,
            entry.created_at,
        )
        return bool(n == 1)

    @write
    def remove_opt_out(self, number: str) -> Op[bool]:
        n = yield execute("DELETE FROM opt_outs WHERE number = $1", number)
        return bool(n == 1)

    @read
    def list_opt_outs(self, *, after: str | None, limit: int) -> Op[list[OptOut]]:
        """Ordered by number; ``after`` is the last number of the previous page."""
        found = yield fetch(
            "SELECT * FROM opt_outs WHERE number > $1 ORDER BY number LIMIT $2",
            after or "",
            limit,
        )
        return [rows.opt_out(r, self.dec) for r in found]
