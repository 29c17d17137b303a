"""The durable store: one interface, chosen by URL (`sqlite:///path`)."""

from __future__ import annotations

from bridge.store.base import (
    BatchOutcome,
    EventKey,
    Refused,
    SchemaTooNew,
    Stats,
    Store,
    StoredEvent,
    StoredRejection,
    StoreUnavailable,
    TopicStats,
)


def open_store(url: str, *, durability: str = "full", readonly: bool = False) -> Store:
    """Open the store named by `url`; the writer creates or upgrades the schema."""
    if url.startswith("sqlite://"):
        from bridge.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url, durability=durability, readonly=readonly)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite:///path")


__all__ = [
    "BatchOutcome",
    "EventKey",
    "Refused",
    "SchemaTooNew",
    "Stats",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "StoredRejection",
    "TopicStats",
    "open_store",
]
