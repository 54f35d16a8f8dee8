"""The hub's CA certificate, for phones to trust its HTTPS (docs/smsgate-app.md).

Public by nature (a certificate, never a key): a phone's browser opens
``https://<hub>/tls/ca.crt`` (or plain HTTP through ``adb reverse``) and Android offers to
install it. Only served when the hub's certificate chain ends in a CA, as
``smsgw tls init`` writes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.responses import Response

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut
from smsgw.errors import ApiError
from smsgw.tls import ca_of


@api.route(
    "GET",
    "/tls/ca.crt",
    tag="health",
    scope=None,
    security=None,
    summary="The CA certificate of the hub's HTTPS, to install on phones",
    responses={200: None, 404: ErrorOut},
)
async def ca_certificate(call: Call) -> Response:
    cert = call.hub.settings.tls_cert
    pem = await asyncio.to_thread(ca_of, Path(cert)) if cert else None
    if pem is None:
        raise ApiError(404, "not_found", "this hub serves no certificate of a local CA")
    return Response(
        pem,
        media_type="application/x-x509-ca-cert",
        headers={"Content-Disposition": 'attachment; filename="smsgw-ca.crt"'},
    )
