"""Prometheus metrics: the sidecar's `/metrics` (the store's counters) and the bridge's own."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import TOP_TOPICS, StoreCollector, store_size_bytes
from bridge.store import SpaceReport, Stats, StoreUnavailable, TopicStats, parse_store_url
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import (
    Samples,
    Sidecar,
    StartBridge,
    make_stream,
    nowhere,
    publish_raw,
    samples,
    value,
    wait_for_stats,
)


@pytest.mark.broker
def test_sidecar_metrics_match_stats(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    """Every counter in /metrics is the number /stats shows, read from the store at scrape."""
    bad = [("logs/x", b"not json"), ("logs/x", b"{}"), ("logs/y", b"[1]")]
    publish_raw(broker.port, make_stream(400, 0.25, topics=3) + bad)
    wait_for_stats(store_url, lambda s: s.received == 403 and s.uptime_s is not None)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    scrape = samples(response.text)
    stats = client.get("/stats").json()
    assert value(scrape, "logagg_store_up") == 1
    assert value(scrape, "logagg_events_received_total") == stats["received"] == 403
    assert value(scrape, "logagg_events_stored_total") == stats["unique_processed"] == 300
    assert value(scrape, "logagg_events_duplicates_total") == stats["duplicate_dropped"] == 100
    for code, count in stats["rejected_by_code"].items():
        assert value(scrape, "logagg_events_rejected_total", reason=code) == count
    assert sum(stats["rejected_by_code"].values()) == 3
    for topic, counts in stats["topics"].items():
        stored = value(scrape, "logagg_topic_events_stored_total", topic=topic)
        duplicates = value(scrape, "logagg_topic_events_duplicates_total", topic=topic)
        assert (stored, duplicates) == (counts["unique_processed"], counts["duplicate_dropped"])
    assert value(scrape, "logagg_topics") == 3
    assert value(scrape, "logagg_bridge_up") == 1
    assert value(scrape, "logagg_bridge_uptime_seconds") >= 0
    size = store_size_bytes(parse_store_url(store_url))
    assert size is not None
    assert value(scrape, "logagg_store_size_bytes") == size > 0
    assert value(scrape, "process_resident_memory_bytes") > 0


def test_sidecar_metrics_without_a_store_say_so(sidecar: Sidecar) -> None:
    """Before the bridge created the store, the scrape still succeeds: logagg_store_up 0."""
    scrape = samples(sidecar(nowhere()).get("/metrics").text)
    assert value(scrape, "logagg_store_up") == 0
    assert not any(name.startswith("logagg_events") for name, _ in scrape)


class FakeStore:
    def __init__(self, stats: Stats | None) -> None:
        self._stats = stats

    def stats(self) -> Stats:
        if self._stats is None:
            raise StoreUnavailable("gone")
        return self._stats

    def space_reports(self) -> list[SpaceReport]:
        return []


def test_sidecar_metrics_label_only_the_busiest_topics() -> None:
    """Topics are label values: only the TOP_TOPICS busiest get series, the totals count all."""
    topics = {f"t{i:03d}": TopicStats(unique_processed=i, duplicate_dropped=1) for i in range(80)}
    stats = Stats(
        unique_processed=sum(range(80)),
        duplicate_dropped=80,
        rejected=0,
        topics=topics,
        rejected_by_code={},
        uptime_s=None,
    )
    registry = CollectorRegistry()
    registry.register(StoreCollector(FakeStore(stats), parse_store_url("postgresql://db/logagg")))  # type: ignore[arg-type]
    scrape = samples(generate_latest(registry).decode())
    labelled = {
        dict(labels)["topic"]
        for name, labels in scrape
        if name == "logagg_topic_events_stored_total"
    }
    assert labelled == {f"t{i:03d}" for i in range(80 - TOP_TOPICS, 80)}
    assert value(scrape, "logagg_topics") == 80
    assert value(scrape, "logagg_events_stored_total") == sum(range(80))
    assert value(scrape, "logagg_bridge_up") == 0
    assert ("logagg_store_size_bytes", frozenset()) not in scrape  # not a SQLite store


def test_store_size_bytes_counts_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    url = parse_store_url(f"sqlite:///{db}")
    assert store_size_bytes(url) is None
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (randomblob(10000))")
    conn.commit()
    try:
        wal = Path(f"{db}-wal").stat().st_size
        assert wal > 10000
        assert store_size_bytes(url) == db.stat().st_size + wal
    finally:
        conn.close()
    assert store_size_bytes(parse_store_url("postgresql://u@h/db")) is None


def scrape_bridge(port: int) -> Samples:
    return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


@pytest.mark.broker
def test_bridge_metrics_batches_acks_retries_and_connection(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """`--metrics-port`: messages received = committed = acked, one histogram observation
    per batch, store retries while the store is locked, the broker link going down."""
    port = free_port()
    bridge = bridge_factory(metrics_port=str(port))
    assert f"metrics on http://127.0.0.1:{port}/metrics" in bridge.output()
    publish_raw(broker.port, make_stream(500, 0.2))
    wait_for_stats(store_url, lambda s: s.received == 500)

    deadline = time.monotonic() + 10
    while (scrape := scrape_bridge(port))[
        ("logagg_bridge_messages_acked_total", frozenset())
    ] < 500:
        assert time.monotonic() < deadline, scrape
        time.sleep(0.1)
    for name in ("received", "committed", "acked"):
        assert value(scrape, f"logagg_bridge_messages_{name}_total") == 500
    batches = value(scrape, "logagg_bridge_batch_size_messages_count")
    assert value(scrape, "logagg_bridge_batch_size_messages_sum") == 500
    assert value(scrape, "logagg_bridge_commit_duration_seconds_count") == batches >= 1
    assert 0 < value(scrape, "logagg_bridge_commit_duration_seconds_sum") < 60
    assert value(scrape, "logagg_bridge_broker_connected") == 1
    assert value(scrape, "logagg_bridge_store_retries_total") == 0

    blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        publish_raw(broker.port, make_stream(1, 0.0, seed=2))
        deadline = time.monotonic() + 30
        while value(scrape_bridge(port), "logagg_bridge_store_retries_total") < 1:
            assert time.monotonic() < deadline, bridge.output()
            time.sleep(0.2)
    finally:
        blocker.rollback()
        blocker.close()
    wait_for_stats(store_url, lambda s: s.received == 501)

    broker.stop()
    deadline = time.monotonic() + 10
    while value(scrape_bridge(port), "logagg_bridge_broker_connected") != 0:
        assert time.monotonic() < deadline, bridge.output()
        time.sleep(0.1)


@pytest.mark.broker
def test_bridge_metrics_port_in_use_is_a_clear_error(
    broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    port = free_port()
    bridge_factory(metrics_port=str(port))
    second = bridge_factory(wait=False, client_id="second", metrics_port=str(port))
    assert second.process is not None
    assert second.process.wait(30) == 2
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in second.output()
