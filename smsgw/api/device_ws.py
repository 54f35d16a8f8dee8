"""``GET /ws/device``: the WebSocket transport, a thin pump around ``DeviceConnection``.

The device token is checked before the upgrade is accepted, so a refused phone gets an
HTTP 401 with the usual error body and never a socket. Everything the phone says goes to
``DeviceConnection``; this module only moves text and enforces idleness.
"""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from smsgw.auth import presented_secret
from smsgw.connection import DeviceConnection, Transport
from smsgw.errors import error_response
from smsgw.hub import Hub
from smsgw.protocol import CloseCode

log = logging.getLogger("smsgw.device")


class WebSocketTransport(Transport):
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send_text(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state is WebSocketState.CONNECTED:
            await self.ws.close(code, reason)


async def device_socket(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    if hub.draining:
        # Shutting down: the phone retries, and the load balancer sends it elsewhere.
        await ws.send_denial_response(error_response(503, "draining", "this hub node is draining"))
        return
    secret = presented_secret(ws)
    device_id = await hub.auth.resolve_device_id(secret) if secret else None
    if device_id is None:
        message = "missing device token" if secret is None else "invalid or revoked device token"
        await ws.send_denial_response(error_response(401, "unauthorized", message))
        return
    await ws.accept()
    conn = DeviceConnection(hub, device_id, WebSocketTransport(ws))
    hub.connections.add(conn)  # the hub's watchdog closes it if it falls silent
    try:
        while not conn.closed:
            event = await ws.receive()
            if event["type"] == "websocket.disconnect":
                break
            if event.get("text") is not None:
                await conn.handle_text(event["text"])
            else:
                await conn.handle_binary()
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("device %s: connection handler failed", device_id)
        await conn.close(CloseCode.GOING_AWAY, "internal error")
    finally:
        hub.connections.discard(conn)
        await conn.finished()
