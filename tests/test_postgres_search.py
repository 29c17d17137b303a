"""PostgreSQL's side of search (issue 11): the upgrade of a schema 2 store, which indexes
the events it already holds beside ingest, and the statement timeout on reads."""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import timedelta

import pytest

from bridge.query import Query, QueryError, parse_query, reference_page
from bridge.store import (
    QueryTimeout,
    StoreOptions,
    StoreUnavailable,
    open_reader,
    open_writer,
    parse_store_url,
    postgres_backfill,
)
from bridge.store.postgres import PostgresWriter
from tests.helpers import NOW, START, pg_connect, pg_execute, postgres, random_events


def query(*params: tuple[str, str]) -> Query:
    parsed = parse_query(params, now=NOW)
    assert not isinstance(parsed, QueryError), parsed
    return parsed


def make_v2(url: str) -> None:
    """Turn the schema 3 store at `url` back into what logagg wrote before search."""
    pg_execute(
        url,
        "DROP INDEX events_tsv, events_topic_time, events_time; DROP TABLE time_seqs;"
        " ALTER TABLE events DROP COLUMN tsv;"
        " UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    )


def test_a_v2_store_is_upgraded_by_one_of_the_bridges_opening_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Three bridges open a store holding events from before search: one backfills (in
    chunks), ingest goes on meanwhile, and then every old event is found by its words and
    time ranges are answered as brute force answers them."""
    url = postgres(pg_url)
    events = random_events(300, seed=3)
    with closing(open_writer(url)) as old:
        assert old.record(events[:250], []).stored == 250
    make_v2(pg_url)
    monkeypatch.setattr(postgres_backfill, "CHUNK", 40)
    monkeypatch.setattr(postgres_backfill, "RETRY_S", 0.2)
    caplog.set_level(logging.INFO, logger="logagg.bridge.store")
    with ThreadPoolExecutor(3) as pool:
        writers = list(pool.map(lambda _: PostgresWriter(url, StoreOptions()), range(3)))
    try:
        assert writers[0].record(events[250:], []).stored == 50  # ingest while it runs
        backfills = [w.backfill for w in writers]
        assert all(b is not None and b.join(60) for b in backfills)
        started = [r for r in caplog.records if "indexing the text of events" in r.message]
        assert len(started) == 1
        assert "100% of the events' text indexed" in caplog.text
        store = writers[0]
        everything = store.events(topic=None, after=0, limit=10_000)
        assert len(everything) == 300
        for event in everything:
            found = store.search(query(("q", f'"{event.event_id}"'), ("topic", event.topic)))
            assert event in found
        rnd = random.Random(5)
        for _ in range(20):
            since = START + timedelta(seconds=rnd.randrange(3 * 86400))
            window = query(
                ("since", since.isoformat()),
                ("until", (since + timedelta(hours=rnd.choice([1, 6, 30]))).isoformat()),
                ("q", rnd.choice(["timeout", "tim*", "disk full", "-ok retry"])),
                ("order", rnd.choice(["asc", "desc"])),
            )
            assert store.search(window) == reference_page(window, everything)
    finally:
        for writer in writers:
            writer.close()


def text_index_options(url: str) -> list[str] | None:
    with pg_connect(url) as conn:
        query = "SELECT reloptions FROM pg_class WHERE oid = 'events_tsv'::regclass"
        row = conn.execute(query).fetchone()
        options: list[str] | None = row[0] if row else None
        return options


def test_the_text_index_pending_list_is_small(pg_url: str) -> None:
    """A new store's text index is made with a 256 kB pending list (GIN's default, 4 MB,
    stalls the insert that merges it); a store whose index has the default gets the limit,
    its pending entries merged, when a bridge opens it; every event is found by its words
    throughout."""
    url = postgres(pg_url)
    events = random_events(60, seed=6)
    small = ["gin_pending_list_limit=256"]
    with closing(open_writer(url)) as store:
        assert text_index_options(pg_url) == small
        store.record(events[:30], [])
        pg_execute(pg_url, "ALTER INDEX events_tsv RESET (gin_pending_list_limit)")
        store.record(events[30:], [])  # into the pending list
    assert text_index_options(pg_url) is None
    with closing(open_writer(url)) as store:
        assert text_index_options(pg_url) == small
        for event in events:
            found = store.search(query(("q", f'"{event.event_id}"')))
            assert event.event_id in {e.event_id for e in found}


def test_text_queries_wait_for_the_backfill(pg_url: str) -> None:
    """While old events are not all indexed, a text query is refused with the reason
    (it would miss them); the other filters are answered."""
    url = parse_store_url(pg_url)
    with closing(open_writer(url)) as writer:
        writer.record(random_events(20, seed=4), [])
    pg_execute(pg_url, "INSERT INTO meta (key, value) VALUES ('text_backfill', '7')")
    with closing(open_reader(url)) as reader:
        with pytest.raises(StoreUnavailable, match=r"not ready.*events up to seq 7 done"):
            reader.search(query(("q", "timeout")))
        since = query(("since", START.isoformat()), ("limit", "1000"))
        assert len(reader.search(since)) == 20


def test_a_query_past_the_timeout_is_refused(pg_url: str) -> None:
    """Reads run under `query_timeout_s`: an expensive one raises QueryTimeout, which says
    why, instead of loading the store."""
    url = parse_store_url(pg_url)
    open_writer(url).close()
    pg_execute(
        pg_url,
        "INSERT INTO events (topic, event_id, timestamp, utc_offset_s, source, payload, tsv)"
        " SELECT 't', 'e' || n, now() - n * interval '1 second', 0, 's', '{}', 'x:1'"
        " FROM generate_series(1, 100000) AS n",
    )
    everything = query(("q", "x"))
    hurried = open_reader(url, StoreOptions(query_timeout_s=0.001))
    with closing(hurried), pytest.raises(QueryTimeout, match=r"ran past the 0\.001s"):
        hurried.histogram(everything, 1)
    with closing(open_reader(url)) as patient:
        assert sum(b.count for b in patient.histogram(everything, 86400)) == 100000
