"""Message templates, and one-time passwords (a code, its SMS and its attempts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smsgw.events import EventType, otp_data
from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import Conflict, Message, Otp, Template
from smsgw.store.sql import Op, Params, UniqueViolation, execute, fetch, fetchrow, read, write

_UPDATABLE = frozenset({"name", "body", "category", "active"})


class Templates(Operations):
    # -- templates --------------------------------------------------------------------

    @write
    def create_template(self, template: Template) -> Op[None]:
        """Raises ``Conflict`` when the name is taken."""
        t = template
        try:
            yield execute(
                "INSERT INTO templates (id, name, body, category, active, usage_count, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                t.id,
                t.name,
                t.body,
                t.category,
                t.active,
                t.usage_count,
                t.created_at,
                t.updated_at,
            )
        except UniqueViolation:
            raise Conflict(f"a template named {t.name!r} exists") from None

    @read
    def get_template(self, template_id: str) -> Op[Template | None]:
        return (yield from self._template(template_id))

    def _template(self, template_id: str) -> Op[Template | None]:
        row = yield fetchrow("SELECT * FROM templates WHERE id = $1", template_id)
        return rows.template(row, self.dec) if row else None

    @read
    def list_templates(
        self, *, category: str | None = None, active: bool | None = None
    ) -> Op[list[Template]]:
        p = Params()
        where = [
            f"{k} = {p(v)}"
            for k, v in (("category", category), ("active", active))
            if v is not None
        ]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        found = yield fetch(f"SELECT * FROM templates {clause} ORDER BY name", *p.values)
        return [rows.template(r, self.dec) for r in found]

    @write
    def update_template(
        self, /, template_id: str, now: datetime, **fields: Any
    ) -> Op[Template | None]:
        """Set name/body/category/active; raises ``Conflict`` when the name is taken."""
        if unknown := set(fields) - _UPDATABLE:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not fields:
            return (yield from self._template(template_id))
        p = Params(template_id, now)
        # Column names come from the allow-list above, never from the caller's strings.
        sets = "".join(f", {k} = {p(v)}" for k, v in fields.items())
        try:
            row = yield fetchrow(
                f"UPDATE templates SET updated_at = $2{sets} WHERE id = $1 RETURNING *", *p.values
            )
        except UniqueViolation:
            raise Conflict(f"a template named {fields.get('name')!r} exists") from None
        return rows.template(row, self.dec) if row else None

    @write
    def delete_template(self, template_id: str) -> Op[bool]:
        n = yield execute("DELETE FROM templates WHERE id = $1", template_id)
        return bool(n == 1)

    @write
    def count_template_use(self, template_id: str, n: int = 1) -> Op[None]:
        yield execute(
            "UPDATE templates SET usage_count = usage_count + $1 WHERE id = $2", n, template_id
        )

    # -- one-time passwords -------------------------------------------------------------

    @write
    def create_otp(self, otp: Otp, message: Message) -> Op[None]:
        """Store the code and its SMS in one transaction; earlier codes for the same
        number are superseded (one active code per number)."""
        yield execute(
            "UPDATE otp_codes SET superseded_at = $1 WHERE recipient = $2 "
            "AND superseded_at IS NULL AND verified_at IS NULL",
            otp.created_at,
            otp.recipient,
        )
        yield from self._insert_message(message)
        yield execute(
            "INSERT INTO otp_codes (id, recipient, code_hash, message_id, attempts, "
            "max_attempts, created_at, expires_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7)",
            otp.id,
            otp.recipient,
            otp.code_hash,
            otp.message_id,
            otp.max_attempts,
            otp.created_at,
            otp.expires_at,
        )

    @read
    def otp_sends_since(self, recipient: str, since: datetime) -> Op[list[datetime]]:
        """Creation times of codes sent to ``recipient`` since ``since``, newest first."""
        found = yield fetch(
            "SELECT created_at FROM otp_codes WHERE recipient = $1 AND created_at >= $2 "
            "ORDER BY created_at DESC",
            recipient,
            since,
        )
        return [self.dec.req_dt(r[0]) for r in found]

    @read
    def get_otp(self, otp_id: str) -> Op[Otp | None]:
        row = yield fetchrow("SELECT * FROM otp_codes WHERE id = $1", otp_id)
        return rows.otp(row, self.dec) if row else None

    @read
    def latest_otp(self, recipient: str) -> Op[Otp | None]:
        """The newest code for ``recipient`` that was not superseded."""
        row = yield fetchrow(
            "SELECT * FROM otp_codes WHERE recipient = $1 AND superseded_at IS NULL "
            "ORDER BY created_at DESC LIMIT 1",
            recipient,
        )
        return rows.otp(row, self.dec) if row else None

    @write
    def record_otp_attempt(self, otp_id: str, correct: bool, now: datetime) -> Op[Otp | None]:
        """CAS: count an attempt if the code is live (not verified, superseded or expired,
        attempts left); mark it verified when ``correct``. None if it was not live."""
        # One conditional UPDATE: two guesses racing on two nodes each count, at most
        # max_attempts of them are ever counted, and only one can verify the code.
        row = yield fetchrow(
            "UPDATE otp_codes SET attempts = attempts + 1, "
            "verified_at = CASE WHEN $1 THEN $2::timestamptz ELSE NULL END "
            "WHERE id = $3 AND verified_at IS NULL AND superseded_at IS NULL "
            "AND expires_at > $2 AND attempts < max_attempts RETURNING *",
            correct,
            now,
            otp_id,
        )
        if row is None:
            return None
        otp = rows.otp(row, self.dec)
        if otp.verified_at is not None:
            yield from self._event(EventType.OTP_VERIFIED, otp.id, otp_data(otp), now)
        return otp

    @write
    def purge_otps(self, before: datetime) -> Op[int]:
        """Delete codes that expired before ``before``."""
        n: int = yield execute("DELETE FROM otp_codes WHERE expires_at < $1", before)
        return n
