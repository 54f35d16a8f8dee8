"""Running the hub under uvicorn with the settings a phone farm needs."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette

from smsgw.app import create_app
from smsgw.config import Settings


def uvicorn_config(
    settings: Settings, app: Starlette | None = None, **overrides: object
) -> uvicorn.Config:
    """WebSocket compression off and a small frame limit: per-connection memory matters
    when one hub holds thousands of idle phones. Protocol heartbeats replace WS pings."""
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_level": settings.log_level,
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": 10,
    }
    options.update(overrides)
    return uvicorn.Config(app or create_app(settings), **options)  # type: ignore[arg-type]


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.Server(uvicorn_config(settings)).run()
