"""The ceiling: a bare relay with the hub's stack and none of its work.

Starlette + uvicorn with the same server settings as the hub. ``POST /sms/dispatch``
takes the JSON body, hands it round-robin to a connected phone over its WebSocket and
answers when the phone says ``sent``. No persistence, no auth, no routing, no failover:
what the hub costs beyond this is what our own work costs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

phones: list[WebSocket] = []
waiting: dict[str, asyncio.Future[None]] = {}
turn = itertools.count()


async def dispatch(request: Request) -> Response:
    body = json.loads(await request.body())
    if not phones:
        return JSONResponse({"error": "no phone"}, status_code=503)
    ws = phones[next(turn) % len(phones)]
    message_id = str(uuid.uuid4())
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting[message_id] = fut
    await ws.send_text(
        json.dumps(
            {
                "type": "send",
                "id": message_id,
                "message_id": message_id,
                "attempt": 1,
                "to": body["to"],
                "body": body["message"],
            }
        )
    )
    try:
        await asyncio.wait_for(fut, 10)
    finally:
        waiting.pop(message_id, None)
    return JSONResponse({"message_id": message_id, "status": "SENT"})


async def phone_session(
    ws: WebSocket, connected: list[WebSocket], on_frame: Callable[[dict[str, Any]], None]
) -> None:
    """One phone's socket: welcomed, listed in ``connected`` while it lasts, each frame it
    sends handed to ``on_frame``."""
    await ws.accept()
    # Listed before the welcome goes out: a phone that has heard it is routed to (else a
    # dispatch right after the welcome could find no phone: tests/bench/test_floor.py).
    connected.append(ws)
    try:
        await ws.send_text(json.dumps({"type": "welcome", "id": "w", "heartbeat_interval": 30}))
        while True:
            on_frame(json.loads(await ws.receive_text()))
    except WebSocketDisconnect:
        pass
    finally:
        connected.remove(ws)


def sent(frame: dict[str, Any]) -> None:
    if frame.get("type") == "sent":
        fut = waiting.get(frame["message_id"])
        if fut is not None and not fut.done():
            fut.set_result(None)


async def device(ws: WebSocket) -> None:
    await phone_session(ws, phones, sent)


def serve(app: Starlette, port: int) -> None:
    """uvicorn with the hub's server settings (smsgw/server.py)."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="auto",  # the hub's event loop and HTTP parser
        http="auto",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=65536,
        ws_ping_interval=None,
        log_level="warning",
        access_log=False,
    )


app = Starlette(
    routes=[
        Route("/sms/dispatch", dispatch, methods=["POST"]),
        WebSocketRoute("/ws/device", device),
    ]
)

if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
