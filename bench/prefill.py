"""Filling a store with millions of events in seconds, to measure inserts into a large store.

The schema comes from `open_writer`, so the indexes are the real ones; the rows
come from one `INSERT … SELECT` over a recursive counter, in one transaction
with the journal and fsync off (a throwaway store), in key order so every
index is built by appending. The event ids are spread evenly over the same
hex space as the stream's run ids, so new events land among the old ones, not
after them; the counters are raised to match, as if the bridge had stored them.

`prefill_corpus` fills either store with `bench.corpus`'s realistic events instead (the
search benchmarks of issue 11), through the same schema, in blocks of a million rows: an
executemany per block into SQLite, a COPY per block into PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg

from bench.corpus import Corpus, Row
from bench.stream import TOPICS
from bridge.store import open_writer, parse_store_url

_ID_SPACE = 16**12  # the stream's run ids are 12 hex digits
_COUNT_TOPIC = (
    "INSERT INTO topic_stats (topic, unique_processed, duplicate_dropped)"
    " VALUES (?, ?, 0) ON CONFLICT (topic) DO UPDATE SET"
    " unique_processed = topic_stats.unique_processed + excluded.unique_processed"
)
# When the prefilled corpus events were received: after the last of them.
_RECEIVED = "2026-11-01T00:00:00.000000+00:00"
# Rows per transaction (SQLite) or COPY (PostgreSQL) in `prefill_corpus`.
_CORPUS_BLOCK = 1_000_000
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


def _throwaway(conn: sqlite3.Connection) -> None:
    """No journal, no fsync: a bulk fill that is redone rather than recovered."""
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the index pages being appended to


def prefill_corpus(
    url: str, corpus: Corpus, *, progress: Callable[[int, float], None] | None = None
) -> float:
    """Put `corpus`'s events into the (new) store at `url`; returns the seconds it took.

    SQLite keeps `timestamp` as ISO text in the publisher's offset, which neither sorts
    nor compares as time across offsets, so the SQLite events also get `ts_us` (UTC µs
    since the epoch; added when the schema lacks it): the column issue 11's time
    filters need (docs/search-indexes.md). PostgreSQL's timestamptz already is one.
    """
    started = time.monotonic()
    open_store(url).close()
    counts: Counter[str] = Counter()
    blocks = (
        list(corpus.rows(first, first + _CORPUS_BLOCK))
        for first in range(0, corpus.count, _CORPUS_BLOCK)
    )
    fill = _fill_sqlite if url.startswith("sqlite://") else _fill_postgres
    fill(url, blocks, counts, lambda n: progress and progress(n, time.monotonic() - started))
    return time.monotonic() - started


def _fill_sqlite(
    url: str,
    blocks: Iterable[list[Row]],
    counts: Counter[str],
    progress: Callable[[int], object],
) -> None:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        _throwaway(conn)
        # (name, hidden): hidden is 2 or 3 for a generated column, which fills itself.
        columns = {c[1]: c[6] for c in conn.execute("PRAGMA table_xinfo(events)")}
        if "ts_us" not in columns:
            conn.execute("ALTER TABLE events ADD COLUMN ts_us INTEGER")
        write_ts = columns.get("ts_us", 0) == 0
        insert = "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at"
        insert += (
            ", ts_us) VALUES (?, ?, ?, ?, ?, ?, ?)" if write_ts else ") VALUES (?, ?, ?, ?, ?, ?)"
        )
        done = 0
        for rows in blocks:
            conn.execute("BEGIN")
            conn.executemany(
                insert,
                (
                    (r.topic, r.event_id, r.timestamp, r.source, r.payload, _RECEIVED)
                    + ((r.ts_us,) if write_ts else ())
                    for r in rows
                ),
            )
            counts.update(r.topic for r in rows)
            conn.execute("COMMIT")
            done += len(rows)
            progress(done)
        conn.executemany(_COUNT_TOPIC, sorted(counts.items()))
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _fill_postgres(
    url: str,
    blocks: Iterable[list[Row]],
    counts: Counter[str],
    progress: Callable[[int], object],
) -> None:
    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo) as conn:
        if schema is not None:
            conn.execute("SELECT set_config('search_path', quote_ident(%s), false)", (schema,))
        conn.execute("SET synchronous_commit = off")
        done = 0
        for rows in blocks:
            with conn.cursor().copy(
                "COPY events (topic, event_id, timestamp, utc_offset_s, source, payload) FROM STDIN"
            ) as copy:
                for r in rows:
                    copy.write_row(
                        (r.topic, r.event_id, r.timestamp, r.utc_offset_s, r.source, r.payload)
                    )
            counts.update(r.topic for r in rows)
            conn.commit()
            done += len(rows)
            progress(done)
        conn.cursor().executemany(_COUNT_TOPIC.replace("?", "%s"), sorted(counts.items()))
        conn.commit()
