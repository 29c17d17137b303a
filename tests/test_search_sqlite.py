"""SQLite's side of search (issue 11): a store from before search is upgraded and every
old event is found; a read past the query timeout is stopped."""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from bridge.query import QueryError, parse_query
from bridge.store import (
    QueryTimeout,
    StoreOptions,
    StoreUnavailable,
    open_reader,
    open_writer,
    parse_store_url,
)
from tests.test_search import NOW, random_events

# The schema 2 tables an upgrade changes, as logagg before search created them.
_SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema_version', '2');
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    event_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (topic, event_id)
);
CREATE INDEX events_topic_seq ON events (topic, seq);
CREATE TABLE topic_stats (
    topic TEXT PRIMARY KEY,
    unique_processed INTEGER NOT NULL,
    duplicate_dropped INTEGER NOT NULL
);
"""


def test_a_store_from_before_search_is_upgraded_and_every_event_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "v2.db"
    events = random_events(300, seed=3)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(_SCHEMA_2)
        conn.executemany(
            "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
            " VALUES (?, ?, ?, ?, ?, '2026-12-01T00:00:00.000000+00:00')",
            [
                (e.topic, e.event_id, e.timestamp.isoformat(), e.source, json.dumps(e.payload))
                for e in events
            ],
        )
    url = parse_store_url(f"sqlite:///{path}")
    everything = parse_query([("limit", "1000")], now=NOW)
    assert not isinstance(everything, QueryError)
    with (
        closing(open_reader(url)) as reader,
        pytest.raises(StoreUnavailable, match="search is not ready"),
    ):
        reader.search(everything)

    with caplog.at_level(logging.INFO, "logagg.bridge.store"):
        open_writer(url).close()
    assert "100% indexed" in caplog.text
    assert "300 events indexed in" in caplog.text

    with closing(open_reader(url)) as reader:
        stored = reader.search(everything)
        assert [e.event_id for e in stored] == [e.event_id for e in events]
        for event in stored:
            query = parse_query(
                [
                    ("topic", event.topic),
                    ("since", event.timestamp),
                    ("until", (NOW + timedelta(days=1)).isoformat()),
                    ("q", f'"{event.event_id}"'),
                ],
                now=NOW,
            )
            assert not isinstance(query, QueryError)
            assert event in reader.search(query)
        assert sum(b.count for b in reader.histogram(everything, 3600)) == len(events)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )


def test_a_read_past_the_query_timeout_is_stopped(tmp_path: Path) -> None:
    """A field no event has: every payload is read; given 1 ms, the read is stopped."""
    url = parse_store_url(f"sqlite:///{tmp_path / 'store.db'}")
    with closing(open_writer(url)) as store:
        events = random_events(20_000, seed=5)
        for start in range(0, len(events), 1000):
            store.record(events[start : start + 1000], [])
    query = parse_query([("field", "nowhere:1")], now=NOW)
    assert not isinstance(query, QueryError)
    with closing(open_reader(url)) as reader:
        assert reader.search(query) == []
    with (
        closing(open_reader(url, StoreOptions(query_timeout_s=0.001))) as hurried,
        pytest.raises(QueryTimeout, match="query_timeout_s"),
    ):
        hurried.search(query)
