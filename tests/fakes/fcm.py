"""A local stand-in for Firebase Cloud Messaging, so the real firebase-admin code path is
tested without Google: an ASGI app under a real uvicorn on a free 127.0.0.1 port.

It serves what firebase-admin talks to:

- ``POST /token``: Google's OAuth2 token endpoint. google-auth posts the JWT-bearer grant
  (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, ``assertion=<JWT>``) signed
  with the service account's private key; the fake checks the signature against the public
  half of the key it generated, the audience (Google's token endpoint, which google-auth
  always names), the issuer and the FCM scope, and answers
  ``{"access_token", "expires_in": 3600, "token_type": "Bearer"}``.
- ``POST /v1/projects/{project}/messages:send``: the FCM HTTP v1 send endpoint. It checks
  the bearer token and the project, parses the message, records it, and answers
  ``{"name": "projects/…/messages/…"}`` or, when told to, the real FCM error shapes
  (``404 NOT_FOUND`` with ``google.firebase.fcm.v1.FcmError`` ``UNREGISTERED``, ``400
  INVALID_ARGUMENT`` with the token field violation, ``403 SENDER_ID_MISMATCH``, ``429
  QUOTA_EXCEEDED`` with ``Retry-After``, ``500 INTERNAL``, ``503 UNAVAILABLE``, and the HTML
  ``502`` a Google front end gives).

``service_account(path)`` writes a service-account JSON whose ``token_uri`` points here
(a fresh 2048-bit RSA key made with ``cryptography``).

How the FCM URL is pointed here: firebase-admin (checked with 7.x) builds the send URL,
when an app's messaging service is first created, from the class attribute
``firebase_admin.messaging._MessagingService.FCM_URL``, a format string taking the project
id. ``patch_google_urls(monkeypatch)`` replaces that attribute for the test; everything
else (credentials, token refresh, the HTTP client and its retries, error parsing) is
firebase-admin's own. The token URI needs no patch: it comes from the service-account file.
Recent google-auth also looks up the service account's "regional access boundary" at IAM
(``iamcredentials.googleapis.com/…/allowedLocations``) in a background thread after a
token refresh; ``patch_google_urls`` points that lookup (the module function
``google.auth._regional_access_boundary_utils.get_service_account_rab_endpoint``) here
too, and the fake answers "no boundary", so a test never reaches out to Google.

A successful send to a token with a listener in ``on_wake`` calls it with the message:
that is how a simulated phone "receives" its FCM wake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests.harness import free_socket, wait_for

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
# Scopes FCM v1 accepts (firebase-admin asks for cloud-platform and firebase, among others).
FCM_SCOPES = frozenset(
    "https://www.googleapis.com/auth/" + s for s in ("firebase.messaging", "cloud-platform")
)
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def _fcm_error(
    http: int, status: str, message: str, error_code: str, *extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "error": {
            "code": http,
            "message": message,
            "status": status,
            "details": [{"@type": FCM_ERROR, "errorCode": error_code}, *extra],
        }
    }


# The answers real FCM gives (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode).
ERRORS: dict[str, tuple[int, dict[str, Any] | str, dict[str, str]]] = {
    "unregistered": (
        404,
        _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
        {},
    ),
    "invalid_argument": (
        400,
        _fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            "INVALID_ARGUMENT",
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": "message.token", "description": "Invalid registration token"}
                ],
            },
        ),
        {},
    ),
    "sender_id_mismatch": (
        403,
        _fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
        {},
    ),
    "quota_exceeded": (
        429,
        _fcm_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests'",
            "QUOTA_EXCEEDED",
        ),
        {"Retry-After": "1"},
    ),
    "internal": (500, _fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL"), {}),
    "unavailable": (
        503,
        _fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
        {},
    ),
    # What a Google front end answers when the backend is unreachable: HTML, not JSON.
    "bad_gateway": (
        502,
        "<!DOCTYPE html><html><title>Error 502 (Server Error)!!1</title>"
        "<p><b>502.</b> That's an error.</p></html>",
        {},
    ),
}


@dataclass
class SendRecord:
    """One request to the send endpoint, answered with ``status``."""

    token: str | None
    message: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)


class FakeFcm:
    def __init__(self, project_id: str = "smsgw-test") -> None:
        self.project_id = project_id
        self.client_email = f"smsgw-wakeup@{project_id}.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_pem = (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.requests: list[SendRecord] = []  # every send request, answered or refused
        self.token_grants = 0
        self.boundary_lookups = 0
        self._access_tokens: set[str] = set()
        self._ids = itertools.count(1)
        # Per FCM token: errors (names in ERRORS) to answer before succeeding, in order.
        self.scripted: dict[str, list[str]] = {}
        # Per FCM token: an error answered every time (a dead token).
        self.always: dict[str, str] = {}
        # Per FCM token: called with the message after each successful send.
        self.on_wake: dict[str, Callable[[dict[str, Any]], object]] = {}
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self._send, methods=["POST"]),
                Route(
                    "/v1/projects/-/serviceAccounts/{email}/allowedLocations",
                    self._allowed_locations,
                    methods=["GET", "POST"],
                ),
            ]
        )

    # -- set-up -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def fcm_url(self) -> str:
        """In the shape of ``_MessagingService.FCM_URL``: ``{0}`` is the project id."""
        return self.base_url + "/v1/projects/{0}/messages:send"

    def service_account(self, path: Path) -> Path:
        """Write a service-account JSON whose ``token_uri`` is this fake."""
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project_id,
                    "private_key_id": "fake-key-1",
                    "private_key": private_pem,
                    "client_email": self.client_email,
                    "client_id": "100000000000000000001",
                    "auth_uri": f"{self.base_url}/auth",
                    "token_uri": self.token_uri,
                    "auth_provider_x509_cert_url": f"{self.base_url}/certs",
                    "client_x509_cert_url": f"{self.base_url}/certs/{self.client_email}",
                }
            )
        )
        return path

    def patch_google_urls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point firebase-admin's FCM URL, and google-auth's access-boundary lookup, here."""
        from firebase_admin import messaging
        from google.auth import _regional_access_boundary_utils as rab

        monkeypatch.setattr(messaging._MessagingService, "FCM_URL", self.fcm_url)
        monkeypatch.setattr(
            rab,
            "get_service_account_rab_endpoint",
            lambda email: f"{self.base_url}/v1/projects/-/serviceAccounts/{email}/allowedLocations",
        )

    async def start(self) -> FakeFcm:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await wait_for(lambda: self._server is not None and self._server.started, what="fake FCM")
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
        self._server = None

    # -- what tests read -----------------------------------------------------------------

    def sent_to(self, token: str) -> list[SendRecord]:
        """Requests for ``token`` that FCM accepted."""
        return [r for r in self.requests if r.token == token and r.status == 200]

    def tried(self, token: str) -> list[SendRecord]:
        return [r for r in self.requests if r.token == token]

    # -- endpoints ------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        # application/x-www-form-urlencoded, parsed by hand (Starlette's form parser needs
        # python-multipart, which nothing else here needs).
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != JWT_BEARER:
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                certs=self._public_pem,
                # google-auth always names Google's endpoint as the audience, whatever the
                # file's token_uri says; Google's endpoint accepts that, so the fake does too.
                audience=[GOOGLE_TOKEN_ENDPOINT, self.token_uri],
            )
        except Exception as exc:
            return JSONResponse({"error": "invalid_grant", "error_description": str(exc)}, 400)
        if (
            claims.get("iss") != self.client_email
            or not set(str(claims.get("scope", "")).split()) & FCM_SCOPES
        ):
            return JSONResponse(
                {"error": "invalid_scope", "error_description": "no FCM scope"}, 400
            )
        self.token_grants += 1
        token = f"ya29.fake-{self.token_grants}"
        self._access_tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    async def _allowed_locations(self, request: Request) -> Response:
        # IAM's answer for an account without a regional access boundary ("no-op").
        self.boundary_lookups += 1
        return JSONResponse({"locations": [], "encodedLocations": "0x0"})

    async def _send(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self._access_tokens:
            return JSONResponse(
                _fcm_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials.",
                    "THIRD_PARTY_AUTH_ERROR",
                ),
                401,
            )
        if request.path_params["project"] != self.project_id:
            return JSONResponse(
                _fcm_error(
                    403, "PERMISSION_DENIED", "Permission denied on project", "SENDER_ID_MISMATCH"
                ),
                403,
            )
        body = await request.json()
        message: dict[str, Any] = body.get("message", {})
        token = message.get("token")
        name = self.always.get(token or "")
        queue = self.scripted.get(token or "")
        if name is None and queue:
            name = queue.pop(0)
        if name is not None:
            status, payload, headers = ERRORS[name]
            self.requests.append(SendRecord(token, message, status))
            if isinstance(payload, str):
                return HTMLResponse(payload, status, headers=headers)
            return JSONResponse(payload, status, headers=headers)
        if not token or not isinstance(message.get("data"), dict):
            self.requests.append(SendRecord(token, message, 400))
            return JSONResponse(*ERRORS["invalid_argument"][:2])
        self.requests.append(SendRecord(token, message, 200))
        listener = self.on_wake.get(token)
        if listener is not None:
            listener(message)
        return JSONResponse({"name": f"projects/{self.project_id}/messages/{next(self._ids)}"})
