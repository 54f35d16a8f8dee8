"""Running the hub under uvicorn with the settings a phone farm needs."""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
import socket

import uvicorn
from starlette.applications import Starlette

from smsgw import logs
from smsgw.api.device_ws import protocol_for
from smsgw.app import create_app
from smsgw.config import Settings
from smsgw.hub import Hub
from smsgw.lingering import LingeringClose

# Younger collection rounds between two full ones (Python's default: 10); see startup().
FULL_COLLECTION_AFTER = 100


def uvicorn_config(
    settings: Settings, app: Starlette | None = None, **overrides: object
) -> uvicorn.Config:
    """WebSocket compression off and a small frame limit: per-connection memory matters
    when one hub holds thousands of idle phones. Protocol heartbeats replace WS pings.
    Phones' sockets are served by the hub's own protocol class (smsgw/api/device_ws.py),
    not by uvicorn's ASGI WebSocket path. Every HTTP answer is served with a lingering close
    (smsgw/lingering.py), so clients that upload before they read get it."""
    app = app or create_app(settings)
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        # uvloop and httptools when installed (they are dependencies): "auto" falls back to
        # asyncio and h11 where they are not, e.g. a platform without wheels.
        "loop": "auto",
        "http": _http_protocol(settings),
        "ws": protocol_for(app.state.hub),
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_level": settings.log_level,
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "backlog": settings.listen_backlog,
    }
    if settings.tls_cert and settings.tls_key:
        options.update(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    if settings.forwarded_allow_ips is not None:
        # Who may say who the client is: the address failed authentications are counted
        # under (smsgw/ratelimit.py), for HTTP and the phones' upgrade alike.
        options["forwarded_allow_ips"] = settings.forwarded_allow_ips
    options.update(overrides)
    return uvicorn.Config(LingeringClose(app), **options)  # type: ignore[arg-type]


def _http_protocol(settings: Settings) -> str | type:
    """httptools with deadlines for slow clients (smsgw/deadlines.py); without httptools,
    uvicorn's choice ("auto": h11), which has none."""
    try:
        from smsgw.deadlines import http_protocol
    except ImportError:
        return "auto"
    return http_protocol(settings.http_head_timeout, settings.http_body_timeout)


class DrainingServer(uvicorn.Server):
    """uvicorn, with the hub's drain before uvicorn's own shutdown.

    On SIGTERM uvicorn closes every WebSocket with 1012 at once and only then runs the
    lifespan shutdown, too late to let offers finish or to spread the phones' reconnects.
    So the drain runs first, while the node still serves HTTP (refusing new sockets)."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up loaded (the hub, the API's schemas, phone-number metadata) lives
        # as long as the process. Out of the collector's sight, a full collection is no
        # longer a ~40 ms pause of the loop (python -m bench.probe gc). Collected first,
        # so no garbage is frozen with it.
        gc.collect()
        gc.freeze()
        # A full collection walks every tracked object, and a farm's phones are most of
        # them: 200,000 at 5,000 phones, about 150 ms of CPU per walk here. By default one
        # runs after every 10 younger rounds once a quarter as many objects as gen2 holds
        # have been promoted into it, and under load every request in flight when a young
        # round runs is promoted: so about once a second, a fifth of the hub's CPU at
        # 5,000 phones, each freeing nothing. After 100 rounds instead: about a tenth as
        # often. Not rarer: the garbage that phones' connections leave (handshakes) is
        # collected by these, and at 1,000 a hub of 10,000 phones held 4 KiB more per phone.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.hub.drain()
        except Exception:
            logging.getLogger("smsgw").exception("drain failed; shutting down anyway")
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    logs.setup(settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` writes every thread's stack to stderr: for a node that will not stop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    app = create_app(settings)
    DrainingServer(uvicorn_config(settings, app), app.state.hub).run()
