"""The stock app's mobile API, ``/api/mobile/v1``: what the app calls in private-server mode.

Thin: the calls of ``../shared/specs/smsgate-wire.md`` §3 mapped onto ``smsgw/app_phones.py``.
The app reads no error bodies and retries anything but a 2xx, so what matters here is the
status: 401 for every unknown, expired or revoked credential (the only answer that makes
it register again), never a redirect.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, RootModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from smsgw.api import api
from smsgw.api.framework import Call, Reply, decode_json, invalid, read_body
from smsgw.api.models import ErrorOut
from smsgw.app_session import AppSession
from smsgw.appwire import (
    PREFIX,
    DeviceUpdate,
    Envelope,
    RegisterRequest,
    RegisterResponse,
    StateReport,
    app_time,
)
from smsgw.auth import Scope, basic_password, client_address, issue_enrollment_code
from smsgw.clock import utcnow
from smsgw.errors import ApiError

DEVICE_TOKEN = "Bearer device token (from POST /api/mobile/v1/device)"
AUTH_ERRORS: dict[int, type[BaseModel] | None] = {401: ErrorOut}


class StateReports(RootModel[list[StateReport]]):
    """The body of ``PATCH /message``: state reports, one per message."""


class MobileMessages(RootModel[list[dict[str, Any]]]):
    """Messages for the phone (§3.4 of the wire specification)."""


class Webhooks(RootModel[list[dict[str, Any]]]):
    """The phone's webhook list: the hub's own receiver."""


class AppSettings(RootModel[dict[str, Any]]):
    """Settings sections for the app (``webhooks.signing_key``, ...)."""


class DeviceInfo(RootModel[dict[str, Any]]):
    """``externalIp`` and, with a device token, the phone as the hub knows it."""


class UserCode(BaseModel):
    code: str
    validUntil: str


def _authorization(call: Call) -> str | None:
    return call.request.headers.get("authorization")


def _client(call: Call) -> str | None:
    return client_address(call.request)


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, 400) from None  # the app reads no body: 400, not 422


async def _json(call: Call) -> Any:
    body = await read_body(call.request, call.hub.settings.max_body_bytes)
    try:
        return decode_json(body)
    except RecursionError:  # [[[[... nested deeper than json.loads goes: was a 500
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None


@api.route(
    "POST",
    f"{PREFIX}/device",
    tag="mobile",
    scope=None,
    body=RegisterRequest,
    raw_body=True,
    summary="The app registers (Bearer app token, or Code enrollment code)",
    security="Bearer app registration token, or Code <enrollment code>",
    responses={201: RegisterResponse, 400: ErrorOut, 401: ErrorOut, 413: ErrorOut},
)
async def app_register(call: Call) -> Reply:
    code_hash = await call.hub.apps.admit(_authorization(call) or "", _client(call))
    body = _parse(RegisterRequest, await _json(call))
    device, token = await call.hub.apps.register(code_hash, body, _client(call))
    return Reply(RegisterResponse(id=device.id, token=token, login=device.id), 201)


@api.route(
    "PATCH",
    f"{PREFIX}/device",
    tag="mobile",
    scope=None,
    body=DeviceUpdate,
    raw_body=True,
    summary="The app's start-up check: its push token and SIM cards",
    security=DEVICE_TOKEN,
    responses={204: None, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 413: ErrorOut},
)
async def app_update(call: Call) -> Reply:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    body: DeviceUpdate = _parse(DeviceUpdate, await _json(call))
    if body.id != device.id:
        raise ApiError(403, "forbidden", "the id is not this token's phone")
    await call.hub.apps.update(device, body.push_token, [s.as_sim() for s in body.sim_cards])
    return Reply(None, 204)


@api.route(
    "GET",
    f"{PREFIX}/device",
    tag="mobile",
    scope=None,
    summary="The phone's public address (and, with its token, the phone)",
    security="none, or " + DEVICE_TOKEN,
    responses={200: DeviceInfo, **AUTH_ERRORS},  # a token that is not a phone's: 401
)
async def app_device(call: Call) -> Response:
    client = call.request.client
    found: dict[str, Any] = {"externalIp": client.host if client else None}
    if _authorization(call):
        device = await call.hub.apps.device(_authorization(call), _client(call))
        found["device"] = {
            "id": device.id,
            "name": device.name,
            "createdAt": app_time(device.created_at),
            "updatedAt": app_time(device.updated_at),
            "lastSeen": app_time(device.last_seen_at or device.updated_at),
        }
    return JSONResponse(found)


@api.route(
    "GET",
    f"{PREFIX}/message",
    tag="mobile",
    scope=None,
    summary="The pull: the phone takes what is on offer to it (its accept) and gets what "
    "it holds and has not yet taken in hand",
    security=DEVICE_TOKEN,
    responses={200: MobileMessages, 400: ErrorOut, 401: ErrorOut},
)
async def app_pull(call: Call) -> Response:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    order = call.request.query_params.get("order", "lifo")
    if order not in ("lifo", "fifo"):
        raise ApiError(400, "invalid_request", "order must be lifo or fifo")
    return JSONResponse(await call.hub.apps.pull(device, lifo=order == "lifo"))


@api.route(
    "PATCH",
    f"{PREFIX}/message",
    tag="mobile",
    scope=None,
    body=StateReports,
    raw_body=True,
    summary="State reports; a report that changes nothing (not the phone's message, a "
    "state going backwards) is ignored, a malformed one refuses the whole request",
    security=DEVICE_TOKEN,
    responses={204: None, 400: ErrorOut, 401: ErrorOut, 413: ErrorOut},
)
async def app_report(call: Call) -> Reply:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    data = await _json(call)
    if not isinstance(data, list):
        raise ApiError(400, "invalid_request", "a JSON array of state reports is expected")
    reports: StateReports = _parse(StateReports, data)
    await call.hub.apps.report(device, reports.root)
    return Reply(None, 204)


@api.route(
    "GET",
    f"{PREFIX}/settings",
    tag="mobile",
    scope=None,
    summary="Settings for the app: the key its webhooks are signed with",
    security=DEVICE_TOKEN,
    responses={200: AppSettings, **AUTH_ERRORS},
)
async def app_settings(call: Call) -> Response:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    return JSONResponse(call.hub.apps.settings_for(device))


@api.route(
    "GET",
    f"{PREFIX}/webhooks",
    tag="mobile",
    scope=None,
    summary="The phone's webhooks: the hub's own receiver for the SMS it receives",
    security=DEVICE_TOKEN,
    responses={200: Webhooks, **AUTH_ERRORS},
)
async def app_webhooks(call: Call) -> Response:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    base = call.hub.settings.public_url or str(call.request.base_url)
    return JSONResponse(call.hub.apps.webhooks_for(device, base))


@api.route(
    "POST",
    f"{PREFIX}/webhooks/{{key}}",
    tag="mobile",
    scope=None,
    body=Envelope,
    raw_body=True,
    summary="Where the phone posts the SMS it receives (signed, once per envelope id)",
    security="the URL's secret and X-Signature",
    responses={204: None, 400: ErrorOut, 401: ErrorOut, 413: ErrorOut},
)
async def app_webhook_in(call: Call) -> Reply:
    body = await read_body(call.request, call.hub.settings.max_body_bytes)
    headers = call.request.headers
    try:
        await call.hub.apps.receive(
            call.path("key"),
            body,
            headers.get("x-timestamp"),
            headers.get("x-signature"),
            _client(call),
        )
    except ValidationError as exc:
        raise invalid(exc, 400) from None
    return Reply(None, 204)


@api.route(
    "GET",
    f"{PREFIX}/events",
    tag="mobile",
    scope=None,
    summary="Server-sent events: the phone is online while it reads them",
    security=DEVICE_TOKEN,
    responses={200: None, **AUTH_ERRORS},
)
async def app_events(call: Call) -> Response:
    device = await call.hub.apps.device(_authorization(call), _client(call))
    session = AppSession(call.hub, device.id)

    async def stream() -> Any:
        await session.open(device)  # here, not before: a client gone first attaches nothing
        async for chunk in session.events():
            yield chunk

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@api.route(
    "GET",
    f"{PREFIX}/user/code",
    tag="mobile",
    scope=None,
    summary="A one-time code another phone registers with (Basic: any login and an admin "
    "API key as the password)",
    security="Basic",
    responses={200: UserCode, **AUTH_ERRORS},
)
async def app_user_code(call: Call) -> UserCode:
    secret = basic_password(_authorization(call) or "")
    principal = await call.hub.auth.resolve_client(secret) if secret else None
    if principal is None or not principal.allows(Scope.ADMIN):
        refusal = ApiError(401, "unauthorized", "Basic with an admin API key as the password")
        if secret and principal is None:
            raise call.hub.auth.failures.refuse(_client(call), refusal)
        raise refusal
    hub = call.hub
    code, expires = await issue_enrollment_code(
        hub.store, utcnow(), hub.settings.enrollment_code_ttl
    )
    return UserCode(code=code, validUntil=app_time(expires))
