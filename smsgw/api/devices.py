"""Phones: enrollment, registration, listing, settings, removal and the HTTP heartbeat."""

from __future__ import annotations

from smsgw.api import api
from smsgw.api.agent import install_lines
from smsgw.api.framework import Call, Reply
from smsgw.api.models import (
    BODY_ERRORS,
    AppTokenIn,
    AppTokenInfo,
    AppTokenList,
    AppTokenOut,
    DeviceList,
    DeviceOut,
    DevicePatch,
    EnrollmentCodeIn,
    EnrollmentCodeOut,
    ErrorOut,
    HeartbeatIn,
    HeartbeatOut,
    RegisterIn,
    RegisterOut,
)
from smsgw.app_phones import issue_app_token
from smsgw.appwire import PREFIX
from smsgw.auth import (
    DEVICE_PREFIX,
    Scope,
    client_address,
    hash_secret,
    issue_enrollment_code,
    new_credential,
    normalise_code,
    presented_secret,
)
from smsgw.clock import new_id, utcnow
from smsgw.connection import record_status
from smsgw.errors import ApiError
from smsgw.protocol import CloseCode
from smsgw.store import Device


def _out(call: Call, device: Device) -> DeviceOut:
    return DeviceOut.of(
        device,
        live=call.hub.registry.get(device.id),
        default_quota=call.hub.settings.default_daily_quota,
        today=utcnow().date().isoformat(),
    )


async def _device_or_404(call: Call) -> Device:
    device = await call.hub.store.get_device(call.path("device_id"))
    if device is None:
        raise ApiError(404, "device_not_found", f"no device {call.path('device_id')}")
    return device


@api.route(
    "POST",
    "/devices/enrollment-codes",
    tag="devices",
    scope=Scope.ADMIN,
    body=EnrollmentCodeIn,
    summary="A short-lived, single-use code a phone registers with",
    responses={201: EnrollmentCodeOut, **BODY_ERRORS},
)
async def create_enrollment_code(call: Call) -> Reply:
    body: EnrollmentCodeIn = call.body
    ttl = body.ttl_seconds or call.hub.settings.enrollment_code_ttl
    code, expires = await issue_enrollment_code(call.hub.store, utcnow(), ttl)
    base = call.hub.settings.public_url or str(call.request.base_url)
    out = EnrollmentCodeOut(code=code, expires_at=expires, install=install_lines(base, code))
    return Reply(out, 201)


def _ws_url(call: Call) -> str:
    base = call.hub.settings.public_url or str(call.request.base_url)
    base = base.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws/device"
    return "ws://" + base.removeprefix("http://") + "/ws/device"


@api.route(
    "POST",
    "/devices/register",
    tag="devices",
    scope=None,
    body=RegisterIn,
    summary="Register a phone with an enrollment code (body) or an admin key (header)",
    responses={201: RegisterOut, **BODY_ERRORS},
    security="ApiKey or enrollment code",
)
async def register(call: Call) -> Reply:
    body: RegisterIn = call.body
    hub = call.hub
    code_hash: str | None = None
    if body.enrollment_code is not None:
        code_hash = hash_secret(normalise_code(body.enrollment_code))
    else:
        if presented_secret(call.request.headers) is None:
            raise ApiError(401, "unauthorized", "an enrollment_code or an admin key is required")
        await hub.auth.client(call.request, Scope.ADMIN)
    token, prefix = new_credential(DEVICE_PREFIX)
    result = await hub.store.register_device(
        device_id=new_id(),
        name=body.name,
        hardware_id=body.hardware_id,
        sims=[s.model_dump(exclude_none=True) for s in body.sims],
        fcm_token=body.fcm_token,
        token_prefix=prefix,
        token_hash=hash_secret(token),
        now=utcnow(),
        enrollment_code_hash=code_hash,
    )
    if result is None:
        refusal = ApiError(
            401, "invalid_enrollment_code", "enrollment code unknown, used or expired"
        )
        raise hub.auth.failures.refuse(client_address(call.request), refusal)
    device, _created = result
    await hub.forget_device_token(device.id)  # the old token is dead, on every node
    live = hub.registry.get(device.id)
    if live is not None:  # the old token is dead; so is the session it opened
        await live.session.close(CloseCode.REVOKED, "token rotated by re-registration")
    return Reply(RegisterOut(device_id=device.id, device_token=token, ws_url=_ws_url(call)), 201)


@api.route(
    "GET",
    "/devices/",
    tag="devices",
    scope=Scope.READ,
    summary="All phones and their state",
    responses={200: DeviceList, 401: ErrorOut, 403: ErrorOut},
)
async def list_devices(call: Call) -> DeviceList:
    return DeviceList(items=[_out(call, d) for d in await call.hub.store.list_devices()])


@api.route(
    "POST",
    "/devices/app-tokens",
    tag="devices",
    scope=Scope.ADMIN,
    body=AppTokenIn,
    summary="A registration token for the stock SMS Gateway app (shown once, stored hashed)",
    responses={201: AppTokenOut, **BODY_ERRORS},
)
async def create_app_token(call: Call) -> Reply:
    body: AppTokenIn = call.body
    issued = await issue_app_token(call.hub, body.name, body.ttl_seconds, utcnow())
    base = (call.hub.settings.public_url or str(call.request.base_url)).rstrip("/")
    out = AppTokenOut(
        id=issued.record.id,
        token=issued.token,
        name=issued.record.name,
        expires_at=issued.record.expires_at,
        server_url=base + PREFIX,
    )
    return Reply(out, 201)


@api.route(
    "GET",
    "/devices/app-tokens",
    tag="devices",
    scope=Scope.ADMIN,
    summary="The app registration tokens that still work (never the tokens themselves)",
    responses={200: AppTokenList, 401: ErrorOut, 403: ErrorOut},
)
async def list_app_tokens(call: Call) -> AppTokenList:
    now = utcnow()
    return AppTokenList(
        items=[
            AppTokenInfo(
                id=t.id,
                name=t.name,
                created_at=t.created_at,
                expires_at=t.expires_at,
                last_used_at=t.last_used_at,
            )
            for t in await call.hub.store.list_app_tokens()
            if t.expires_at is None or t.expires_at > now
        ]
    )


@api.route(
    "DELETE",
    "/devices/app-tokens/{token_id}",
    tag="devices",
    scope=Scope.ADMIN,
    summary="Revoke an app registration token (phones it registered keep their own)",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def delete_app_token(call: Call) -> Reply:
    if not await call.hub.store.revoke_app_token(call.path("token_id"), utcnow()):
        raise ApiError(404, "app_token_not_found", f"no app token {call.path('token_id')}")
    return Reply(None, 204)


@api.route(
    "GET",
    "/devices/{device_id}",
    tag="devices",
    scope=Scope.READ,
    summary="One phone",
    responses={200: DeviceOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def get_device(call: Call) -> DeviceOut:
    return _out(call, await _device_or_404(call))


@api.route(
    "PATCH",
    "/devices/{device_id}",
    tag="devices",
    scope=Scope.ADMIN,
    body=DevicePatch,
    summary="Rename, enable/disable, set the daily quota",
    responses={200: DeviceOut, 404: ErrorOut, **BODY_ERRORS},
)
async def patch_device(call: Call) -> DeviceOut:
    body: DevicePatch = call.body
    await _device_or_404(call)
    fields = body.model_dump(exclude_unset=True)  # null for name or enabled: 422 already
    device = await call.hub.store.update_device(call.path("device_id"), utcnow(), **fields)
    if device is None:
        raise ApiError(404, "device_not_found", f"no device {call.path('device_id')}")
    live = call.hub.registry.get(device.id)
    if live is not None:
        quota = live.daily_quota
        if "daily_quota" in fields:
            quota = (
                device.daily_quota
                if device.daily_quota is not None
                else call.hub.settings.default_daily_quota
            )
        registry = call.hub.registry
        registry.configure(live, name=device.name, enabled=device.enabled, daily_quota=quota)
        await registry.changed(live)  # the node holding its socket, if not us
    call.hub.dispatcher.wake()
    return _out(call, device)


@api.route(
    "DELETE",
    "/devices/{device_id}",
    tag="devices",
    scope=Scope.ADMIN,
    summary="Remove a phone: revokes its token and closes its socket",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def delete_device(call: Call) -> Reply:
    if not await call.hub.revoke_device(call.path("device_id")):
        raise ApiError(404, "device_not_found", f"no device {call.path('device_id')}")
    return Reply(None, 204)


@api.route(
    "POST",
    "/devices/heartbeat",
    tag="devices",
    scope=None,
    body=HeartbeatIn,
    summary="HTTP fallback heartbeat (device token)",
    security="DeviceToken",
    responses={200: HeartbeatOut, **BODY_ERRORS},
)
async def heartbeat(call: Call) -> HeartbeatOut:
    body: HeartbeatIn = call.body
    device = await call.hub.auth.device(call.request)
    await record_status(call.hub, device.id, body.battery, body.charging, body.signal, body.network)
    owned = await call.hub.store.owned_unfinished(device.id)
    return HeartbeatOut(ok=True, pending_messages=len(owned))
