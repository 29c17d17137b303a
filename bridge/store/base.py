"""What every store implementation offers, and the plain data it trades in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.event import Event, Rejection

SCHEMA_VERSION = 1
# A bridge whose heartbeat is older than this is not counted as running.
BRIDGE_ALIVE_SECONDS = 15.0


class StoreUnavailable(Exception):
    """The store cannot be read or written right now (missing, locked, full, read-only)."""


class SchemaTooNew(Exception):
    """The store was written by a newer logagg; refusing to touch it."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the bridge refused, with what it was and why."""

    mqtt_topic: str
    body: bytes
    rejection: Rejection


EventKey = tuple[str, str]


@dataclass(slots=True)
class BatchOutcome:
    """What one committed batch did: every duplicate is named so it can be logged."""

    stored: int = 0
    duplicates: list[EventKey] = field(default_factory=list)
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class TopicStats:
    unique_processed: int
    duplicate_dropped: int


@dataclass(frozen=True, slots=True)
class Stats:
    unique_processed: int
    duplicate_dropped: int
    rejected: int
    topics: dict[str, TopicStats]
    rejected_by_code: dict[str, int]
    uptime_s: float | None

    @property
    def received(self) -> int:
        return self.unique_processed + self.duplicate_dropped + self.rejected


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: dict[str, Any]
    received_at: str


@dataclass(frozen=True, slots=True)
class StoredRejection:
    seq: int
    mqtt_topic: str
    code: str
    reason: str
    body: str
    received_at: str


class Store(Protocol):
    """A durable, deduplicating event store.

    `record` is the whole write side: in one transaction it inserts the new
    events, counts the duplicates and keeps the rejections, so the stored
    events and the counters never disagree, whatever crashes in between.
    """

    def record(self, events: Sequence[Event], refused: Sequence[Refused]) -> BatchOutcome: ...

    def heartbeat(self, client_id: str, started_at: float) -> None: ...

    def stats(self) -> Stats: ...

    def events(self, *, topic: str | None, after: int, limit: int) -> list[StoredEvent]: ...

    def rejected(self, *, after: int, limit: int) -> list[StoredRejection]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
