"""The floor: the bare relay plus only what the hub's promises require, and nothing else.

``bench/relay.py`` is the stack without our work. The hub promises more than the relay
does, and two of those promises have a price that no implementation of them can avoid:

- **No message is owned by two phones at once** (docs/protocol.md §4): a phone transmits
  only after the hub has recorded it as the owner, so a dispatch is a three-step exchange
  (``send`` → ``accepted`` → ``ownership`` → ``sent``, then the ``ack`` of the report)
  instead of the relay's two frames.
- **No message is lost**: the ownership is durable before the phone is told, and ``sent``
  is durable before the caller and the phone hear it is: two transactions per message,
  each committed with an fsync (SQLite ``synchronous=FULL``, WAL), grouped with every
  other message's into one commit by a writer thread (the event loop never waits on the
  disk).

This server does exactly that on the relay's stack (Starlette, uvicorn, the same server
settings): no auth, no validation, no routing beyond round robin, no failover, no
outbox, a one-table schema and one statement per write. ``floor / ceiling`` is the best
ratio this design can reach on this stack, whoever writes it; ``hub / floor`` is what our
own work costs on top of its promises.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import sqlite3
import sys
import threading
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bench.relay import phone_session, serve

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    device TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
)
"""
OWN = "INSERT INTO messages VALUES (?, ?, ?, 'QUEUED', ?, 1, ?, NULL)"
SENT = "UPDATE messages SET status = 'SENT', sent_at = ? WHERE id = ? AND status = 'QUEUED'"

Job = tuple[str, tuple[Any, ...], asyncio.Future[None]]


class Writer(threading.Thread):
    """Group commit: whatever writes are queued go into one transaction, one fsync."""

    def __init__(self) -> None:
        super().__init__(name="floor-writer", daemon=True)
        self.path = ":memory:"  # the command line names a file
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(SCHEMA)
        while True:
            batch = [self.jobs.get()]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            error: Exception | None = None
            try:
                db.execute("BEGIN IMMEDIATE")
                for sql, params, _ in batch:
                    db.execute(sql, params)
                db.execute("COMMIT")
            except Exception as exc:  # nothing of the batch is durable: its callers fail
                if db.in_transaction:
                    db.execute("ROLLBACK")
                error = exc
            batch[0][2].get_loop().call_soon_threadsafe(_deliver, batch, error)

    def write(self, sql: str, *params: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.jobs.put((sql, params, fut))
        return fut


def _deliver(batch: list[Job], error: Exception | None) -> None:
    for _, _, fut in batch:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


writer = Writer()
phones: list[WebSocket] = []
# (message_id, step) -> the frame the phone answered with
waiting: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
turn = itertools.count()
frame_ids = itertools.count()


async def answer(message_id: str, step: str) -> dict[str, Any]:
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    waiting[(message_id, step)] = fut
    try:
        return await asyncio.wait_for(fut, 10)
    finally:
        waiting.pop((message_id, step), None)


async def dispatch(request: Request) -> Response:
    body = json.loads(await request.body())
    if not phones:
        return JSONResponse({"error": "no phone"}, status_code=503)
    ws = phones[next(turn) % len(phones)]
    device = str(id(ws))
    message_id = str(uuid.uuid4())
    to, text = body["to"], body["message"]
    offer = {"type": "send", "id": f"s{next(frame_ids)}", "message_id": message_id}
    accepted = answer(message_id, "accepted")
    await ws.send_text(json.dumps({**offer, "attempt": 1, "to": to, "body": text}))
    accept = await accepted
    try:
        await writer.write(OWN, message_id, to, text, device, time.time())
    except sqlite3.Error as exc:
        # Answered, not raised: an unhandled error makes uvicorn drop the connection,
        # and a client that reuses it loses its next request (tests/bench/test_floor.py).
        return JSONResponse({"error": f"not stored: {exc}"}, status_code=500)
    sent = answer(message_id, "sent")
    ownership = {"type": "ownership", "id": f"o{next(frame_ids)}", "ref": accept["id"]}
    await ws.send_text(
        json.dumps({**ownership, "message_id": message_id, "attempt": 1, "owner": True})
    )
    report = await sent
    await writer.write(SENT, time.time(), message_id)
    await ws.send_text(
        json.dumps({"type": "ack", "id": f"a{next(frame_ids)}", "ref": report["id"]})
    )
    return JSONResponse({"message_id": message_id, "status": "SENT"})


def answered(frame: dict[str, Any]) -> None:
    fut = waiting.get((frame.get("message_id", ""), frame["type"]))
    if fut is not None and not fut.done():
        fut.set_result(frame)


async def device(ws: WebSocket) -> None:
    await phone_session(ws, phones, answered)


app = Starlette(
    routes=[
        Route("/sms/dispatch", dispatch, methods=["POST"]),
        WebSocketRoute("/ws/device", device),
    ]
)

if __name__ == "__main__":
    writer.path = sys.argv[2]
    writer.start()
    serve(app, int(sys.argv[1]))
