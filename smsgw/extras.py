"""The hub's optional parts, and the pip extra that installs each.

A hub on the embedded SQLite store needs none of them: asyncpg (PostgreSQL), redis
(several nodes) and firebase-admin (FCM wake-up) are imported only when a setting asks for
them, and a setting whose package is missing fails at start with the command that fixes
it, not with an ImportError from deep inside.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(RuntimeError):
    """A setting needs a package that is not installed."""


def need(module: str, extra: str, setting: str) -> None:
    """Raise ``MissingExtra`` unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"{setting} needs the {module} package, which is not installed: "
            f"pip install 'smsgw[{extra}]'"
        )
