"""Credentials: client API keys (with scopes), device tokens and enrollment codes.

Secrets look like ``sk_<12 hex>_<secret>`` (client keys) and ``dev_<12 hex>_<secret>``
(device tokens). The part before the second underscore is a public lookup prefix; only a
SHA-256 hash of the whole secret is stored, and it is compared with
``hmac.compare_digest``, so neither the database nor a timing measurement gives the
secret away. The two kinds are told apart by their prefix and stored in different tables:
a device token never authenticates a client call, a client key never opens a device socket.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import HTTPConnection

from smsgw.clock import new_id
from smsgw.errors import ApiError
from smsgw.ratelimit import AuthFailures
from smsgw.store import ApiKey, Device, Store


class Scope(enum.StrEnum):
    SEND = "send"
    READ = "read"
    ADMIN = "admin"  # implies every other scope


ALL_SCOPES = frozenset(s.value for s in Scope)
CLIENT_PREFIX = "sk_"
DEVICE_PREFIX = "dev_"
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_credential(kind_prefix: str) -> tuple[str, str]:
    """A fresh secret and its public lookup prefix."""
    prefix = kind_prefix + secrets.token_hex(6)
    return f"{prefix}_{secrets.token_urlsafe(24)}", prefix


def lookup_prefix(secret: str, kind_prefix: str) -> str | None:
    if not secret.startswith(kind_prefix):
        return None
    # token_urlsafe may itself contain '_': split on the first one after the kind prefix.
    head, sep, rest = secret[len(kind_prefix) :].partition("_")
    if not sep or len(head) != 12 or not rest:
        return None
    return kind_prefix + head


def new_enrollment_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    return "-".join(raw[i : i + 4] for i in range(0, 12, 4))


def normalise_code(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a stored key, or the admin key from the environment."""

    key_id: str | None
    name: str
    scopes: frozenset[str]
    rate_limit_rpm: int | None = None
    daily_message_limit: int | None = None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


def presented_secret(headers: Mapping[str, str]) -> str | None:
    """The API key or device token of a request: ``X-API-Key`` or ``Authorization: Bearer``
    (header names are matched case-insensitively by both header types we get)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def client_address(conn: HTTPConnection) -> str | None:
    """The caller's address: the socket's peer, or what a trusted proxy's X-Forwarded-For
    says (uvicorn's forwarded_allow_ips, ``SMSGW_FORWARDED_ALLOW_IPS``)."""
    return conn.client.host if conn.client else None


def basic_password(authorization: str) -> str | None:
    """The password of an ``Authorization: Basic`` header; None if it is not one or is
    malformed. (The stock app and SMSGate's clients send an API key there.)"""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


async def issue_enrollment_code(
    store: Store, now: datetime, ttl_seconds: float
) -> tuple[str, datetime]:
    """A single-use enrollment code (only its hash is stored) and when it expires."""
    expires = now + timedelta(seconds=ttl_seconds)
    code = new_enrollment_code()
    await store.create_enrollment_code(hash_secret(normalise_code(code)), now, expires)
    return code, expires


# A verified client key is remembered this long, so a busy client costs one database read
# per key and window, not one per request. Revocation through this hub's API forgets it at
# once; a revocation by another process (the CLI, another node) takes effect within it.
KEY_CACHE_SECONDS = 5.0
DEVICE_CACHE_SECONDS = 300.0


class Authenticator:
    def __init__(
        self, store: Store, env_admin_key: str | None, failures: AuthFailures | None = None
    ) -> None:
        self.store = store
        self.env_admin_key = env_admin_key
        # Every refusal of a presented credential, on every API, goes through this.
        self.failures = failures if failures is not None else AuthFailures(0)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._device_cache: dict[str, tuple[str, float]] = {}

    def forget(self, key_id: str) -> None:
        for digest, (principal, _) in list(self._cache.items()):
            if principal.key_id == key_id:
                del self._cache[digest]

    async def client(self, conn: HTTPConnection, scope: Scope) -> Principal:
        principal = await self.identify_client(conn)
        if not principal.allows(scope):
            raise ApiError(403, "insufficient_scope", f"this key lacks the '{scope}' scope")
        return principal

    async def identify_client(self, conn: HTTPConnection) -> Principal:
        secret = presented_secret(conn.headers)
        if secret is None:
            raise ApiError(401, "unauthorized", "missing API key (X-API-Key or Bearer)")
        principal = await self.resolve_client(secret)
        if principal is None:
            if secret.startswith(DEVICE_PREFIX):
                raise ApiError(
                    403, "wrong_credential", "a device token cannot call client endpoints"
                )
            refusal = ApiError(401, "unauthorized", "invalid or revoked API key")
            raise self.failures.refuse(client_address(conn), refusal)
        return principal

    async def resolve_client(self, secret: str) -> Principal | None:
        if self.env_admin_key and hmac.compare_digest(
            hash_secret(secret), hash_secret(self.env_admin_key)
        ):
            return Principal(None, "SMSGW_ADMIN_KEY", frozenset({Scope.ADMIN.value}))
        prefix = lookup_prefix(secret, CLIENT_PREFIX)
        if prefix is None:
            return None
        digest = hash_secret(secret)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await self.store.api_key_by_prefix(prefix)
        if found is None:
            return None
        key, stored_hash = found
        if not hmac.compare_digest(digest, stored_hash):
            return None
        principal = Principal(
            key.id, key.name, key.scopes, key.rate_limit_rpm, key.daily_message_limit
        )
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: a flood of distinct keys cannot grow it
        self._cache[digest] = (principal, now + KEY_CACHE_SECONDS)
        return principal

    async def device(self, conn: HTTPConnection) -> Device:
        secret = presented_secret(conn.headers)
        if secret is None:
            raise ApiError(401, "unauthorized", "missing device token (Authorization: Bearer)")
        device = await self.resolve_device(secret)
        if device is None:
            refusal = ApiError(401, "unauthorized", "invalid or revoked device token")
            raise self.failures.refuse(client_address(conn), refusal)
        _agent_only(device)
        return device

    async def resolve_device_id(self, secret: str) -> str | None:
        """The agent phone a token belongs to, for the socket upgrade; 403 for a stock-app
        phone's token (``_agent_only``). Cached for ``DEVICE_CACHE_SECONDS`` (a reconnect
        storm of thousands of phones then costs no reads); revocation and re-registration
        through this hub forget it at once."""
        prefix = lookup_prefix(secret, DEVICE_PREFIX)
        if prefix is None:
            return None
        digest = hash_secret(secret)
        cached = self._device_cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        device = await self.resolve_device(secret)
        if device is None:
            return None
        _agent_only(device)
        if len(self._device_cache) > 100_000:
            self._device_cache.clear()
        self._device_cache[digest] = (device.id, now + DEVICE_CACHE_SECONDS)
        return device.id

    def forget_device(self, device_id: str) -> None:
        for digest, (cached_id, _) in list(self._device_cache.items()):
            if cached_id == device_id:
                del self._device_cache[digest]

    async def resolve_device(self, secret: str) -> Device | None:
        prefix = lookup_prefix(secret, DEVICE_PREFIX)
        if prefix is None:
            return None
        found = await self.store.device_by_token_prefix(prefix)
        if found is None:
            return None
        device, stored_hash = found
        if not hmac.compare_digest(hash_secret(secret), stored_hash):
            return None
        return device


def _agent_only(device: Device) -> None:
    """The agent's endpoints (its socket, the HTTP heartbeat) refuse a stock-app phone's
    token as a client endpoint refuses a device token: it is valid, but not for this.
    (The app's own API, ``/api/mobile/v1``, likewise refuses an agent's token.)"""
    if device.kind != "agent":
        raise ApiError(403, "wrong_credential", "a stock-app phone's token is not an agent's")


async def issue_api_key(
    store: Store,
    name: str,
    scopes: frozenset[str],
    now: datetime,
    *,
    rate_limit_rpm: int | None = None,
    daily_message_limit: int | None = None,
) -> tuple[str, ApiKey]:
    """Create a client key; the secret is returned here and never again."""
    unknown = scopes - ALL_SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(ALL_SCOPES)}")
    secret, prefix = new_credential(CLIENT_PREFIX)
    key = ApiKey(
        id=new_id(),
        name=name,
        prefix=prefix,
        scopes=scopes,
        created_at=now,
        rate_limit_rpm=rate_limit_rpm,
        daily_message_limit=daily_message_limit,
    )
    await store.create_api_key(key, hash_secret(secret))
    return secret, key
