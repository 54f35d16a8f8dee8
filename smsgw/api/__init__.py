"""The hub's HTTP and WebSocket surface: one module per resource, declared on one ``Api``."""

from __future__ import annotations

from smsgw.api.framework import Api

api = Api()
