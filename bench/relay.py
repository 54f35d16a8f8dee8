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


async def device(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(json.dumps({"type": "welcome", "id": "w", "heartbeat_interval": 30}))
    phones.append(ws)
    try:
        while True:
            frame = json.loads(await ws.receive_text())
            if frame.get("type") == "sent":
                fut = waiting.get(frame["message_id"])
                if fut is not None and not fut.done():
                    fut.set_result(None)
    except WebSocketDisconnect:
        pass
    finally:
        phones.remove(ws)


app = Starlette(
    routes=[
        Route("/sms/dispatch", dispatch, methods=["POST"]),
        WebSocketRoute("/ws/device", device),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="auto",  # the hub's event loop and HTTP parser (smsgw/server.py)
        http="auto",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=65536,
        ws_ping_interval=None,
        log_level="warning",
        access_log=False,
    )
