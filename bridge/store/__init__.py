"""The durable store, chosen by URL (`sqlite:///path`, `postgresql://…`): the bridge opens
it as a writer, everything else as a reader, which the type checker holds to reading."""

from __future__ import annotations

from bridge.store.base import (
    BatchOutcome,
    Bucket,
    EventKey,
    Purged,
    QueryTimeout,
    Refused,
    RetentionStats,
    SchemaTooNew,
    Stats,
    StoredEvent,
    StoredRate,
    StoredRejection,
    StoreReader,
    StoreUnavailable,
    StoreWriter,
    TopicStats,
)
from bridge.store.options import (
    BRIDGE_ALIVE_SECONDS,
    DEFAULT_OPTIONS,
    QUERY_TIMEOUT_SECONDS,
    STORE_HOLD_SECONDS,
    Durability,
    StoreOptions,
)
from bridge.store.url import PostgresUrl, SQLiteUrl, StoreUrl, parse_store_url, redact_url


def open_reader(url: StoreUrl, options: StoreOptions = DEFAULT_OPTIONS) -> StoreReader:
    """The store at `url`, to read only: it never creates nor changes it, and says
    StoreUnavailable until the bridge has created it."""
    if isinstance(url, SQLiteUrl):
        from bridge.store.sqlite import SQLiteReader

        return SQLiteReader(url.path, options)
    from bridge.store.postgres import PostgresReader

    return PostgresReader(url, options)


def open_writer(url: StoreUrl, options: StoreOptions = DEFAULT_OPTIONS) -> StoreWriter:
    """The store at `url`, to write (and read): created, or its schema upgraded, if need be."""
    if isinstance(url, SQLiteUrl):
        from bridge.store.sqlite import SQLiteWriter

        return SQLiteWriter(url.path, options)
    from bridge.store.postgres import PostgresWriter

    return PostgresWriter(url, options)


__all__ = [
    "BRIDGE_ALIVE_SECONDS",
    "QUERY_TIMEOUT_SECONDS",
    "STORE_HOLD_SECONDS",
    "BatchOutcome",
    "Bucket",
    "Durability",
    "EventKey",
    "PostgresUrl",
    "Purged",
    "QueryTimeout",
    "Refused",
    "RetentionStats",
    "SQLiteUrl",
    "SchemaTooNew",
    "Stats",
    "StoreOptions",
    "StoreReader",
    "StoreUnavailable",
    "StoreUrl",
    "StoreWriter",
    "StoredEvent",
    "StoredRate",
    "StoredRejection",
    "TopicStats",
    "open_reader",
    "open_writer",
    "parse_store_url",
    "redact_url",
]
