"""Routes beyond phones (docs/routes.md): the provider accounts, and the compare-and-sets
that hand a message to one and follow it to a final status.

Ownership is one rule for phones and routes: a message belongs to whoever moved it from
PENDING to QUEUED. A phone does it with ``accept`` (which matches its ``device_id`` and
``attempt``), a route with :meth:`Routes.claim_for_route`, which clears ``device_id`` and
raises ``attempt``: a phone's late accept of an offer that ran out can then match
nothing, and a route's claim of a message a phone accepted matches nothing either (it is
no longer PENDING). The database decides, on every node.

A route's reports move a message forward only, by the same rules as a phone's
(``rules.py``): QUEUED -> SENT -> DELIVERED, FAILED from QUEUED or SENT; a final status
never changes. So duplicate and out-of-order callbacks leave what one in order would.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from smsgw.events import EventType
from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Conflict, Message, Route, Status
from smsgw.store.rows import MESSAGE_COLUMNS, Row
from smsgw.store.sql import (
    Op,
    Params,
    UniqueViolation,
    execute,
    fetch,
    fetchrow,
    fetchval,
    read,
    write,
)

_UPDATABLE = frozenset(
    {
        "name",
        "enabled",
        "credentials",
        "sender",
        "priority",
        "policy",
        "api_base_url",
        "price_per_segment",
        "currency",
    }
)
ROUTE_REMOVED = "route_removed"
ROUTE_UNKNOWN = "route_unknown"


def route_device(route_id: str) -> str:
    """What a route's attempt rows hold as ``device_id`` (a NOT NULL column since 0001)."""
    return f"route:{route_id}"


class Routes(Operations):
    # -- the routes themselves -----------------------------------------------------------

    @write
    def create_route(self, route: Route) -> Op[None]:
        """Raises ``Conflict`` when the name is taken."""
        r = route
        try:
            yield execute(
                "INSERT INTO routes (id, kind, name, enabled, credentials, sender, priority, "
                "policy, api_base_url, price_per_segment, currency, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                r.id,
                r.kind,
                r.name,
                r.enabled,
                self.box.seal(json.dumps(r.credentials)),
                r.sender,
                r.priority,
                json.dumps(r.policy),
                r.api_base_url,
                r.price_per_segment,
                r.currency,
                r.created_at,
                r.updated_at,
            )
        except UniqueViolation:
            raise Conflict(f"a route named {r.name!r} exists") from None

    @read
    def get_route(self, route_id: str) -> Op[Route | None]:
        row = yield fetchrow("SELECT * FROM routes WHERE id = $1", route_id)
        return rows.route(row, self.dec) if row else None

    @read
    def get_route_by_name(self, name: str) -> Op[Route | None]:
        row = yield fetchrow("SELECT * FROM routes WHERE name = $1", name)
        return rows.route(row, self.dec) if row else None

    @read
    def list_routes(self) -> Op[list[Route]]:
        found = yield fetch("SELECT * FROM routes ORDER BY priority DESC, name")
        return [rows.route(r, self.dec) for r in found]

    @write
    def update_route(self, /, route_id: str, now: datetime, **fields: Any) -> Op[Route | None]:
        """Set any of ``_UPDATABLE``; raises ``Conflict`` when the new name is taken."""
        if unknown := set(fields) - _UPDATABLE:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = dict(fields)
        if "credentials" in values:
            values["credentials"] = self.box.seal(json.dumps(values["credentials"]))
        if "policy" in values:
            values["policy"] = json.dumps(values["policy"])
        if "enabled" in values:
            values["enabled"] = bool(values["enabled"])
        p = Params(route_id, now)
        # Column names come from the allow-list above.
        sets = "".join(f", {k} = {p(v)}" for k, v in values.items())
        try:
            row = yield fetchrow(
                f"UPDATE routes SET updated_at = $2{sets} WHERE id = $1 RETURNING *", *p.values
            )
        except UniqueViolation:
            raise Conflict(f"a route named {fields.get('name')!r} exists") from None
        return rows.route(row, self.dec) if row else None

    @write
    def delete_route(self, route_id: str, now: datetime) -> Op[bool]:
        """Remove the route. Messages the caller bound to it and no one sent yet fail
        ``route_removed`` (no other way out was asked for); what it already owns keeps
        its record (its callbacks can no longer be verified, so it stays as it is)."""
        gone = yield execute("DELETE FROM routes WHERE id = $1", route_id)
        if not gone:
            return False
        failed: list[Row] = yield fetch(
            self._returning(
                "UPDATE messages SET status = 'FAILED', error_code = $2, "
                "error = 'the route this message was bound to was removed', failed_at = $1, "
                "updated_at = $1, lease_until = NULL WHERE route_id = $3 "
                "AND status = 'PENDING' RETURNING",
                EventType.MESSAGE_FAILED,
            ),
            now,
            ROUTE_REMOVED,
            route_id,
        )
        for r in failed:
            yield from self._message_event(EventType.MESSAGE_FAILED, r, now)
        return True

    # -- what a route may take, and taking it -------------------------------------------

    @read
    def due_for_routes(
        self, now: datetime, created_before: datetime, limit: int
    ) -> Op[list[Message]]:
        """PENDING messages a route may take now: bound to a route, or created before
        ``created_before`` (the policies' shortest wait); not on a live offer to a
        phone, retry time reached, not pinned to a phone, nothing only an app phone
        can send. The policy of each route decides among them (``route_policy.py``)."""
        found = yield fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE status = 'PENDING' "
            "AND (route_id IS NOT NULL OR created_at <= $2) "
            "AND (lease_until IS NULL OR lease_until <= $1) "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= $1) "
            "AND pinned_device_id IS NULL AND data_port IS NULL AND NOT encrypted "
            "AND expires_at > $1 ORDER BY priority DESC, created_at, id LIMIT $3",
            now,
            created_before,
            limit,
        )
        return [rows.message(r, self.dec) for r in found]

    @write
    def claim_for_route(self, message_id: str, route_id: str, now: datetime) -> Op[bool]:
        """CAS: PENDING with no live offer (and not bound to another route) -> QUEUED,
        owned by the route: ``device_id`` NULL and ``attempt + 1``, so the accept of an
        offer that ran out matches nothing afterwards. Writes the attempt row and the
        ``message.queued`` event as ``accept`` does."""
        row = yield fetchrow(
            self._returning(
                "UPDATE messages SET status = 'QUEUED', route_id = $2, device_id = NULL, "
                "attempt = attempt + 1, lease_until = NULL, queued_at = $3, updated_at = $3, "
                "route_message_id = NULL WHERE id = $1 AND status = 'PENDING' "
                "AND (lease_until IS NULL OR lease_until <= $3) "
                "AND (route_id IS NULL OR route_id = $2) AND pinned_device_id IS NULL "
                "RETURNING",
                EventType.MESSAGE_QUEUED,
            ),
            message_id,
            route_id,
            now,
        )
        if row is None:
            return False
        attempt = row["attempt"]
        if attempt > 1:  # the phone's offer that ran out ends here, if nobody ended it
            yield self._end_attempt(message_id, attempt - 1, "expired", now)
        yield execute(
            "INSERT INTO message_attempts (message_id, attempt, device_id, route_id, "
            "offered_at, accepted_at) VALUES ($1, $2, $3, $4, $5, $5)",
            message_id,
            attempt,
            route_device(route_id),
            route_id,
            now,
        )
        yield from self._message_event(EventType.MESSAGE_QUEUED, row, now)
        return True

    # -- the route's answers ---------------------------------------------------------------

    @write
    def route_accepted(
        self,
        message_id: str,
        route_id: str,
        route_message_id: str,
        now: datetime,
        *,
        sent: bool,
        cost: float | None = None,
        currency: str | None = None,
    ) -> Op[bool]:
        """The provider's synchronous acceptance: its id is recorded (callbacks name it),
        and with ``sent`` (a provider with no callbacks) the message is SENT now. A
        callback that overtook this answer may already have moved it on: only the id
        and the cost are then written. A message already FAILED (``route_unknown``)
        stays as it is."""
        row = yield fetchrow(
            "UPDATE messages SET route_message_id = $3, cost = COALESCE($4, cost), "
            "currency = COALESCE($5, currency), updated_at = $6 WHERE id = $1 "
            "AND route_id = $2 AND device_id IS NULL AND status IN ('QUEUED', 'SENT', 'DELIVERED') "
            "AND (route_message_id IS NULL OR route_message_id = $3) RETURNING status",
            message_id,
            route_id,
            route_message_id,
            cost,
            currency,
            now,
        )
        if row is None:
            return False
        if sent:
            yield from self._route_transition(
                "id = $2", message_id, route_id, Status.SENT, now, None, None, None, None
            )
        return True

    @write
    def route_refused(
        self,
        message_id: str,
        route_id: str,
        now: datetime,
        *,
        error_code: str,
        error: str,
        retry_at: datetime | None,
    ) -> Op[Status | None]:
        """The provider refused the message (nothing was sent). With ``retry_at`` (a
        transient refusal: throttled, provider down) it is PENDING again: bound to the
        route still if the caller forced it, else free for phones and routes alike;
        otherwise FAILED with the provider's code. None if the route did not hold it."""
        current = (
            "WHERE id = $1 AND route_id = $2 AND device_id IS NULL AND status = 'QUEUED' "
            "AND route_message_id IS NULL"
        )
        if retry_at is not None:
            row = yield fetchrow(
                "UPDATE messages SET status = 'PENDING', queued_at = NULL, "
                "route_id = CASE WHEN route_forced THEN route_id ELSE NULL END, "
                "next_attempt_at = $3, error_code = $4, error = $5, updated_at = $6 "
                f"{current} RETURNING attempt",
                message_id,
                route_id,
                retry_at,
                error_code,
                error,
                now,
            )
            status = Status.PENDING
        else:
            row = yield fetchrow(
                self._returning(
                    "UPDATE messages SET status = 'FAILED', error_code = $4, error = $5, "
                    f"failed_at = $6, updated_at = $6, next_attempt_at = $3 {current} "
                    "RETURNING",
                    EventType.MESSAGE_FAILED,
                ),
                message_id,
                route_id,
                None,
                error_code,
                error,
                now,
            )
            status = Status.FAILED
        if row is None:
            return None
        outcome = "failed_retryable" if retry_at is not None else "failed"
        yield self._end_attempt(message_id, row["attempt"], outcome, now, error_code, error)
        if status is Status.FAILED:
            yield from self._message_event(EventType.MESSAGE_FAILED, row, now)
        return status

    @write
    def route_report(
        self,
        route_id: str,
        route_message_id: str,
        status: Status,
        now: datetime,
        *,
        error_code: str | None = None,
        error: str | None = None,
        cost: float | None = None,
        currency: str | None = None,
    ) -> Op[bool]:
        """A delivery callback (SENT, DELIVERED or FAILED) for the provider's id: applied
        only if it moves the message forward. Returns whether anything changed."""
        changed = yield from self._route_transition(
            "route_message_id = $2",
            route_message_id,
            route_id,
            status,
            now,
            error_code,
            error,
            cost,
            currency,
        )
        return changed

    def _route_transition(
        self,
        which: str,
        key: str,
        route_id: str,
        status: Status,
        now: datetime,
        error_code: str | None,
        error: str | None,
        cost: float | None,
        currency: str | None,
    ) -> Op[bool]:
        # ``which`` is one of two fixed texts (by message id or by the provider's id);
        # $2 is its value, the other values follow. QUEUED -> SENT; QUEUED or SENT ->
        # DELIVERED (a delivery implies sent) or FAILED: the phones' rules (rules.py).
        args: list[Any] = [route_id, key, now, cost, currency]
        if status is Status.SENT:
            sets, allowed, event = (
                "sent_at = COALESCE(sent_at, $3)",
                "'QUEUED'",
                EventType.MESSAGE_SENT,
            )
        elif status is Status.DELIVERED:
            sets = (
                "delivered_at = $3, sent_at = COALESCE(sent_at, $3), "
                "error_code = NULL, error = NULL"
            )
            allowed, event = "'QUEUED', 'SENT'", EventType.MESSAGE_DELIVERED
        elif status is Status.FAILED:
            # PostgreSQL refuses a parameter no statement uses: these two only here.
            sets = "failed_at = $3, error_code = $6, error = $7"
            allowed, event = "'QUEUED', 'SENT'", EventType.MESSAGE_FAILED
            args += [error_code, error]
        else:
            raise ValueError(f"a route cannot report {status}")
        row = yield fetchrow(
            self._returning(
                f"UPDATE messages SET status = '{status.value}', {sets}, updated_at = $3, "
                "cost = COALESCE($4, cost), currency = COALESCE($5, currency) "
                f"WHERE route_id = $1 AND {which} AND device_id IS NULL "
                f"AND status IN ({allowed}) RETURNING",
                event,
            ),
            *args,
        )
        if row is None:
            if cost is not None:  # a price that arrives after the final status still counts
                yield execute(
                    f"UPDATE messages SET cost = $3, currency = COALESCE($4, currency) "
                    f"WHERE route_id = $1 AND {which} AND device_id IS NULL",
                    route_id,
                    key,
                    cost,
                    currency,
                )
            return False
        outcome = "failed" if status is Status.FAILED else "sent"
        yield self._end_attempt(row["id"], row["attempt"], outcome, now, error_code, error)
        yield from self._message_event(event, row, now)
        return True

    @write
    def fail_unanswered_route_sends(self, now: datetime, claimed_before: datetime) -> Op[list[str]]:
        """At most once (docs/routes.md): a message a route claimed before
        ``claimed_before`` with no answer from the provider recorded (the node crashed
        between the claim and the answer) may or may not have been sent. It is FAILED
        ``route_unknown`` rather than sent again. Returns their ids."""
        failed: list[Row] = yield fetch(
            self._returning(
                "UPDATE messages SET status = 'FAILED', error_code = $2, "
                "error = 'no answer from the provider was recorded: maybe sent, not retried', "
                "failed_at = $1, updated_at = $1 WHERE id IN (SELECT id FROM messages "
                "WHERE status = 'QUEUED' AND route_id IS NOT NULL AND device_id IS NULL "
                "AND route_message_id IS NULL AND queued_at <= $3"
                f"{self.d.skip_locked(order='id')}) "
                "AND status = 'QUEUED' AND route_message_id IS NULL RETURNING",
                EventType.MESSAGE_FAILED,
            ),
            now,
            ROUTE_UNKNOWN,
            claimed_before,
        )
        for r in failed:
            yield self._end_attempt(r["id"], r["attempt"], "failed", now, ROUTE_UNKNOWN)
            yield from self._message_event(EventType.MESSAGE_FAILED, r, now)
        return [r["id"] for r in failed]

    @read
    def route_cost_since(self, route_id: str, since: datetime) -> Op[float]:
        """What the route's messages claimed since ``since`` cost (its daily cap)."""
        total = yield fetchval(
            "SELECT COALESCE(SUM(cost), 0) FROM messages WHERE route_id = $1 "
            "AND queued_at >= $2 AND status != 'PENDING'",
            route_id,
            since,
        )
        return float(total)
