"""What the HTTP endpoints answer: pydantic models, so /docs and the OpenAPI schema are exact.

Stored rows are the store's own dataclasses (`StoredEvent`, `StoredRejection`,
`TopicStats`), which pydantic validates and documents as they are.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from bridge.retention import show_duration
from bridge.store import Bucket, RetentionStats, Stats, StoredEvent, StoredRejection, TopicStats

# /stats lists this many topics unless asked for more, and /metrics labels as many.
BUSIEST_TOPICS = 50
# /stats/rate counts at most this far back: its cost follows the events it counts.
RATE_WINDOW_MAX_S = 3600


class Problem(BaseModel):
    detail: str


class ItemError(BaseModel):
    index: int | None = Field(
        description="Position in the batch (0 for a single event); null for the body as a whole"
    )
    field: str | None = Field(description="The failing field, dotted; null for the whole item")
    message: str


class PublishInvalid(BaseModel):
    """422: nothing of the batch was published."""

    detail: list[ItemError]


class PublishAccepted(BaseModel):
    """Every event was acknowledged by the broker; the bridge stores it from there."""

    accepted: int


class PublishFailed(BaseModel):
    """503: the first `accepted` events were acknowledged. Resending the whole batch is safe:
    `(topic, event_id)` copies are counted as duplicates, not stored twice."""

    detail: str
    accepted: int


class RetentionReport(BaseModel):
    """The store's retention policy (as the last bridge started declared it) and what it did."""

    retention: str = Field(description="How long events are kept after arrival, or forever")
    retention_s: float | None = Field(description="The same in seconds; null: forever")
    retention_topics: list[str] = Field(
        description="Per-topic overrides, FILTER=DURATION, the first match wins"
    )
    dedup_horizon: str = Field(
        description="How long a deleted event's key is kept, so a copy is still a duplicate"
    )
    dedup_horizon_s: float | None = Field(description="The same in seconds; null: forever")
    oldest_received_at: str | None = Field(
        description="When the oldest event reads still return arrived; null when none"
    )
    events_expired: int = Field(description="Events deleted because their retention ran out")
    keys_held: int = Field(description="Keys of deleted events kept for the dedup horizon")
    keys_forgotten: int = Field(
        description="Keys forgotten after the horizon: a copy of their event is stored again"
    )
    late: int = Field(
        description="Events stored with a timestamp already older than their retention"
    )

    @classmethod
    def of(cls, stats: RetentionStats) -> RetentionReport:
        policy = stats.policy
        return cls(
            retention=show_duration(policy.default_s),
            retention_s=policy.default_s,
            retention_topics=[rule.text for rule in policy.rules],
            dedup_horizon=show_duration(policy.horizon_s),
            dedup_horizon_s=policy.horizon_s,
            oldest_received_at=stats.oldest_received_at,
            events_expired=stats.events_expired,
            keys_held=stats.keys_held,
            keys_forgotten=stats.keys_forgotten,
            late=stats.late,
        )


class StatsReport(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    rejected: int
    topics: dict[str, TopicStats] = Field(description="The busiest topics first (`?topics=`)")
    topics_total: int = Field(description="How many topics there are, listed or not")
    rejected_by_code: dict[str, int]
    uptime_s: float | None = Field(description="The oldest live bridge's; null when none is")
    # From the broker's $SYS counters (api/broker_stats.py); null while there is no reading.
    broker_dropped: int | None = Field(
        default=None,
        description="Messages the broker acknowledged to their publisher and then dropped,"
        " because a client's queue was over its limit, since the broker started",
    )
    broker_queued_messages: int | None = Field(
        default=None, description="Messages the broker holds for its clients, retained excluded"
    )
    broker_queued_bytes: int | None = Field(
        default=None,
        description="Payload bytes the broker holds (queued and retained messages)",
    )
    broker_queue_max_messages: int | None = Field(
        default=None, description="The broker's per-client queue limit, as configured (0: none)"
    )
    broker_queue_max_bytes: int | None = Field(
        default=None, description="The broker's per-client queue limit in bytes (0: none)"
    )
    broker_uptime_s: int | None = Field(default=None, description="Since the broker started")
    broker_warning: str | None = Field(
        default=None,
        description="Set once the broker dropped messages or a queue reaches 80% of a limit",
    )
    retention: RetentionReport | None = Field(
        default=None, description="Retention and the dedup horizon (issue 12)"
    )

    @classmethod
    def of(cls, stats: Stats, topics: int | None) -> StatsReport:
        """The report on `stats`, listing the `topics` busiest topics (None: all of them)."""
        ranked = busiest_topics(stats.topics, len(stats.topics) if topics is None else topics)
        return cls(
            received=stats.received,
            unique_processed=stats.unique_processed,
            duplicate_dropped=stats.duplicate_dropped,
            rejected=stats.rejected,
            topics=dict(ranked),
            topics_total=len(stats.topics),
            rejected_by_code=stats.rejected_by_code,
            uptime_s=stats.uptime_s,
            retention=None if stats.retention is None else RetentionReport.of(stats.retention),
        )


def busiest_topics(topics: dict[str, TopicStats], count: int) -> list[tuple[str, TopicStats]]:
    """The `count` topics with the most events (stored and duplicates), busiest first."""
    ranked = sorted(
        topics.items(),
        key=lambda item: (-item[1].unique_processed - item[1].duplicate_dropped, item[0]),
    )
    return ranked[:count]


class EventPage(BaseModel):
    events: list[StoredEvent]
    next_after: int | None = Field(
        description="The last event's seq, to pass as `after` (oldest first); null if empty"
    )
    next: str | None = Field(
        default=None,
        description="Pass as `next`, with the same filters, for the following page; null when"
        " an `order=desc` page is empty (an empty `asc` page has one: poll it for new events)",
    )


class HistogramPage(BaseModel):
    interval: str = Field(description="The buckets' width: `30s`, `1m`, `1h`, `1d`…")
    buckets: list[Bucket] = Field(
        description="Oldest first, every bucket of the range, empty ones included: `start` is"
        " a multiple of the interval since the Unix epoch, `count` the matching events with a"
        " `timestamp` in [start, start + interval)"
    )
    total: int = Field(description="The sum of the counts: how many events match")


class RejectedPage(BaseModel):
    rejected: list[StoredRejection]
    next_after: int | None = Field(description="Pass as `after` for the next page; null if empty")


class Health(BaseModel):
    store: str = Field(description='"ok", or why the store cannot be read')
    broker: str = Field(description='"ok", or why the broker cannot be reached')
    bridge: str = Field(
        default="unknown",
        description='"ok" while a bridge heartbeat is fresh, else why not. Informational: it does'
        " not change the status code, since the sidecar may run before or without a bridge",
    )
    broker_queue: str = Field(
        default="unknown",
        description='"ok" while the broker reports no drops and its queue is below 80% of its'
        ' limits; else a warning saying which; "unknown" without its $SYS counters.'
        " Informational: a sidecar that works is not made unhealthy by a warning",
    )
