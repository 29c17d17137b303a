"""SQLite's side of search (issue 11): a store from before search is upgraded and every
old event is found; a read past the query timeout is stopped."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

import bridge.store.sqlite as sqlite_store
from bridge.query import QueryError, parse_query
from bridge.store import (
    QueryTimeout,
    StoreOptions,
    StoreUnavailable,
    open_reader,
    open_writer,
    parse_store_url,
)
from bridge.store.base import SCHEMA_VERSION
from bridge.store.sqlite_search import Indexed, index_events
from tests.helpers import NOW, random_events

# What schema 3 added: without it, a store is as logagg before search left it.
_BACK_TO_SCHEMA_2 = """
DROP TABLE events_fts;
DROP TABLE minute_seqs;
DROP INDEX events_topic_ts;
ALTER TABLE events DROP COLUMN ts;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""


def test_a_store_from_before_search_is_upgraded_and_every_event_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgraded on open, in steps that each commit: killed midway, the next open resumes."""
    path = tmp_path / "v2.db"
    url = parse_store_url(f"sqlite:///{path}")
    events = random_events(300, seed=3)
    with closing(open_writer(url)) as store:
        store.record(events, [])
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_BACK_TO_SCHEMA_2)
    everything = parse_query([("limit", "1000")], now=NOW)
    assert not isinstance(everything, QueryError)

    # The first upgrade dies after indexing 100 events: search says how far it got.
    monkeypatch.setattr(sqlite_store, "_UPGRADE_FIRST_STEP", 100)

    def index_once(conn: sqlite3.Connection, stored: Sequence[Indexed]) -> None:
        monkeypatch.setattr(f"{sqlite_store.__name__}.index_events", crash)
        index_events(conn, stored)

    def crash(conn: sqlite3.Connection, stored: Sequence[Indexed]) -> None:
        raise RuntimeError("killed mid-upgrade")

    monkeypatch.setattr(f"{sqlite_store.__name__}.index_events", index_once)
    with pytest.raises(RuntimeError, match="killed mid-upgrade"):
        open_writer(url)
    with (
        closing(open_reader(url)) as reader,
        pytest.raises(StoreUnavailable, match=r"search is not ready: .* \(33% done\)"),
    ):
        reader.search(everything)

    monkeypatch.setattr(f"{sqlite_store.__name__}.index_events", index_events)
    with caplog.at_level(logging.INFO, "logagg.bridge.store"):
        open_writer(url).close()
    assert "100% indexed" in caplog.text
    assert "indexing up to 200 stored events" in caplog.text
    assert "200 events indexed in" in caplog.text

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
            str(SCHEMA_VERSION),
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
