"""``GET /phone/validate/{number}``: what the hub makes of a phone number."""

from __future__ import annotations

from urllib.parse import unquote

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut, PhoneOut
from smsgw.auth import Scope
from smsgw.errors import ApiError
from smsgw.numbers import InvalidNumber, describe, parse_recipient


@api.route(
    "GET",
    "/phone/validate/{number}",
    tag="phone",
    scope=Scope.READ,
    summary="Validate a number: E.164, country, type, whether it can receive SMS",
    responses={200: PhoneOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
)
async def validate_number(call: Call) -> PhoneOut:
    raw = unquote(call.path("number"))
    region = call.hub.settings.default_region
    try:
        info = describe(raw, region)
    except InvalidNumber as exc:
        raise ApiError(422, exc.code, exc.message) from None
    try:
        parse_recipient(raw, region)
        can_receive = True
    except InvalidNumber:
        can_receive = False
    return PhoneOut(
        input=raw,
        valid=info.valid,
        e164=info.e164,
        country=info.country,
        country_code=info.country_code,
        number_type=info.number_type,
        national=info.national,
        international=info.international,
        can_receive_sms=can_receive,
    )
