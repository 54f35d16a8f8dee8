"""Several modems on one box, one command: ``smsgw-agent run --backend modem --port A --port B``.

Each modem stays its own device with its own enrollment and state directory
(``<state-dir>/<port name>``, e.g. ``/var/lib/smsgw-agent/gsm1`` for ``/dev/gsm1``), and
runs in its **own agent process**, so a modem that hangs or a driver that crashes takes
no other modem with it. This module is the small supervisor of those processes: it
starts one per port, restarts one that ends for a reason a restart can cure (its modem
vanished, the hub was unreachable) after a backoff, leaves alone one the hub stopped
(token revoked, replaced, not enrolled), and passes SIGTERM/SIGINT on to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Exit codes of `smsgw-agent run` (agent.EXIT_*) after which a restart changes nothing.
FINAL_EXITS = frozenset({0, 2, 3, 4, 6, 7})
RESTART_MIN, RESTART_MAX = 2.0, 60.0


def state_dirs(ports: Sequence[str], state_dir: Path) -> dict[str, Path]:
    """Each port's state directory; ValueError when two ports would share one."""
    found: dict[str, Path] = {}
    for port in ports:
        name = Path(port).name
        if not name or name in {p.name for p in found.values()}:
            raise ValueError(f"cannot tell the modems apart by name: {port!r}")
        found[port] = state_dir / name
    return found


def launcher() -> list[str]:
    """How to run this agent again: the .pyz file it runs from, or the package."""
    here = Path(sys.argv[0])
    if here.suffix == ".pyz" and here.is_file():
        return [sys.executable, str(here)]
    return [sys.executable, "-m", "android_client"]


async def run_pool(ports: Sequence[str], state_dir: Path, passthrough: Sequence[str]) -> int:
    """Run one agent process per port until SIGTERM/SIGINT; 0 if each ended cleanly."""
    dirs = state_dirs(ports, state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    results = await asyncio.gather(
        *(_supervise(port, dirs[port], passthrough, stop) for port in ports)
    )
    return 0 if all(code == 0 for code in results) else 1


async def _supervise(
    port: str, state_dir: Path, passthrough: Sequence[str], stop: asyncio.Event
) -> int:
    delay = RESTART_MIN
    while True:
        command = [*launcher(), "run", "--backend", "modem", "--port", port,
                   "--state-dir", str(state_dir), *passthrough]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(*command)
        log.info("%s: agent started (pid %d, state in %s)", port, proc.pid, state_dir)
        waiting = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            stopping.cancel()
            if proc.returncode is None:
                proc.terminate()
            return await waiting
        stopping.cancel()
        code = await waiting
        if code in FINAL_EXITS:
            log.warning("%s: agent ended with exit code %d; not restarted", port, code)
            return code
        log.warning("%s: agent ended with exit code %d; restarting in %gs", port, code, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return 0
        delay = min(RESTART_MAX, delay * 2)
