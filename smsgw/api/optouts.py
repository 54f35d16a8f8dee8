"""The opt-out list: numbers that replied STOP (or were added by an admin) get nothing."""

from __future__ import annotations

from urllib.parse import unquote

from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.messages import recipient_e164
from smsgw.api.models import ErrorOut, OptOutIn, OptOutOut, OptOutPage, OptOutQuery
from smsgw.auth import Scope
from smsgw.clock import utcnow
from smsgw.errors import ApiError
from smsgw.store import OptOut


def opt_out_out(o: OptOut) -> OptOutOut:
    return OptOutOut(number=o.number, source=o.source, reason=o.reason, created_at=o.created_at)


@api.route(
    "GET",
    "/opt-outs",
    tag="opt-out",
    scope=Scope.ADMIN,
    query=OptOutQuery,
    summary="Opted-out numbers, in number order",
    responses={200: OptOutPage, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
)
async def list_opt_outs(call: Call) -> OptOutPage:
    q: OptOutQuery = call.body
    rows = await call.hub.store.list_opt_outs(after=q.cursor, limit=q.limit)
    return OptOutPage(
        items=[opt_out_out(o) for o in rows],
        next_cursor=rows[-1].number if len(rows) == q.limit else None,
    )


@api.route(
    "POST",
    "/opt-outs",
    tag="opt-out",
    scope=Scope.ADMIN,
    body=OptOutIn,
    summary="Add a number to the opt-out list",
    responses={201: OptOutOut, 200: OptOutOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
)
async def add_opt_out(call: Call) -> Reply:
    body: OptOutIn = call.body
    entry = OptOut(recipient_e164(call.hub, body.number), "api", body.reason, utcnow())
    created = await call.hub.opt_out(entry)
    return Reply(opt_out_out(entry), 201 if created else 200)


@api.route(
    "DELETE",
    "/opt-outs/{number}",
    tag="opt-out",
    scope=Scope.ADMIN,
    summary="Remove a number from the opt-out list",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
)
async def remove_opt_out(call: Call) -> Reply:
    number = recipient_e164(call.hub, unquote(call.path("number")))
    if not await call.hub.opt_in(number):
        raise ApiError(404, "not_opted_out", f"{number} is not on the opt-out list")
    return Reply(None, 204)
