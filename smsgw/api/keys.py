"""Client API keys, managed by admins (the CLI ``smsgw keys`` does the same offline)."""

from __future__ import annotations

from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.models import ErrorOut, KeyCreated, KeyIn, KeyList, KeyOut
from smsgw.auth import Scope, issue_api_key
from smsgw.clock import utcnow
from smsgw.errors import ApiError
from smsgw.store import ApiKey


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=sorted(key.scopes),
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        rate_limit_rpm=key.rate_limit_rpm,
        daily_message_limit=key.daily_message_limit,
    )


@api.route(
    "POST",
    "/keys",
    tag="keys",
    scope=Scope.ADMIN,
    body=KeyIn,
    summary="Create a client API key (the secret is shown once)",
    responses={201: KeyCreated, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
)
async def create_key(call: Call) -> Reply:
    body: KeyIn = call.body
    try:
        secret, key = await issue_api_key(
            call.hub.store,
            body.name,
            frozenset(body.scopes),
            utcnow(),
            rate_limit_rpm=body.rate_limit_rpm,
            daily_message_limit=body.daily_message_limit,
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_scopes", str(exc)) from None
    return Reply(KeyCreated(**key_out(key).model_dump(), key=secret), 201)


@api.route(
    "GET",
    "/keys",
    tag="keys",
    scope=Scope.ADMIN,
    summary="List client API keys",
    responses={200: KeyList, 401: ErrorOut, 403: ErrorOut},
)
async def list_keys(call: Call) -> KeyList:
    return KeyList(items=[key_out(k) for k in await call.hub.store.list_api_keys()])


@api.route(
    "DELETE",
    "/keys/{key_id}",
    tag="keys",
    scope=Scope.ADMIN,
    summary="Revoke a key",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def revoke_key(call: Call) -> Reply:
    if not await call.hub.store.revoke_api_key(call.path("key_id"), utcnow()):
        raise ApiError(404, "key_not_found", f"no active key {call.path('key_id')}")
    await call.hub.forget_api_key(call.path("key_id"))
    return Reply(None, 204)
