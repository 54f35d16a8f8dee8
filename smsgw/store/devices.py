"""Phones: enrollment, their tokens, what they last reported, and their removal."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from smsgw.events import EventType, device_event_types
from smsgw.store import rows
from smsgw.store.operations import Operations
from smsgw.store.records import AppToken, Device, Message
from smsgw.store.rules import DEVICE_REMOVED, DEVICE_REMOVED_ERROR
from smsgw.store.sql import Op, Params, Rollback, execute, fetch, fetchrow, fetchval, read, write

_UPDATABLE = frozenset({"name", "enabled", "daily_quota", "fcm_token", "sims", "app_version"})


class Devices(Operations):
    @write
    def create_enrollment_code(
        self, code_hash: str, now: datetime, expires_at: datetime
    ) -> Op[None]:
        yield execute(
            "INSERT INTO enrollment_codes (code_hash, created_at, expires_at) VALUES ($1, $2, $3)",
            code_hash,
            now,
            expires_at,
        )

    @write
    def register_device(
        self,
        *,
        device_id: str,
        name: str,
        hardware_id: str,
        sims: list[dict[str, Any]],
        fcm_token: str | None,
        token_prefix: str,
        token_hash: str,
        now: datetime,
        enrollment_code_hash: str | None,
        kind: str = "agent",
    ) -> Op[tuple[Device, bool] | None]:
        """Create or re-register (same hardware_id keeps its id, rotates the token).

        When ``enrollment_code_hash`` is given the code is consumed in the same
        transaction; ``None`` is returned (and nothing written) if it is unknown,
        expired or used. Returns the device and whether it was created.
        """
        existing = yield fetchval("SELECT id FROM devices WHERE hardware_id = $1", hardware_id)
        final_id = existing if existing is not None else device_id
        if enrollment_code_hash is not None:
            used = yield execute(
                "UPDATE enrollment_codes SET used_at = $1, device_id = $2 "
                "WHERE code_hash = $3 AND used_at IS NULL AND expires_at > $1",
                now,
                final_id,
                enrollment_code_hash,
            )
            if used != 1:
                return None
        # An upsert rather than an INSERT: two registrations of one new phone racing on
        # two nodes both end on the same row instead of one failing.
        row = yield fetchrow(
            "INSERT INTO devices (id, name, hardware_id, token_prefix, token_hash, sims, "
            "fcm_token, created_at, updated_at, kind) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) "
            "ON CONFLICT (hardware_id) DO UPDATE SET name = excluded.name, "
            "token_prefix = excluded.token_prefix, token_hash = excluded.token_hash, "
            "sims = excluded.sims, "
            "fcm_token = COALESCE(excluded.fcm_token, devices.fcm_token), "
            "updated_at = excluded.updated_at, revoked_at = NULL RETURNING *",
            device_id,
            name,
            hardware_id,
            token_prefix,
            token_hash,
            json.dumps(sims),
            fcm_token,
            now,
            kind,
        )
        if enrollment_code_hash is not None and row["id"] != final_id:
            # Lost that race: the code names the phone's row as the winner wrote it.
            yield execute(
                "UPDATE enrollment_codes SET device_id = $1 WHERE code_hash = $2",
                row["id"],
                enrollment_code_hash,
            )
        return rows.device(row, self.dec), existing is None and row["id"] == device_id

    # -- registration tokens of the stock app ------------------------------------------

    @write
    def create_app_token(self, token: AppToken, token_hash: str) -> Op[None]:
        yield execute(
            "INSERT INTO app_tokens (id, name, prefix, token_hash, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            token.id,
            token.name,
            token.prefix,
            token_hash,
            token.created_at,
            token.expires_at,
        )

    @read
    def list_app_tokens(self) -> Op[list[AppToken]]:
        found = yield fetch(
            "SELECT * FROM app_tokens WHERE revoked_at IS NULL ORDER BY created_at, id"
        )
        return [rows.app_token(r, self.dec) for r in found]

    @write
    def revoke_app_token(self, token_id: str, now: datetime) -> Op[bool]:
        n = yield execute(
            "UPDATE app_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            token_id,
        )
        return bool(n == 1)

    @read
    def app_token_by_prefix(self, prefix: str, now: datetime) -> Op[tuple[AppToken, str] | None]:
        """The live token (not revoked, not expired at ``now``) with this prefix, and its
        hash."""
        row = yield fetchrow(
            "SELECT * FROM app_tokens WHERE prefix = $1 AND revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > $2)",
            prefix,
            now,
        )
        return (rows.app_token(row, self.dec), row["token_hash"]) if row else None

    @write
    def app_token_used(self, token_id: str, now: datetime) -> Op[None]:
        yield execute("UPDATE app_tokens SET last_used_at = $1 WHERE id = $2", now, token_id)

    @read
    def device_by_token_prefix(self, prefix: str) -> Op[tuple[Device, str] | None]:
        """The device holding the token with this public prefix, and the token's hash."""
        row = yield fetchrow(
            "SELECT * FROM devices WHERE token_prefix = $1 AND revoked_at IS NULL", prefix
        )
        return (rows.device(row, self.dec), row["token_hash"]) if row else None

    @read
    def get_device(self, device_id: str) -> Op[Device | None]:
        return (yield from self._device_row(device_id))

    def _device_row(self, device_id: str) -> Op[Device | None]:
        row = yield fetchrow(
            "SELECT * FROM devices WHERE id = $1 AND revoked_at IS NULL", device_id
        )
        return rows.device(row, self.dec) if row else None

    @read
    def list_devices(self) -> Op[list[Device]]:
        found = yield fetch(
            "SELECT * FROM devices WHERE revoked_at IS NULL ORDER BY created_at, id"
        )
        return [rows.device(r, self.dec) for r in found]

    @write
    def update_device(self, /, device_id: str, now: datetime, **fields: Any) -> Op[Device | None]:
        """Set name/enabled/daily_quota/fcm_token/sims/app_version."""
        if unknown := set(fields) - _UPDATABLE:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not fields:
            return (yield from self._device_row(device_id))
        p = Params(device_id, now)
        # Column names come from the allow-list above, never from the caller's strings.
        sets = "".join(
            f", {k} = {p(json.dumps(v) if k == 'sims' else v)}" for k, v in fields.items()
        )
        row = yield fetchrow(
            f"UPDATE devices SET updated_at = $2{sets} "
            "WHERE id = $1 AND revoked_at IS NULL RETURNING *",
            *p.values,
        )
        return rows.device(row, self.dec) if row else None

    @write
    def device_seen(
        self, device_id: str, now: datetime, *, online: bool = False, offline: bool = False
    ) -> Op[None]:
        """An app phone called in (it reports no battery or signal), or its stream just
        opened (``online``) or ended (``offline``): those raise ``device.online`` and
        ``device.offline`` as an agent's connection does."""
        if not (online or offline):
            yield execute("UPDATE devices SET last_seen_at = $1 WHERE id = $2", now, device_id)
            return
        types = device_event_types(online=online, offline=offline)
        before = yield from self._battery_before(device_id, types)
        row = yield fetchrow(
            "UPDATE devices SET last_seen_at = $1 WHERE id = $2 RETURNING *", now, device_id
        )
        if row is not None and before is not None:
            yield from self._device_events(row, before[0], types, now)

    @write
    def record_device_status(
        self,
        device_id: str,
        *,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
        offline: bool = False,
    ) -> Op[None]:
        """Store a phone's last reported state; ``offline``: its connection just ended
        (raises ``device.offline``). Crossing below the battery line raises
        ``device.battery_low``."""
        types = device_event_types(offline=offline)
        before = yield from self._battery_before(device_id, types)
        row = yield fetchrow(
            "UPDATE devices SET battery = $1, charging = $2, signal = $3, network = $4, "
            "last_seen_at = $5 WHERE id = $6 RETURNING *",
            battery,
            charging,
            signal,
            network,
            now,
            device_id,
        )
        if row is not None and before is not None:
            yield from self._device_events(row, before[0], types, now)

    @write
    def device_online(
        self,
        device_id: str,
        *,
        sims: list[dict[str, Any]],
        app_version: str,
        fcm_token: str | None,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
    ) -> Op[tuple[Device, list[Message]] | None]:
        """A phone's hello, recorded in one transaction (sims, app version, FCM token if
        given, status, last seen). Returns the device as it now stands and the QUEUED
        messages it owns, or None if the device was removed meanwhile."""
        types = device_event_types(online=True)
        before = yield from self._battery_before(device_id, types)
        row = yield fetchrow(
            "UPDATE devices SET sims = $1, app_version = $2, "
            "fcm_token = COALESCE($3, fcm_token), battery = $4, charging = $5, "
            "signal = $6, network = $7, last_seen_at = $8, updated_at = $8 "
            "WHERE id = $9 RETURNING *",
            json.dumps(sims),
            app_version,
            fcm_token,
            battery,
            charging,
            signal,
            network,
            now,
            device_id,
        )
        if row is None or row["revoked_at"] is not None:
            return None
        owned = yield from self._owned(device_id)
        if before is not None:
            yield from self._device_events(row, before[0], types, now)
        return rows.device(row, self.dec), owned

    @write
    def delete_device(self, device_id: str, now: datetime) -> Op[bool]:
        """Revoke the token and remove the device; its unfinished messages return to
        PENDING (it can never report on them) and its pending offers are released."""
        known = yield fetchval(
            "SELECT 1 FROM devices WHERE id = $1 AND revoked_at IS NULL", device_id
        )
        if known is None:
            return False
        # Excludes a concurrent insert of a message on offer to this phone (see
        # Messages._insert_offered), so the sweep below cannot miss it.
        yield from self.d.lock_device(device_id, shared=False)
        # Messages first, then attempts, then the device: the order every transaction
        # locks rows in, so a report racing the removal cannot deadlock with it.
        yield execute(
            "UPDATE messages SET status = 'PENDING', device_id = NULL, lease_until = NULL, "
            "queued_at = NULL, updated_at = $1 "
            "WHERE device_id = $2 AND status IN ('PENDING', 'QUEUED')",
            now,
            device_id,
        )
        # A message pinned to a removed phone can never leave: fail it visibly.
        failed = yield fetch(
            self._returning(
                "UPDATE messages SET status = 'FAILED', error_code = $3, error = $4, "
                "failed_at = $1, updated_at = $1 WHERE pinned_device_id = $2 "
                "AND status = 'PENDING' RETURNING",
                EventType.MESSAGE_FAILED,
            ),
            now,
            device_id,
            DEVICE_REMOVED,
            DEVICE_REMOVED_ERROR,
        )
        for r in failed:
            yield from self._message_event(EventType.MESSAGE_FAILED, r, now)
        yield execute(
            "UPDATE message_attempts SET ended_at = $1, outcome = $2 "
            "WHERE device_id = $3 AND ended_at IS NULL",
            now,
            DEVICE_REMOVED,
            device_id,
        )
        revoked = yield execute(
            "UPDATE devices SET revoked_at = $1, token_prefix = NULL, token_hash = NULL, "
            "updated_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            device_id,
        )
        if revoked != 1:
            raise Rollback(False)  # removed by a racing node meanwhile: undo the sweep
        return True
