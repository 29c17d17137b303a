"""The durable store: one interface, chosen by URL (`sqlite:///path`, `postgresql://…`)."""

from __future__ import annotations

from bridge.store.base import (
    BRIDGE_ALIVE_SECONDS,
    STORE_HOLD_SECONDS,
    BatchOutcome,
    EventKey,
    Refused,
    SchemaTooNew,
    Stats,
    Store,
    StoredEvent,
    StoredRate,
    StoredRejection,
    StoreUnavailable,
    TopicStats,
    redact_url,
)


def check_store_url(url: str) -> str:
    """Refuse an unknown scheme when settings are read, not deep inside a running bridge."""
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        scheme = url.split(":", 1)[0]
        raise ValueError(
            f"unsupported store URL scheme {scheme!r}: use sqlite:///path or postgresql://host/db"
        )
    return url


def open_store(
    url: str,
    *,
    durability: str = "full",
    readonly: bool = False,
    alive_s: float = BRIDGE_ALIVE_SECONDS,
    hold_s: float = STORE_HOLD_SECONDS,
) -> Store:
    """Open the store named by `url`; the writer creates or upgrades the schema. `alive_s`
    is the window a bridge's last heartbeat must fall in for it to count as alive; `hold_s`
    bounds how long one stuck PostgreSQL session may hold the others (SQLite has one writer,
    so nothing to bound)."""
    if check_store_url(url).startswith("sqlite://"):
        from bridge.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url, durability=durability, readonly=readonly, alive_s=alive_s)
    from bridge.store.postgres import PostgresStore

    return PostgresStore(
        url, durability=durability, readonly=readonly, alive_s=alive_s, hold_s=hold_s
    )


__all__ = [
    "BRIDGE_ALIVE_SECONDS",
    "STORE_HOLD_SECONDS",
    "BatchOutcome",
    "EventKey",
    "Refused",
    "SchemaTooNew",
    "Stats",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "StoredRate",
    "StoredRejection",
    "TopicStats",
    "check_store_url",
    "open_store",
    "redact_url",
]
