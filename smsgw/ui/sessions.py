"""Dashboard sign-in: an API key exchanged for a session on the server, behind a cookie.

The cookie holds a random session id and an HMAC of it under the hub's own secret (kept
in the store, the same on every node). Only a hash of the id is stored, so the database
alone does not give a session away. Signing out deletes the row: a copied cookie stops
working at once. Revoking the key deletes its sessions in the same transaction, and a
session of the environment's admin key ends when SMSGW_ADMIN_KEY changes.

Every form carries the session's CSRF token (``csrf`` field, or the ``X-CSRF-Token``
header htmx sends); the sign-in form, which has no session yet, carries an HMAC of a
nonce cookie (a signed double submit). SameSite=Strict is the first line; the tokens
are the second, for browsers or proxies that do not honour it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from smsgw.auth import Principal, Scope, hash_secret
from smsgw.clock import utcnow
from smsgw.hub import Hub
from smsgw.store import UiSession

COOKIE = "smsgw_session"
SIGN_IN_COOKIE = "smsgw_sign_in"
PATH = "/ui"


@dataclass(frozen=True, slots=True)
class SignedIn:
    session: UiSession
    principal: Principal
    cookie_id: str


class Sessions:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._secret: bytes | None = None

    async def secret(self) -> bytes:
        # One secret for the whole cluster: the first node to ask stores its candidate.
        if self._secret is None:
            value = await self.hub.store.hub_secret("ui_cookie", secrets.token_urlsafe(32))
            self._secret = value.encode()
        return self._secret

    async def sign(self, value: str) -> str:
        mac = hmac.new(await self.secret(), value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    async def _verified(self, cookie: str | None) -> str | None:
        """The session id of a cookie whose signature holds."""
        if not cookie or "." not in cookie:
            return None
        value, _, mac = cookie.rpartition(".")
        return value if hmac.compare_digest(mac, await self.sign(value)) else None

    # -- sign-in --------------------------------------------------------------------

    async def sign_in_token(self, request: Request) -> tuple[str, str]:
        """The sign-in form's nonce (for its cookie, ``remember_sign_in``) and CSRF token."""
        nonce = request.cookies.get(SIGN_IN_COOKIE)
        if not nonce or len(nonce) > 64:
            nonce = secrets.token_urlsafe(16)
        return nonce, await self.sign("sign-in:" + nonce)

    def remember_sign_in(self, request: Request, response: Response, nonce: str) -> None:
        self._set(request, response, SIGN_IN_COOKIE, nonce, max_age=3600)

    async def sign_in_token_ok(self, request: Request, token: str) -> bool:
        nonce = request.cookies.get(SIGN_IN_COOKIE)
        return bool(nonce) and hmac.compare_digest(token, await self.sign(f"sign-in:{nonce}"))

    async def start(self, principal: Principal, secret: str) -> tuple[str, UiSession]:
        """A new session for a key that was just verified; the cookie's value and the row."""
        now = utcnow()
        session_id = secrets.token_urlsafe(32)
        session = UiSession(
            id_hash=hash_secret(session_id),
            key_id=principal.key_id,
            env_key=hash_secret(secret) if principal.key_id is None else None,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + timedelta(seconds=self.hub.settings.ui_session_ttl),
        )
        await self.hub.store.create_ui_session(session)
        return f"{session_id}.{await self.sign(session_id)}", session

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        self._set(request, response, COOKIE, value, max_age=int(self.hub.settings.ui_session_ttl))
        response.delete_cookie(SIGN_IN_COOKIE, path=PATH)

    def _set(
        self, request: Request, response: Response, name: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=_https(request),
        )

    # -- the signed-in user ----------------------------------------------------------

    async def current(self, request: Request) -> SignedIn | None:
        session_id = await self._verified(request.cookies.get(COOKIE))
        if session_id is None:
            return None
        session = await self.hub.store.ui_session(hash_secret(session_id), utcnow())
        if session is None:
            return None
        principal = await self._principal(session)
        return SignedIn(session, principal, session_id) if principal is not None else None

    async def _principal(self, session: UiSession) -> Principal | None:
        if session.key_id is None:
            env = self.hub.settings.admin_key
            if not env or session.env_key is None:
                return None
            if not hmac.compare_digest(session.env_key, hash_secret(env)):
                return None
            return Principal(None, "SMSGW_ADMIN_KEY", frozenset({Scope.ADMIN.value}))
        key = await self.hub.store.api_key(session.key_id)
        if key is None:
            return None
        return Principal(key.id, key.name, key.scopes, key.rate_limit_rpm, key.daily_message_limit)

    async def end(self, who: SignedIn, response: Response) -> None:
        await self.hub.store.end_ui_session(who.session.id_hash, utcnow())
        response.delete_cookie(COOKIE, path=PATH)


def csrf_ok(who: SignedIn, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given, who.session.csrf)


def _https(request: Request) -> bool:
    # Behind a TLS-terminating proxy the hub sees http; the proxy says what the browser used.
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip() == "https"
