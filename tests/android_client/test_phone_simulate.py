"""The simulator: enroll once, reuse the state dir, re-enroll only when the token is refused."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
from pathlib import Path

from fakehub import TIMEOUT, FakeHub

from android_client.__main__ import build_parser
from android_client.enroll import Enrollment
from android_client.simulate import SimulateOptions, StateDir, simulate


class FakeEnroll:
    """Stands in for POST /devices/register: same hardware id → same device id, new token."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.calls: list[str] = []
        self._tokens = itertools.count(1)

    async def __call__(
        self, server_url: str, *, name: str, hardware_id: str, api_key: str | None = None
    ) -> Enrollment:
        assert api_key == "sk_admin" and server_url == self.hub.url
        self.calls.append(hardware_id)
        device_id = f"dev-{hardware_id}"
        token = f"dev_tok{next(self._tokens)}"
        # Rotating the token revokes the old one, as the hub does.
        for old, dev in list(self.hub.tokens.items()):
            if dev == device_id:
                del self.hub.tokens[old]
        self.hub.tokens[token] = device_id
        return Enrollment(device_id, token, self.hub.url.replace("http", "ws") + "/ws/device")


async def run_until_online(opts: SimulateOptions, enroll: FakeEnroll) -> tuple[int, list[str]]:
    """Run the simulator until every phone printed its online line, then stop it."""
    lines: list[str] = []
    online = asyncio.Event()
    stop = asyncio.Event()

    def out(line: str) -> None:
        lines.append(line)
        if sum(" online:" in x for x in lines) == opts.phones:
            online.set()

    task = asyncio.create_task(simulate(opts, enroll_fn=enroll, out=out, stop=stop))
    try:
        await asyncio.wait_for(online.wait(), TIMEOUT)
    finally:
        stop.set()
        code = await asyncio.wait_for(task, TIMEOUT)
    return code, lines


def device_ids(lines: list[str]) -> set[str]:
    return {w.split("=", 1)[1] for x in lines for w in x.split() if w.startswith("device_id=")}


async def test_enrolls_once_and_reuses_the_state_dir(auto_hub: FakeHub, tmp_path: Path) -> None:
    enroll = FakeEnroll(auto_hub)
    opts = SimulateOptions(
        server=auto_hub.url, api_key="sk_admin", phones=2, state_dir=tmp_path / "sim"
    )
    code, lines = await run_until_online(opts, enroll)
    assert code == 0
    assert len(enroll.calls) == 2
    suffix = json.loads((tmp_path / "sim" / "instance.json").read_text())["suffix"]
    assert sorted(enroll.calls) == [f"sim-0-{suffix}", f"sim-1-{suffix}"]
    first_ids = device_ids(lines)
    assert len(first_ids) == 2
    for i in range(2):
        creds = tmp_path / "sim" / f"phone-{i}.json"
        assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert any("sent 0, failed 0, delivered 0" in x for x in lines)  # exit summary

    code, lines = await run_until_online(opts, enroll)  # restart: no new enrollment
    assert code == 0 and len(enroll.calls) == 2
    assert device_ids(lines) == first_ids

    auto_hub.tokens.clear()  # e.g. the hub's database was reset
    code, lines = await run_until_online(opts, enroll)
    assert len(enroll.calls) == 4
    assert device_ids(lines) == first_ids  # same hardware ids → same devices


async def test_state_dirs_do_not_share_hardware_ids(tmp_path: Path) -> None:
    assert StateDir(tmp_path / "a").suffix() != StateDir(tmp_path / "b").suffix()
    assert StateDir(tmp_path / "a").suffix() == StateDir(tmp_path / "a").suffix()


async def test_inbound_every_injects_sms(auto_hub: FakeHub, tmp_path: Path) -> None:
    enroll = FakeEnroll(auto_hub)
    opts = SimulateOptions(
        server=auto_hub.url,
        api_key="sk_admin",
        phones=1,
        state_dir=tmp_path,
        inbound_every=0.01,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(simulate(opts, enroll_fn=enroll, out=lambda _: None, stop=stop))
    try:
        session = await auto_hub.next_session()
        inbound = await session.recv_type("inbound")
        assert inbound["from"].startswith("+1555") and inbound["local_id"]
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


async def test_missing_api_key_reports_the_problem(auto_hub: FakeHub, tmp_path: Path) -> None:
    lines: list[str] = []
    opts = SimulateOptions(server=auto_hub.url, api_key=None, phones=1, state_dir=tmp_path)
    code = await asyncio.wait_for(simulate(opts, out=lines.append), TIMEOUT)
    assert code == 1
    assert any("--api-key" in x for x in lines)


def test_cli_arguments() -> None:
    args = build_parser().parse_args(
        [
            "simulate",
            "--server",
            "http://h:9000",
            "--api-key",
            "k",
            "--phones",
            "3",
            "--failure-rate",
            "0.1",
            "--accept-delay",
            "0.2",
            "--send-delay",
            "0.3",
            "--no-deliver",
            "--inbound-every",
            "5",
        ]
    )
    assert (args.server, args.api_key, args.phones) == ("http://h:9000", "k", 3)
    assert (args.failure_rate, args.accept_delay, args.send_delay) == (0.1, 0.2, 0.3)
    assert args.no_deliver and args.inbound_every == 5
    assert str(args.state_dir) == ".smsgw-sim"
