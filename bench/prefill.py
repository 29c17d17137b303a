"""Filling a store with millions of events in seconds, to measure inserts into a large store.

The schema comes from `open_writer`, so the indexes are the real ones; the rows
come from one `INSERT … SELECT` over a recursive counter, in one transaction
with the journal and fsync off (a throwaway store), in key order so every
index is built by appending. The event ids are spread evenly over the same
hex space as the stream's run ids, so new events land among the old ones, not
after them; the counters are raised to match, as if the bridge had stored them.

`prefill_corpus` fills either store with `bench.corpus`'s realistic events instead (the
search benchmarks of issue 11) through `StoreWriter.record`, the bridge's own write, so
the search indexes (`ts` and `minute_seqs` in SQLite, `tsv` in PostgreSQL) are written
exactly as in production: a raw INSERT would leave events that searches miss.

Both wait for SQLite's text index (its own file, built by a thread of the writer behind the
events: `bridge.store.sqlite_text`) to hold every event before they return, so that a
scenario measures the store, not the index catching up.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import psycopg

from bench.corpus import Corpus, Row
from bench.stream import TOPICS
from bridge.event import Event
from bridge.store import (
    Durability,
    PostgresUrl,
    StoreOptions,
    StoreWriter,
    open_writer,
    parse_store_url,
)
from bridge.store.sqlite import SQLiteWriter

_ID_SPACE = 16**12  # the stream's run ids are 12 hex digits
_COUNT_TOPIC = (
    "INSERT INTO topic_stats (topic, unique_processed, duplicate_dropped)"
    " VALUES (?, ?, 0) ON CONFLICT (topic) DO UPDATE SET"
    " unique_processed = topic_stats.unique_processed + excluded.unique_processed"
)
# How fast SQLite's text index is at least built (events/s), for the wait's timeout.
_INDEXED_PER_S = 2_000
# Events per `record` (one transaction) in `prefill_corpus`: large, as a bridge catching up
# writes, so the fill goes at the store's pace rather than the commits'.
CORPUS_BATCH = 5_000
_FILL = """
WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < :count)
INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)
SELECT :topic, printf('%012x-0', n * :step), :stamp, 'bench-prefill',
       '{"n":' || n || ',"pad":"' || :pad || '","sent_at":0}', :stamp
FROM i
"""


def prefill(path: Path, count: int, *, payload_bytes: int) -> None:
    """Put `count` events, spread over the stream's topics, into the store at `path`."""
    open_writer(parse_store_url(f"sqlite:///{path.resolve()}")).close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _throwaway(conn)
        pad = "x" * max(0, payload_bytes - len('{"n":0000000,"pad":"","sent_at":0}'))
        stamp = "2026-01-01T00:00:00.000000+00:00"
        conn.execute("BEGIN")
        for k, topic in enumerate(TOPICS):
            per_topic = count // len(TOPICS) + (k < count % len(TOPICS))
            if per_topic == 0:
                continue
            conn.execute(
                _FILL,
                {
                    "count": per_topic,
                    "topic": topic,
                    "step": _ID_SPACE // per_topic,
                    "stamp": stamp,
                    "pad": pad,
                },
            )
            conn.execute(_COUNT_TOPIC, (topic, per_topic))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    with closing(open_writer(parse_store_url(f"sqlite:///{path.resolve()}"))) as store:
        text_indexed(store, count)


def text_indexed(store: StoreWriter, count: int) -> None:
    """Wait until a SQLite store's text index holds its `count` events (PostgreSQL's is
    written with them)."""
    if isinstance(store, SQLiteWriter) and not store.text_indexed(60 + count / _INDEXED_PER_S):
        raise RuntimeError(f"the text index of {store.path} did not catch up with the events")


def _throwaway(conn: sqlite3.Connection) -> None:
    """No journal, no fsync: a bulk fill that is redone rather than recovered."""
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the index pages being appended to


def prefill_corpus(
    url: str,
    corpus: Corpus,
    *,
    batch: int = CORPUS_BATCH,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Put `corpus`'s events into the (new) store at `url` through `StoreWriter.record`, as
    the bridge stores them (so every search index is written as in production), `batch`
    events per transaction with durability off (a throwaway store, redone rather than
    recovered); returns the seconds it took. `progress(done, seconds)` follows each batch.

    A PostgreSQL store is then vacuumed and analyzed, as autovacuum would after such a
    load: without statistics the planner walks the seq index for a text query instead
    of the GIN (0.45 s instead of 7 ms for a needle in 1M events), and the shared server
    here runs with autovacuum off.
    """
    started = time.monotonic()
    target = parse_store_url(url)
    store = open_writer(target, StoreOptions(durability=Durability.OFF))
    try:
        rows = corpus.rows()
        done = 0
        while chunk := list(itertools.islice(rows, batch)):
            store.record([_event(r) for r in chunk], [])
            done += len(chunk)
            if progress is not None:
                progress(done, time.monotonic() - started)
        text_indexed(store, done)
    finally:
        store.close()
    if isinstance(target, PostgresUrl):
        with psycopg.connect(target.conninfo, autocommit=True) as conn:
            if target.schema is not None:
                conn.execute(
                    "SELECT set_config('search_path', quote_ident(%s), false)", (target.schema,)
                )
            conn.execute("VACUUM (ANALYZE) events")
    return time.monotonic() - started


def _event(row: Row) -> Event:
    """The event the publisher would have sent for `row` (built unchecked: the corpus is valid)."""
    return Event.model_construct(
        topic=row.topic,
        event_id=row.event_id,
        timestamp=row.moment,
        source=row.source,
        payload=json.loads(row.payload),
    )
