"""Filling a store with millions of events in seconds, to measure inserts into a large store.

The schema comes from `open_writer`, so the indexes are the real ones; the rows
come from one `INSERT … SELECT` over a recursive counter, in one transaction
with the journal and fsync off (a throwaway store), in key order so every
index is built by appending. The event ids are spread evenly over the same
hex space as the stream's run ids, so new events land among the old ones, not
after them; the counters are raised to match, as if the bridge had stored them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.stream import TOPICS
from bridge.store import open_writer, parse_store_url

_ID_SPACE = 16**12  # the stream's run ids are 12 hex digits
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
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the index pages being appended to
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
            conn.execute(
                "INSERT INTO topic_stats (topic, unique_processed, duplicate_dropped)"
                " VALUES (?, ?, 0) ON CONFLICT (topic) DO UPDATE SET"
                " unique_processed = unique_processed + excluded.unique_processed",
                (topic, per_topic),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
