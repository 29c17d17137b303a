"""How a store is opened, whatever its backend: durability and the bridges' time windows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bridge.retention import KEEP_FOREVER, RetentionPolicy

# A bridge whose heartbeat is older than this is not counted as running (default; the
# `bridge_alive_s` setting). The bridge beats three times per window.
BRIDGE_ALIVE_SECONDS = 15.0
# How long one stuck PostgreSQL session may hold the others (default; `store_hold_s`).
STORE_HOLD_SECONDS = 5.0
# How long one read (a search, a histogram, a page) may run before it is stopped and
# answered as too expensive (default; `query_timeout_s`).
QUERY_TIMEOUT_SECONDS = 5.0


class Durability(StrEnum):
    """How far a commit goes before the bridge acks what it holds, in each backend.

    SQLite's `synchronous` of the same name: FULL survives power loss. PostgreSQL's
    `synchronous_commit`: full → on (flushed, and replicated if the server has
    synchronous standbys), normal → local (flushed on this server only; a failover may
    lose the last commits), off → off (not waited for: a server crash may lose the last
    few hundred milliseconds of acknowledged events, but never corrupts). Only `full` and
    `normal` keep "acked means stored" through a crash of PostgreSQL itself.
    """

    FULL = "full"
    NORMAL = "normal"
    OFF = "off"

    @property
    def sqlite_synchronous(self) -> str:
        return self.value.upper()

    @property
    def postgres_synchronous_commit(self) -> str:
        return {"full": "on", "normal": "local", "off": "off"}[self.value]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """`durability` applies to writes; `alive_s` is the window a bridge's last heartbeat
    must fall in for it to count as alive; `hold_s` bounds how long one stuck PostgreSQL
    session may hold the others (SQLite has one writer, so nothing to bound);
    `query_timeout_s` bounds each read, which then raises QueryTimeout; `retention` is the
    policy a writer declares in the store (readers take the store's)."""

    durability: Durability = Durability.FULL
    alive_s: float = BRIDGE_ALIVE_SECONDS
    hold_s: float = STORE_HOLD_SECONDS
    query_timeout_s: float = QUERY_TIMEOUT_SECONDS
    retention: RetentionPolicy = KEEP_FOREVER


DEFAULT_OPTIONS = StoreOptions()
