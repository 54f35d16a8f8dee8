"""Storage behind one interface; the engine is chosen by the scheme of the database URL.

``memory://`` (and ``sqlite:///:memory:``) is SQLite too: one in-memory database for
development and fast tests, gone when the hub stops.
"""

from __future__ import annotations

from smsgw.config import Settings
from smsgw.extras import need
from smsgw.secretbox import SecretBox
from smsgw.store.records import (
    FINAL_STATUSES,
    ApiKey,
    AppToken,
    Attempt,
    Batch,
    Conflict,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Device,
    IdempotencyRecord,
    Inbound,
    InboundFilter,
    Message,
    MessageFilter,
    OptOut,
    Otp,
    Stats,
    Status,
    Template,
    UiSession,
    Webhook,
)
from smsgw.store.store import Store

__all__ = [
    "FINAL_STATUSES",
    "ApiKey",
    "AppToken",
    "Attempt",
    "Batch",
    "Conflict",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryStatus",
    "Device",
    "IdempotencyRecord",
    "Inbound",
    "InboundFilter",
    "Message",
    "MessageFilter",
    "OptOut",
    "Otp",
    "Stats",
    "Status",
    "Store",
    "Template",
    "UiSession",
    "Webhook",
    "create_store",
]


def secret_box(settings: Settings) -> SecretBox:
    """The key that seals stored secrets (``SMSGW_SECRET_KEY``); raises ``SecretKeyError``
    for an unusable one."""
    key, previous = settings.secret_key, settings.secret_key_previous
    return SecretBox(
        key.get_secret_value() if key else None,
        previous.get_secret_value() if previous else None,
    )


def create_store(settings: Settings) -> Store:
    url = settings.database_url
    box = secret_box(settings)
    if url == "memory://" or url.startswith("sqlite:///"):
        from smsgw.store.sqlite import MEMORY, SqliteStore

        path = MEMORY if url == "memory://" else settings.sqlite_path
        return SqliteStore(path, synchronous=settings.sqlite_synchronous, box=box)
    if url.startswith(("postgresql://", "postgres://")):
        need("asyncpg", "postgres", "a PostgreSQL SMSGW_DATABASE_URL")
        from smsgw.store.postgres import PostgresStore

        return PostgresStore(
            url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_size, box=box
        )
    raise ValueError(f"unsupported SMSGW_DATABASE_URL scheme: {url.split(':', 1)[0]!r}")
