"""Several modems on one box with one command: ``smsgw-agent run --backend modem --port A
--port B``, each modem its own agent process, device and state directory, against a real
hub, on two fake modems (ptys). SIGTERM to the command stops them all."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from fake_modem import FakeModem

from android_client.agent import AgentDir, Credentials
from android_client.pool import state_dirs
from tests.harness import ADMIN_KEY, HubServer, wait_for

ROOT = Path(__file__).resolve().parents[3]


async def _agent(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "android_client", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def test_two_modems_one_command(tmp_path: Path) -> None:
    first, second = FakeModem().start(), FakeModem().start()
    hub = await HubServer(tmp_path / "hub.db").start()
    pool: asyncio.subprocess.Process | None = None
    try:
        dirs = state_dirs([first.port, second.port], tmp_path / "agents")
        for port, name in ((first.port, "gsm-a"), (second.port, "gsm-b")):
            enroll = await _agent("enroll", "--server", hub.url, "--api-key", ADMIN_KEY,
                                  "--name", name, "--state-dir", str(dirs[port]))  # fmt: skip
            out, _ = await asyncio.wait_for(enroll.communicate(), 60)
            assert enroll.returncode == 0, out.decode()
        pool = await _agent("run", "--backend", "modem", "--port", first.port,
                            "--port", second.port, "--state-dir", str(tmp_path / "agents"),
                            "--min-interval", "0")  # fmt: skip
        async with hub.client() as api:

            async def both_online() -> bool:
                items = (await api.get("/devices/")).json()["items"]
                return {d["name"] for d in items if d["online"]} == {"gsm-a", "gsm-b"}

            await wait_for(both_online, timeout=30, what="both modems online")
            devices = {d["name"]: d["id"] for d in (await api.get("/devices/")).json()["items"]}
            for name, modem in (("gsm-a", first), ("gsm-b", second)):
                r = await api.post("/sms/send", json={
                    "to": "+12025550142", "message": f"via {name}", "device_id": devices[name],
                })  # fmt: skip
                assert r.status_code in (200, 202), r.text
                await modem.wait_until(lambda m=modem: len(m.sent) == 1, timeout=15)
                assert modem.sent[0].sms.text == f"via {name}"
        pool.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(pool.communicate(), 30)
        assert pool.returncode == 0, out.decode()[-3000:]
    finally:
        if pool is not None and pool.returncode is None:
            pool.kill()
            await pool.wait()
        await hub.stop()
        first.stop()
        second.stop()


def test_each_modem_gets_its_own_state_directory(tmp_path: Path) -> None:
    by_id = "/dev/serial/by-id/usb-Quectel-if02"
    dirs = state_dirs(["/dev/gsm1", by_id], tmp_path)
    assert dirs == {"/dev/gsm1": tmp_path / "gsm1", by_id: tmp_path / "usb-Quectel-if02"}
    with pytest.raises(ValueError):
        state_dirs(["/dev/a/gsm1", "/dev/b/gsm1"], tmp_path)  # the same name twice


async def test_a_modem_that_cannot_start_is_retried_and_the_others_run_on(
    tmp_path: Path,
) -> None:
    """Exit code 5 (the backend cannot start: the modem is unplugged) is worth a restart
    after a backoff; exit code 3 (not enrolled) is not."""
    modem = FakeModem().start()
    try:
        agents = tmp_path / "agents"
        AgentDir(agents / "gone").save_credentials(
            Credentials("http://127.0.0.1:9", "d", "dev_x", "gone", "hw", "2026-12-07")
        )  # enrolled, but its modem is unplugged: exit code 5
        pool = await _agent("run", "--backend", "modem", "--port", "/nonexistent/gone",
                            "--port", modem.port, "--state-dir", str(agents))  # fmt: skip
        assert pool.stdout is not None
        seen = b""
        while b"restarting in" not in seen or b"not restarted" not in seen:
            chunk = await asyncio.wait_for(pool.stdout.read(4096), 20)
            assert chunk, seen.decode()  # the pool ended: it should still supervise
            seen += chunk
        assert pool.returncode is None  # still supervising the one worth restarting
        pool.send_signal(signal.SIGTERM)
        await asyncio.wait_for(pool.wait(), 30)
    finally:
        modem.stop()
