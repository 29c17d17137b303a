"""`GET /metrics`: the store's counters in the Prometheus text format, read at scrape time.

The store holds the truth (its counters change in the transaction that stores
the events), so a collector asks it on every scrape instead of counting on its
own: restarting the sidecar, or running several, cannot make the numbers drift.
Per-topic series are kept to the `TOP_TOPICS` busiest topics, so a publisher
inventing topics cannot blow up Prometheus; the unlabelled totals count them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.broker_stats import BrokerStats
from api.models import BUSIEST_TOPICS, busiest_topics
from bridge.store import RetentionStats, SQLiteUrl, StoreReader, StoreUnavailable, StoreUrl

logger = logging.getLogger("logagg.api.metrics")

# As many as /stats lists by default.
TOP_TOPICS = BUSIEST_TOPICS


def store_size_bytes(url: StoreUrl) -> int | None:
    """The SQLite store's database file plus its WAL, in bytes; None for other stores, or
    before the bridge created the file."""
    if not isinstance(url, SQLiteUrl):
        return None
    path = url.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    wal = path.with_name(path.name + "-wal")
    return size + (wal.stat().st_size if wal.exists() else 0)


class StoreCollector(Collector):
    """Reads `store.stats()` on each scrape; an unreadable store gives `logagg_store_up 0`
    and no counters, rather than a failed scrape."""

    def __init__(self, store: StoreReader, url: StoreUrl, top_topics: int = TOP_TOPICS) -> None:
        self._store = store
        self._url = url
        self._top_topics = top_topics

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("logagg_store_up", "1 when the store could be read for this scrape")
        try:
            stats = self._store.stats()
        except StoreUnavailable as exc:
            logger.debug("metrics: store unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        yield CounterMetricFamily(
            "logagg_events_received",
            "MQTT messages the bridges recorded: stored + duplicates + rejected",
            value=stats.received,
        )
        yield CounterMetricFamily(
            "logagg_events_stored",
            "Events stored, each (topic, event_id) once",
            value=stats.unique_processed,
        )
        yield CounterMetricFamily(
            "logagg_events_duplicates",
            "Copies of an already stored (topic, event_id), dropped",
            value=stats.duplicate_dropped,
        )
        rejected = CounterMetricFamily(
            "logagg_events_rejected",
            "Malformed messages refused, by reason code",
            labels=["reason"],
        )
        for code, count in sorted(stats.rejected_by_code.items()):
            rejected.add_metric([code], count)
        yield rejected

        stored = CounterMetricFamily(
            "logagg_topic_events_stored",
            f"Events stored, for the {self._top_topics} busiest topics",
            labels=["topic"],
        )
        duplicates = CounterMetricFamily(
            "logagg_topic_events_duplicates",
            f"Duplicates dropped, for the {self._top_topics} busiest topics",
            labels=["topic"],
        )
        for topic, counts in busiest_topics(stats.topics, self._top_topics):
            stored.add_metric([topic], counts.unique_processed)
            duplicates.add_metric([topic], counts.duplicate_dropped)
        yield stored
        yield duplicates
        yield GaugeMetricFamily("logagg_topics", "Topics with events", value=len(stats.topics))

        yield GaugeMetricFamily(
            "logagg_bridge_up",
            "1 while a bridge's heartbeat in the store is fresh",
            value=0 if stats.uptime_s is None else 1,
        )
        if stats.uptime_s is not None:
            yield GaugeMetricFamily(
                "logagg_bridge_uptime_seconds",
                "The oldest live bridge's uptime",
                value=stats.uptime_s,
            )
        if stats.retention is not None:
            yield from retention_metrics(stats.retention)
        size = store_size_bytes(self._url)
        if size is not None:
            yield GaugeMetricFamily(
                "logagg_store_size_bytes", "The SQLite database file and its WAL", value=size
            )


def retention_metrics(stats: RetentionStats) -> Iterator[Metric]:
    """The store's retention (+Inf: forever) and what it deleted and remembers."""
    policy = stats.policy
    yield GaugeMetricFamily(
        "logagg_retention_seconds",
        "How long events are kept after arrival (topics without an override); +Inf: forever",
        value=math.inf if policy.default_s is None else policy.default_s,
    )
    yield GaugeMetricFamily(
        "logagg_dedup_horizon_seconds",
        "How long a deleted event's key is kept after it expired; +Inf: forever",
        value=math.inf if policy.horizon_s is None else policy.horizon_s,
    )
    yield CounterMetricFamily(
        "logagg_events_expired", "Events deleted by retention", value=stats.events_expired
    )
    yield GaugeMetricFamily(
        "logagg_dedup_keys_held",
        "Keys of deleted events kept for the dedup horizon",
        value=stats.keys_held,
    )
    yield CounterMetricFamily(
        "logagg_dedup_keys_forgotten",
        "Keys forgotten past the dedup horizon",
        value=stats.keys_forgotten,
    )
    yield CounterMetricFamily(
        "logagg_events_late",
        "Events stored with a timestamp already older than their retention",
        value=stats.late,
    )
    if stats.oldest_received_at is not None:
        yield GaugeMetricFamily(
            "logagg_oldest_event_received_timestamp_seconds",
            "When the oldest event reads return arrived (Unix time)",
            value=datetime.fromisoformat(stats.oldest_received_at).timestamp(),
        )


class BrokerCollector(Collector):
    """The broker's `$SYS` counters as the sidecar last read them; `logagg_broker_stats_up 0`
    and nothing else while there is no reading."""

    def __init__(self, broker: BrokerStats) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        report = self._broker.report()
        yield GaugeMetricFamily(
            "logagg_broker_stats_up",
            "1 while the sidecar has the broker's $SYS counters",
            value=1 if report.known else 0,
        )
        if report.dropped is not None:
            # Since the broker started: it resets with the broker, which rate() allows for.
            yield CounterMetricFamily(
                "logagg_broker_dropped",
                "Messages the broker acknowledged and dropped, a client's queue being full",
                value=report.dropped,
            )
        gauges = (
            (
                "queued_messages",
                "Messages the broker holds, retained excluded",
                report.queued_messages,
            ),
            ("queued_bytes", "Payload bytes the broker holds, retained too", report.queued_bytes),
            (
                "queue_max_messages",
                "The broker's queue limit per client, 0: none",
                report.max_messages,
            ),
            ("queue_max_bytes", "The broker's queue limit per client in bytes", report.max_bytes),
        )
        for name, help_text, number in gauges:
            if number is not None:
                yield GaugeMetricFamily(f"logagg_broker_{name}", help_text, value=number)


def sidecar_registry(store: StoreReader, url: StoreUrl, broker: BrokerStats) -> CollectorRegistry:
    """What `GET /metrics` serves: the store's counters, the broker's, and this process's CPU
    and memory."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, url))
    registry.register(BrokerCollector(broker))
    ProcessCollector(registry=registry)
    return registry
