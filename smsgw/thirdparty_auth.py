"""Who calls SMSGate's 3rd-party API, and the access tokens it issues.

Three credentials, as SMSGate's clients send them (smsgate-wire.md §6.1, §6.6):

- ``Basic login:password``: the password is an smsgw API key (the login is not checked;
  the stock app's registration grants no password, docs/smsgate-api.md says why);
- ``Bearer <smsgw API key>`` (or ``X-API-Key``), as on smsgw's own API;
- ``Bearer <access token>`` from ``POST /auth/token``: a JWT (HS256, keyed with a secret
  the hub creates once and keeps in the database) naming the key that asked for it, its
  SMSGate scopes and its id (``jti``). It is refused once revoked, expired, or when its
  key is revoked, and it never grants more than its key holds.

A refresh token carries only ``tokens:refresh``; refreshing revokes it (one use) and
issues a new pair with the scopes of the first.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from smsgw.appwire import app_time
from smsgw.auth import (
    Authenticator,
    Principal,
    Scope,
    basic_password,
    client_address,
    hash_secret,
    presented_secret,
)
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError
from smsgw.store import Store
from smsgw.thirdparty import ALL_SCOPE, REFRESH_SCOPE, SCOPES, key_scopes

ALGORITHM = "HS256"
DEFAULT_TTL = 24 * 3600
MAX_TTL = 365 * 24 * 3600
REFRESH_TTL = 30 * 24 * 3600
# The ``sub`` of a token asked for with SMSGW_ADMIN_KEY names that key by a fingerprint,
# so a token dies with the key it came from when the environment's key is changed.
ENV_ADMIN = "env:"
KEY_CACHE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal  # the smsgw key behind the call (limits are counted on it)
    scopes: frozenset[str]  # SMSGate scopes
    token_id: str | None = None  # the jti, when the call came with an access token

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(403, "insufficient_scope", f"scope required: {scope}")


class ThirdPartyAuth:
    def __init__(self, store: Store, auth: Authenticator) -> None:
        self.store = store
        self.auth = auth
        self._secret: str | None = None
        self._keys: dict[str, tuple[Principal | None, float]] = {}

    async def _key(self) -> str:
        if self._secret is None:
            self._secret = await self.store.hub_secret("smsgate_jwt", secrets.token_hex(32))
        return self._secret

    # -- identifying the caller ------------------------------------------------------------

    async def identify(self, conn: HTTPConnection) -> Caller:
        header = conn.headers.get("authorization", "")
        basic = header.partition(" ")[0].lower() == "basic"
        secret = None if basic else presented_secret(conn.headers)
        if not basic and secret is None:
            raise ApiError(401, "unauthorized", "missing credentials (Basic or Bearer)")
        try:
            return await self._caller(header, secret)
        except ApiError as exc:
            if exc.status != 401:
                raise
            raise self.auth.failures.refuse(client_address(conn), exc) from None

    async def _caller(self, header: str, secret: str | None) -> Caller:
        """The caller of presented credentials: Basic (``secret`` None) or Bearer."""
        if secret is None:
            password = basic_password(header)
            if password is None:
                raise ApiError(401, "unauthorized", "malformed Basic credentials")
            principal = await self.auth.resolve_client(password)
        elif secret.count(".") == 2:  # a JWT: header.payload.signature
            return (await self._from_token(secret, refresh=False))[0]
        else:
            principal = await self.auth.resolve_client(secret)
        if principal is None:
            raise ApiError(401, "unauthorized", "invalid or revoked credentials")
        return Caller(principal, key_scopes(principal))

    async def _from_token(self, token: str, *, refresh: bool) -> tuple[Caller, dict[str, Any]]:
        claims = await self._claims(token)
        if (claims.get("typ") == "refresh") != refresh:
            kind = "a refresh token" if refresh else "an access token"
            raise ApiError(401, "unauthorized", f"this call needs {kind}")
        principal = await self._principal(str(claims["sub"]))
        if principal is None:
            raise ApiError(401, "unauthorized", "the key this token was issued to is revoked")
        held = key_scopes(principal) | ({REFRESH_SCOPE} if refresh else set())
        scopes = frozenset(s for s in claims.get("scopes", []) if isinstance(s, str))
        return Caller(principal, scopes & held, str(claims["jti"])), claims

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                await self._key(),
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "jti", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token_expired", "the token has expired") from None
        except jwt.InvalidTokenError:
            raise ApiError(401, "unauthorized", "invalid token") from None
        if await self.store.token_revoked(str(claims["jti"])):
            raise ApiError(401, "token_revoked", "the token has been revoked")
        return claims

    async def _principal(self, sub: str) -> Principal | None:
        if sub.startswith(ENV_ADMIN):
            env_key = self.auth.env_admin_key
            if not env_key or not hmac.compare_digest(sub, _env_sub(env_key)):
                return None
            return Principal(None, "SMSGW_ADMIN_KEY", frozenset({Scope.ADMIN.value}))
        cached = self._keys.get(sub)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await self.store.api_key(sub)
        principal = (
            Principal(key.id, key.name, key.scopes, key.rate_limit_rpm, key.daily_message_limit)
            if key is not None
            else None
        )
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[sub] = (principal, now + KEY_CACHE_SECONDS)
        return principal

    # -- tokens ------------------------------------------------------------------------------

    async def issue(self, caller: Caller, scopes: list[str], ttl: int | None) -> dict[str, Any]:
        """``POST /auth/token``: a pair for ``scopes`` (each held by the caller)."""
        if not scopes:
            raise ApiError(400, "invalid_request", "scopes: at least one scope is needed")
        wanted = set(scopes)
        if ALL_SCOPE in wanted:
            wanted = (wanted - {ALL_SCOPE}) | set(caller.scopes)
        unknown = sorted(wanted - set(SCOPES))
        if unknown:
            raise ApiError(400, "invalid_scopes", f"unknown scopes: {', '.join(unknown)}")
        missing = sorted(wanted - caller.scopes)
        if missing:
            raise ApiError(403, "insufficient_scope", f"scope required: {missing[0]}")
        if ttl is not None and not 1 <= ttl <= MAX_TTL:
            raise ApiError(400, "invalid_request", f"ttl: between 1 and {MAX_TTL} seconds")
        return await self._pair(caller.principal, sorted(wanted), ttl or DEFAULT_TTL)

    async def refresh(self, conn: HTTPConnection) -> dict[str, Any]:
        """``POST /auth/token/refresh`` with the refresh token as Bearer."""
        secret = presented_secret(conn.headers)
        if secret is None or secret.count(".") != 2:
            raise ApiError(401, "unauthorized", "a refresh token is needed (Bearer)")
        try:
            caller, claims = await self._from_token(secret, refresh=True)
        except ApiError as exc:
            if exc.status != 401:
                raise
            raise self.auth.failures.refuse(client_address(conn), exc) from None
        caller.require(REFRESH_SCOPE)
        assert caller.token_id is not None
        await self.store.revoke_token(
            caller.token_id, datetime.fromtimestamp(claims["exp"], UTC), utcnow()
        )
        granted = [s for s in claims.get("grant", []) if s in key_scopes(caller.principal)]
        if not granted:
            raise ApiError(403, "insufficient_scope", "the key no longer holds these scopes")
        return await self._pair(caller.principal, granted, int(claims.get("ttl", DEFAULT_TTL)))

    async def revoke(self, jti: str) -> None:
        # Kept until the longest a token with this id can live: then it is expired anyway.
        now = utcnow()
        await self.store.revoke_token(jti, now + timedelta(seconds=MAX_TTL + REFRESH_TTL), now)

    async def _pair(self, principal: Principal, scopes: list[str], ttl: int) -> dict[str, Any]:
        now = int(time.time())
        jti = new_id()
        env_key = self.auth.env_admin_key
        sub = principal.key_id or (_env_sub(env_key) if env_key else ENV_ADMIN)
        key = await self._key()
        access = jwt.encode(
            {"sub": sub, "jti": jti, "iat": now, "exp": now + ttl, "scopes": scopes},
            key,
            algorithm=ALGORITHM,
        )
        refresh = jwt.encode(
            {
                "sub": sub,
                "jti": jti,
                "iat": now,
                "exp": now + max(ttl, REFRESH_TTL),
                "typ": "refresh",
                "scopes": [REFRESH_SCOPE],
                "grant": scopes,
                "ttl": ttl,
            },
            key,
            algorithm=ALGORITHM,
        )
        expires = app_time(datetime.fromtimestamp(now + ttl, UTC))
        # Both spellings: SMSGate's server and docs use snake_case, client-py 4.x reads
        # camelCase (smsgate-wire.md §6.7).
        return {
            "id": jti,
            "token_type": "Bearer",
            "tokenType": "Bearer",
            "access_token": access,
            "accessToken": access,
            "refresh_token": refresh,
            "refreshToken": refresh,
            "expires_at": expires,
            "expiresAt": expires,
        }


def _env_sub(env_key: str) -> str:
    return ENV_ADMIN + hash_secret(env_key)[:24]
