"""bench/floor.py does what it claims to cost: the three-step exchange, with the phone's
ownership durable before the phone hears of it and ``sent`` durable before the caller and
the phone do. A floor that skipped a write would flatter the design it stands for."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bench.run import ROOT, free_port


async def recv(phone: Any) -> Any:
    """The floor's next frame; a missing one fails the test at once instead of hanging."""
    return await asyncio.wait_for(phone.recv(), 10)


@pytest.fixture
async def floor(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    port, db = free_port(), tmp_path / "floor.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", str(port), str(db)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    url = f"127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                try:
                    await c.get(f"http://{url}/")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        yield url, db
    finally:
        proc.terminate()
        proc.wait(10)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, recipient, body, status, attempt FROM messages").fetchall()


async def test_a_dispatch_is_offered_owned_durably_sent_and_acknowledged(
    floor: tuple[str, Path],
) -> None:
    url, db = floor
    async with websockets.connect(f"ws://{url}/ws/device") as phone:
        assert json.loads(await recv(phone))["type"] == "welcome"
        async with httpx.AsyncClient(timeout=10) as c:
            call = asyncio.create_task(
                c.post(f"http://{url}/sms/dispatch", json={"to": "+12025550100", "message": "hi"})
            )
            offer = json.loads(await recv(phone))
            assert offer["type"] == "send" and offer["attempt"] == 1
            assert (offer["to"], offer["body"]) == ("+12025550100", "hi")
            message_id = offer["message_id"]
            assert rows(db) == []  # offered, not owned: nothing to keep yet
            await phone.send(
                json.dumps({"type": "accepted", "id": "p1", "message_id": message_id, "attempt": 1})
            )
            ownership = json.loads(await recv(phone))
            assert ownership["type"] == "ownership" and ownership["owner"] is True
            assert ownership["ref"] == "p1"
            # Told it owns the message only once that is on disk.
            assert rows(db) == [(message_id, "+12025550100", "hi", "QUEUED", 1)]
            assert not call.done()
            await phone.send(
                json.dumps({"type": "sent", "id": "p2", "message_id": message_id, "attempt": 1})
            )
            ack = json.loads(await recv(phone))
            assert ack == {"type": "ack", "id": ack["id"], "ref": "p2"}
            assert rows(db) == [(message_id, "+12025550100", "hi", "SENT", 1)]
            reply = await call
    assert reply.status_code == 200
    assert reply.json() == {"message_id": message_id, "status": "SENT"}


async def test_a_write_that_fails_fails_its_dispatch_and_the_floor_serves_on(
    floor: tuple[str, Path],
) -> None:
    url, db = floor
    async with websockets.connect(f"ws://{url}/ws/device") as phone:
        assert json.loads(await recv(phone))["type"] == "welcome"
        # The disk refuses the ownership write (here: a trigger), as a full disk would.
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON messages "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        async with httpx.AsyncClient(timeout=10) as c:

            async def dispatch() -> tuple[httpx.Response, str]:
                call = asyncio.create_task(
                    c.post(
                        f"http://{url}/sms/dispatch", json={"to": "+12025550100", "message": "x"}
                    )
                )
                offer = json.loads(await recv(phone))
                await phone.send(
                    json.dumps(
                        {
                            "type": "accepted",
                            "id": "p",
                            "message_id": offer["message_id"],
                            "attempt": 1,
                        }
                    )
                )
                return call, offer["message_id"]

            call, _ = await dispatch()
            assert (await call).status_code == 500  # an answer, not a request left hanging
            assert rows(db) == []  # and the phone was never told it owns the message
            with sqlite3.connect(db) as conn:
                conn.execute("DROP TRIGGER refuse")
            call, message_id = await dispatch()
            assert json.loads(await recv(phone))["type"] == "ownership"
            await phone.send(
                json.dumps({"type": "sent", "id": "q", "message_id": message_id, "attempt": 1})
            )
            assert json.loads(await recv(phone))["type"] == "ack"
            assert (await call).status_code == 200
            assert rows(db) == [(message_id, "+12025550100", "x", "SENT", 1)]
