"""What every store implementation offers, and the plain data it trades in."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from bridge.event import Event, Rejection
from bridge.query import Query
from bridge.retention import RetentionPolicy

# 2: per-bridge heartbeats stamped on the store's clock (`heartbeats` replaces `bridges`).
# 3: search (issue 11): each event's time as a number, indexes for time ranges and text.
# 4: retention (issue 12): expired events' keys, retention counters, the policy in `meta`.
# 5: concurrent PostgreSQL writers: counters per writer slot, no commit lock.
# 6: SQLite's text index in a file of its own, behind the events (`sqlite_text`).
SCHEMA_VERSION = 6
# The rejected table keeps the newest rows, each cut to a bounded size: topic, reason and
# body together at most KEEP_ROW_BYTES of UTF-8 (a 60 KB topic would otherwise be kept
# whole, twice with its reason), so the table holds at most KEEP_REJECTED rows of
# KEEP_ROW_BYTES: 35 MiB of text, however large the messages refused.
KEEP_REJECTED = 10_000
KEEP_TOPIC_BYTES = 512
KEEP_REASON_BYTES = 1024
KEEP_BODY_BYTES = 2048
KEEP_ROW_BYTES = KEEP_TOPIC_BYTES + KEEP_REASON_BYTES + KEEP_BODY_BYTES


class StoreUnavailable(Exception):
    """The store cannot be read or written right now (missing, locked, full, read-only)."""


class StoreFull(StoreUnavailable):
    """The store has no room: its disk is full, or it reached the bridge's
    `--max-store-bytes`. Nothing of the batch was written; the bridge holds it, unacked,
    until there is room (see `bridge.capacity`)."""


class SchemaTooNew(Exception):
    """The store was written by a newer logagg; refusing to touch it."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the bridge refused, with what it was and why."""

    mqtt_topic: str
    body: bytes
    rejection: Rejection


EventKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Purged:
    """What one purge pass deleted: expired events and forgotten keys; `skipped` when
    another bridge held the purge."""

    events: int = 0
    keys_forgotten: int = 0
    skipped: bool = False


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
class RetentionStats:
    """The store's retention policy and what it did: events deleted (`events_expired`),
    keys kept for the dedup horizon (`keys_held`) and forgotten after it, events stored
    with a `timestamp` already older than their retention (`late`), and the arrival time
    of the oldest event still returned (None when there is none)."""

    policy: RetentionPolicy
    oldest_received_at: str | None = None
    events_expired: int = 0
    keys_held: int = 0
    keys_forgotten: int = 0
    late: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    unique_processed: int
    duplicate_dropped: int
    rejected: int
    topics: dict[str, TopicStats]
    rejected_by_code: dict[str, int]
    uptime_s: float | None
    retention: RetentionStats | None = None

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
class Bucket:
    """A histogram bar: how many matching events have a `timestamp` in
    [start, start + interval). `start` is a multiple of the interval since the Unix epoch."""

    start: datetime
    count: int


class QueryTimeout(StoreUnavailable):
    """A read ran past the store's statement timeout: the query is too expensive as asked."""


@dataclass(frozen=True, slots=True)
class StoredRejection:
    seq: int
    mqtt_topic: str
    code: str
    reason: str
    body: str
    received_at: str


@dataclass(frozen=True, slots=True)
class StoredRate:
    """Events stored per second of the store's clock, for a chart of the last minutes.

    `now` is that clock (Unix seconds), so a reader whose own clock differs can still place
    the seconds; `counts` maps each whole Unix second to the events stored in it, oldest
    first, seconds with none left out; the current second is still filling. `next_after` is the
    store's newest seq (0 when empty): pass it as `after` to count only what came since
    (a store made anew answers with its own, so a poller follows it).
    """

    now: float
    counts: dict[int, int]
    next_after: int


@dataclass(frozen=True, slots=True)
class SpaceReport:
    """What a bridge last said about the store's room. `full` is why it stopped writing
    (the cap reached, or the disk full), None while it writes; `used_bytes` its last
    measure, `max_bytes` its cap (None: no cap)."""

    client_id: str
    full: str | None
    used_bytes: int | None
    max_bytes: int | None

    def to_json(self) -> str:
        return json.dumps(
            {"full": self.full, "used_bytes": self.used_bytes, "max_bytes": self.max_bytes}
        )

    @classmethod
    def from_json(cls, client_id: str, text: str) -> SpaceReport:
        data = json.loads(text)
        return cls(client_id, data.get("full"), data.get("used_bytes"), data.get("max_bytes"))


class StoreReader(Protocol):
    """What the sidecar and the read-only commands hold: a store they can only read."""

    def bridge_uptime(self, client_id: str) -> float | None:
        """Seconds since that bridge's run began, or None unless it beat in the alive window."""
        ...

    def stats(self) -> Stats: ...

    def events(
        self,
        *,
        topic: str | None,
        after: int,
        limit: int,
        newest: bool = False,
        max_bytes: int | None = None,
    ) -> list[StoredEvent]:
        """Up to `limit` events with seq above `after`, oldest first: the first ones, or
        with `newest` the last ones (where a tail starts); fewer when their payloads add
        up to more than `max_bytes` (but at least one)."""
        ...

    def search(self, query: Query, *, max_bytes: int | None = None) -> list[StoredEvent]:
        """The page of events `query` asks for: matching every filter, in its order, after
        its cursor's position (or `after`), at most `limit`; fewer when their payloads add
        up to more than `max_bytes` (but at least one). The same events, in the same order,
        as `bridge.query.reference_page` finds by brute force. Raises QueryTimeout when the
        query runs past the store's statement timeout."""
        ...

    def export_page(self, query: Query, *, max_bytes: int) -> list[tuple[int, str]]:
        """The page `query` asks for (as `search`, `asc`), each event as `(seq, NDJSON
        line)` built from the stored text (`bridge.store.export`): fewer when payloads add
        up past `max_bytes` (but at least one)."""
        ...

    def newest_seq(self) -> int:
        """The highest `seq` stored (0 when there is none): where an export stops."""
        ...

    def histogram(self, query: Query, interval_s: int) -> list[Bucket]:
        """The non-empty buckets of `interval_s` seconds, oldest first, counting the events
        matching `query`'s filters (its order, position and limit aside) by `timestamp`."""
        ...

    def time_span(self, query: Query) -> tuple[datetime, datetime] | None:
        """The earliest and latest `timestamp` of the events matching `query`'s filters
        (for choosing a histogram's interval), or None when none match."""
        ...

    def rejected(
        self, *, after: int, limit: int, newest: bool = False
    ) -> list[StoredRejection]: ...

    def stored_per_second(self, *, seconds: float, after: int = 0) -> StoredRate:
        """Events with seq above `after` stored in the last `seconds`, per second. Reads by
        seq, never scanning older rows: the cost follows the events counted, not the store."""
        ...

    def space_reports(self) -> list[SpaceReport]:
        """What each live bridge last said about the store's room (`bridge.store.space`)."""
        ...

    def close(self) -> None: ...


class StoreWriter(StoreReader, Protocol):
    """What the bridge holds: a durable, deduplicating event store it writes (and may read).

    `record` is the whole write side: in one transaction it inserts the new
    events, counts the duplicates and keeps the rejections, so the stored
    events and the counters never disagree, whatever crashes in between.
    """

    def record(self, events: Sequence[Event], refused: Sequence[Refused]) -> BatchOutcome: ...

    def heartbeat(self, client_id: str, run_id: str) -> None:
        """Say that bridge `client_id` is alive, stamped on the store's clock, never the
        bridge's; `run_id` names this run of it: a new run starts its uptime afresh."""
        ...

    def used_bytes(self) -> int:
        """The size `--max-store-bytes` caps, measured now (`bridge.store.space`)."""
        ...

    def reusable_bytes(self) -> int:
        """Room inside the files `used_bytes` counts, which new rows fill before the files
        grow: PostgreSQL's free space map, where it can be read; 0 where the measure
        already leaves it out (SQLite) or it cannot be read (`bridge.store.space`)."""
        ...

    def report_space(self, client_id: str, report: SpaceReport | None) -> None:
        """Keep `report` for readers to see (None: remove `client_id`'s)."""

    def purge(self, stopping: Callable[[], bool]) -> Purged:
        """Delete what the store's retention policy says has expired, keeping each deleted
        event's key for the dedup horizon, and forget the keys past it: in short
        transactions, each counting what it deleted; stops early once `stopping()`."""
        ...

    @property
    def policy(self) -> RetentionPolicy:
        """The retention policy the store holds (refreshed by each purge)."""
        ...


def check_schema_version(found: int) -> None:
    """Refuse a store written by a newer logagg: its data may mean something we don't know."""
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"store schema version {found} is newer than this logagg's {SCHEMA_VERSION}:"
            " upgrade logagg"
        )


def iso_utc(moment: datetime) -> str:
    """How both stores show `received_at`: UTC, microseconds, always the same width."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


_encode_json = msgspec.json.Encoder().encode


def payload_json(event: Event) -> str:
    """The payload as stored: compact JSON, keys in the order sent (a repeated key once, with
    its last value), non-ASCII as is. msgspec writes it 30 times faster than `json.dumps`,
    with the same values (floats in their shortest form: `1e16`, not `1e+16`;
    tests/test_payload_text.py holds it to `json.dumps`'s meaning)."""
    return _encode_json(event.payload).decode()


def _no_nul(text: str) -> str:
    # PostgreSQL text cannot hold NUL; both stores show it escaped, like other bad bytes.
    return text.replace("\x00", "\\x00")


def cut(text: str, limit: int, size: int | None = None) -> str:
    """`text` in at most `limit` bytes of UTF-8, with a note of the whole size when cut;
    `size` is that size when `text` is already a prefix of something larger."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit and size is None:
        return text
    note = f"… [{size or len(encoded)} bytes in all]"
    keep = max(limit - len(note.encode()), 0)
    return encoded[:keep].decode("utf-8", "ignore") + note


def rejected_row(refused: Refused) -> tuple[str, str, str, str]:
    """(mqtt_topic, code, reason, body) as stored and logged: printable, each cut to its
    share of KEEP_ROW_BYTES with a note of its size."""
    # Bytes that are not UTF-8 grow fourfold as \xNN: cut before and after decoding.
    size = len(refused.body)
    body = refused.body[:KEEP_BODY_BYTES].decode("utf-8", "backslashreplace")
    return (
        cut(_no_nul(refused.mqtt_topic), KEEP_TOPIC_BYTES),
        refused.rejection.code,
        cut(_no_nul(refused.rejection.reason), KEEP_REASON_BYTES),
        cut(_no_nul(body), KEEP_BODY_BYTES, size if size > KEEP_BODY_BYTES else None),
    )


def first_copies(events: Sequence[Event]) -> list[Event]:
    """The first copy of each identity in the batch, in arrival order: the copy that wins."""
    seen: set[EventKey] = set()
    firsts = []
    for e in events:
        key = (e.topic, e.event_id)
        if key not in seen:
            seen.add(key)
            firsts.append(e)
    return firsts


@dataclass(frozen=True, slots=True)
class BatchTally:
    """What one batch adds to the counters, each list sorted by its key.

    Sorted, because concurrent writers (several bridges on PostgreSQL) that
    update counter rows in one global order cannot deadlock on them.
    """

    outcome: BatchOutcome
    topics: list[tuple[str, int, int]]  # (topic, new, duplicates)
    codes: list[tuple[str, int]]  # (rejection code, count)


def tally(
    events: Sequence[Event], refused: Sequence[Refused], inserted: set[EventKey]
) -> BatchTally:
    """Split a batch into new events and duplicates from the keys the store actually inserted.

    Walks the batch in arrival order: the first copy of an inserted key is new,
    everything else (a copy already stored, or a second copy in this batch) is
    a duplicate.
    """
    fresh = set(inserted)
    outcome = BatchOutcome(rejected=len(refused))
    new: Counter[str] = Counter()
    dup: Counter[str] = Counter()
    for e in events:
        key = (e.topic, e.event_id)
        if key in fresh:
            fresh.discard(key)
            new[e.topic] += 1
        else:
            dup[e.topic] += 1
            outcome.duplicates.append(key)
    outcome.stored = sum(new.values())
    codes = Counter(r.rejection.code for r in refused)
    return BatchTally(
        outcome=outcome,
        topics=[(t, new[t], dup[t]) for t in sorted(new.keys() | dup.keys())],
        codes=sorted(codes.items()),
    )
