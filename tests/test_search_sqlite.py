"""SQLite's side of search (issue 11): a store from before search is upgraded and every
old event is found; a read past the query timeout is stopped; the text index, in its own
file behind the events, is waited for, and built again when lost or wrong."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

import bridge.store.sqlite as sqlite_store
import bridge.store.sqlite_text as sqlite_text
from bridge.event import Event
from bridge.query import Query, QueryError, parse_query
from bridge.store import (
    QueryTimeout,
    StoreOptions,
    StoreUnavailable,
    open_reader,
    open_writer,
    parse_store_url,
)
from bridge.store.base import SCHEMA_VERSION
from bridge.store.sqlite_search import note_minutes
from bridge.store.sqlite_text import text_path
from tests.helpers import NOW, random_events

# What schema 3 added: without it, a store is as logagg before search left it.
_BACK_TO_SCHEMA_2 = """
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
    text_path(path).unlink()
    everything = parse_query([("limit", "1000")], now=NOW)
    assert not isinstance(everything, QueryError)

    # The first upgrade dies after indexing 100 events: search says how far it got.
    monkeypatch.setattr(sqlite_store, "_UPGRADE_FIRST_STEP", 100)

    def stamp_once(conn: sqlite3.Connection, stamped: Sequence[tuple[int, int]]) -> None:
        monkeypatch.setattr(f"{sqlite_store.__name__}.note_minutes", crash)
        note_minutes(conn, stamped)

    def crash(conn: sqlite3.Connection, stamped: Sequence[tuple[int, int]]) -> None:
        raise RuntimeError("killed mid-upgrade")

    monkeypatch.setattr(f"{sqlite_store.__name__}.note_minutes", stamp_once)
    with pytest.raises(RuntimeError, match="killed mid-upgrade"):
        open_writer(url)
    with (
        closing(open_reader(url)) as reader,
        pytest.raises(StoreUnavailable, match=r"search is not ready: .* \(33% done\)"),
    ):
        reader.search(everything)

    monkeypatch.setattr(f"{sqlite_store.__name__}.note_minutes", note_minutes)
    with caplog.at_level(logging.INFO, "logagg.bridge.store"):
        open_writer(url).close()
    assert "100% stamped" in caplog.text
    assert "stamping up to 200 stored events" in caplog.text
    assert "200 events stamped in" in caplog.text

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


def _text(q: str) -> Query:
    query = parse_query([("q", q), ("limit", "1000")], now=NOW)
    assert not isinstance(query, QueryError)
    return query


def _needle(n: int) -> Event:
    return Event(
        topic="app", event_id=f"e{n}", timestamp=NOW, source="test", payload={"msg": f"needle{n}"}
    )


def test_text_search_waits_for_the_index_and_says_when_it_lags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index follows the commits in a thread of its own: a search right after a commit
    finds the event. An event the index has not reached in `TEXT_WAIT_S` (here, stored
    while no bridge runs) makes a text search say so instead of answering short; the next
    bridge indexes it."""
    path = tmp_path / "s.db"
    url = parse_store_url(f"sqlite:///{path}")
    with closing(open_writer(url)) as store, closing(open_reader(url)) as reader:
        for n in range(20):
            store.record([_needle(n)], [])
            assert [e.event_id for e in reader.search(_text(f"needle{n}"))] == [f"e{n}"]
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at, ts)"
            " SELECT topic, 'late', timestamp, source, '{\"msg\": \"needle99\"}', received_at, ts"
            " FROM events WHERE event_id = 'e0'"
        )
    monkeypatch.setattr(sqlite_text, "TEXT_WAIT_S", 0.2)
    with closing(open_reader(url)) as reader:
        with pytest.raises(
            StoreUnavailable, match=r"search by text is not ready: .* \(indexed to seq 20 of 21\)"
        ):
            reader.search(_text("needle0"))
        everything = parse_query([("limit", "100")], now=NOW)
        assert isinstance(everything, Query)
        assert len(reader.search(everything)) == 21  # the rest of search is not held
    open_writer(url).close()
    with closing(open_reader(url)) as reader:
        assert [e.event_id for e in reader.search(_text("needle99"))] == ["late"]


@pytest.mark.parametrize("damage", ["deleted", "garbage", "another store's", "ahead"])
def test_a_lost_or_wrong_text_index_is_built_again(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The index is derived data: missing, broken, another store's, or ahead of its store
    (a store restored from a backup), it is not used, and the bridge builds it again."""
    path = tmp_path / "s.db"
    url = parse_store_url(f"sqlite:///{path}")
    events = random_events(300, seed=11)
    with closing(open_writer(url)) as store:
        store.record(events, [])
    index = text_path(path)
    if damage == "deleted":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"not a database at all " * 1000)
    elif damage == "another store's":
        other = tmp_path / "other.db"
        with closing(open_writer(parse_store_url(f"sqlite:///{other}"))) as store:
            store.record(events[:10], [])
        index.write_bytes(text_path(other).read_bytes())
    else:
        with closing(sqlite3.connect(index)) as conn, conn:
            conn.execute("UPDATE meta SET value = '1000' WHERE key = 'indexed_through'")
    needle = _text(f'"{events[-1].event_id}"')
    with closing(open_reader(url)) as reader, pytest.raises(StoreUnavailable):
        reader.search(needle)
    with caplog.at_level(logging.WARNING, "logagg.bridge.store"):
        open_writer(url).close()
    if damage != "deleted":
        assert f"building the text index {index} again" in caplog.text
    with closing(open_reader(url)) as reader:
        for e in events[-20:]:
            assert [s.event_id for s in reader.search(_text(f'"{e.event_id}"'))] == [e.event_id]


def test_a_store_with_its_text_index_inside_is_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Schema 3-5 kept the FTS5 table in the store: it is dropped, the index built again in
    its own file, and every event found by its text."""
    path = tmp_path / "v5.db"
    url = parse_store_url(f"sqlite:///{path}")
    events = random_events(300, seed=12)
    with closing(open_writer(url)) as store:
        store.record(events, [])
    text_path(path).unlink()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            "CREATE VIRTUAL TABLE events_fts USING fts5"
            " (body, content = '', columnsize = 0, tokenize = 'ascii');"
            "INSERT INTO events_fts (rowid, body) SELECT seq, event_id FROM events;"
            "DELETE FROM meta WHERE key = 'store_id';"
            "UPDATE meta SET value = '5' WHERE key = 'schema_version';"
        )
    with caplog.at_level(logging.INFO, "logagg.bridge.store"):
        open_writer(url).close()
    assert "its text index moves to a file of its own" in caplog.text
    with closing(sqlite3.connect(path)) as conn:
        assert (
            conn.execute("SELECT 1 FROM sqlite_master WHERE name LIKE 'events_fts%'").fetchall()
            == []
        )
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    with closing(open_reader(url)) as reader:
        for e in events[::30]:
            assert [s.event_id for s in reader.search(_text(f'"{e.event_id}"'))] == [e.event_id]
