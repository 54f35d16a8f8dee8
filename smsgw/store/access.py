"""Who may call the hub and what it promised them: API keys, idempotency keys, the hub's
own secrets."""

from __future__ import annotations

from datetime import datetime

from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import ApiKey, IdempotencyRecord, UiSession
from smsgw.store.sql import Op, execute, fetch, fetchrow, fetchval, read, write


class Access(Operations):
    # -- client API keys --------------------------------------------------------------

    @write
    def create_api_key(self, key: ApiKey, key_hash: str) -> Op[None]:
        yield execute(
            "INSERT INTO api_keys (id, name, prefix, key_hash, scopes, created_at, "
            "rate_limit_rpm, daily_message_limit) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            key.id,
            key.name,
            key.prefix,
            key_hash,
            " ".join(sorted(key.scopes)),
            key.created_at,
            key.rate_limit_rpm,
            key.daily_message_limit,
        )

    @read
    def api_key_by_prefix(self, prefix: str) -> Op[tuple[ApiKey, str] | None]:
        """The key with this public prefix and its stored hash, unless revoked."""
        row = yield fetchrow(
            "SELECT * FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL", prefix
        )
        return (rows.api_key(row, self.dec), row["key_hash"]) if row else None

    @read
    def api_key(self, key_id: str) -> Op[ApiKey | None]:
        """The key with this id, unless revoked."""
        row = yield fetchrow("SELECT * FROM api_keys WHERE id = $1 AND revoked_at IS NULL", key_id)
        return rows.api_key(row, self.dec) if row else None

    @read
    def list_api_keys(self) -> Op[list[ApiKey]]:
        found = yield fetch("SELECT * FROM api_keys ORDER BY created_at, id")
        return [rows.api_key(r, self.dec) for r in found]

    @write
    def revoke_api_key(self, key_id: str, now: datetime) -> Op[bool]:
        """Revoke a key and end the dashboard sessions signed in with it."""
        n = yield execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            key_id,
        )
        yield execute("DELETE FROM ui_sessions WHERE key_id = $1", key_id)
        return bool(n == 1)

    @read
    def has_admin_key(self) -> Op[bool]:
        found = yield fetch("SELECT scopes FROM api_keys WHERE revoked_at IS NULL")
        return any("admin" in r[0].split() for r in found)

    # -- dashboard sessions (smsgw/ui/sessions.py) -------------------------------------

    @write
    def create_ui_session(self, session: UiSession) -> Op[None]:
        yield execute(
            "INSERT INTO ui_sessions (id_hash, key_id, env_key, csrf, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            session.id_hash,
            session.key_id,
            session.env_key,
            session.csrf,
            session.created_at,
            session.expires_at,
        )

    @read
    def ui_session(self, id_hash: str, now: datetime) -> Op[UiSession | None]:
        """The session, unless it expired, was ended, or its key was revoked."""
        row = yield fetchrow(
            "SELECT s.* FROM ui_sessions s LEFT JOIN api_keys k ON k.id = s.key_id "
            "WHERE s.id_hash = $1 AND s.expires_at > $2 "
            "AND (s.key_id IS NULL OR k.revoked_at IS NULL)",
            id_hash,
            now,
        )
        return rows.ui_session(row, self.dec) if row else None

    @write
    def end_ui_session(self, id_hash: str, now: datetime) -> Op[None]:
        """Sign-out; expired sessions go with it, so the table holds only live ones."""
        yield execute(
            "DELETE FROM ui_sessions WHERE id_hash = $1 OR expires_at <= $2", id_hash, now
        )

    # -- idempotency --------------------------------------------------------------------

    @write
    def idempotency_claim(
        self, owner: str, key: str, request_hash: str, now: datetime, abandoned_before: datetime
    ) -> Op[IdempotencyRecord | None]:
        """Claim (owner, key) for a new request: None if claimed now, else the existing
        record (a different hash, a finished response, or a request still running). A claim
        without a response made before ``abandoned_before`` belonged to a request that died
        with its process: it is taken over."""
        # ON CONFLICT waits for a racing claim of the same key to commit and locks the
        # row even when its WHERE says no, so the SELECT below sees that row as it is.
        claimed = yield fetchval(
            "INSERT INTO idempotency_keys (owner, key, request_hash, created_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (owner, key) DO UPDATE SET "
            "request_hash = excluded.request_hash, created_at = excluded.created_at "
            "WHERE idempotency_keys.status_code IS NULL "
            "AND idempotency_keys.created_at < $5 RETURNING 1",
            owner,
            key,
            request_hash,
            now,
            abandoned_before,
        )
        if claimed is not None:
            return None
        row = yield fetchrow(
            "SELECT request_hash, status_code, response FROM idempotency_keys "
            "WHERE owner = $1 AND key = $2",
            owner,
            key,
        )
        return IdempotencyRecord(row[0], row[1], row[2])

    @write
    def idempotency_complete(
        self, owner: str, key: str, status_code: int, response: str
    ) -> Op[None]:
        yield execute(
            "UPDATE idempotency_keys SET status_code = $1, response = $2 "
            "WHERE owner = $3 AND key = $4",
            status_code,
            response,
            owner,
            key,
        )

    @write
    def idempotency_release(self, owner: str, key: str) -> Op[None]:
        """The claimed request failed without a response worth replaying: free the key."""
        yield execute(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status_code IS NULL",
            owner,
            key,
        )

    @write
    def purge_idempotency(self, before: datetime) -> Op[int]:
        n: int = yield execute("DELETE FROM idempotency_keys WHERE created_at < $1", before)
        return n

    # -- the hub's secrets ----------------------------------------------------------------

    @write
    def hub_secret(self, name: str, candidate: str) -> Op[str]:
        """The stored secret ``name``; stores ``candidate`` first if there is none."""
        yield execute(
            "INSERT INTO hub_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            name,
            self.box.seal(candidate),
        )
        # A new statement, a new snapshot: it sees a racing node's committed secret.
        value = yield fetchval("SELECT value FROM hub_secrets WHERE name = $1", name)
        return self.dec.secret(value)
