"""Storage behind one interface; the engine is chosen by the scheme of the database URL."""

from __future__ import annotations

from smsgw.config import Settings
from smsgw.store.base import (
    FINAL_STATUSES,
    ApiKey,
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
    Store,
    Template,
    Webhook,
)

__all__ = [
    "FINAL_STATUSES",
    "ApiKey",
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
    "Webhook",
    "create_store",
]


def create_store(settings: Settings) -> Store:
    url = settings.database_url
    if url == "memory://":
        from smsgw.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from smsgw.store.sqlite import SqliteStore

        return SqliteStore(settings.sqlite_path, synchronous=settings.sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from smsgw.store.postgres import PostgresStore

        return PostgresStore(
            url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_size
        )
    raise ValueError(f"unsupported SMSGW_DATABASE_URL scheme: {url.split(':', 1)[0]!r}")
