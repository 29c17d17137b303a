"""Retention in PostgreSQL: the purge's transactions, and what `record` checks and counts.

Several bridges may share the store; one purges at a time: each purge transaction first
takes a transaction-scoped advisory lock with `pg_try_advisory_xact_lock`, and a bridge
that does not get it leaves the pass to the one that has it (a lock that ends with its
transaction cannot outlive a bridge killed while holding it). One transaction deletes a
chunk of one topic's expired events, keeps their keys and counts both.

A batch's INSERT skips copies whose key is kept (`NOT EXISTS`, in its one statement).
Writers commit concurrently, so that check alone has a race: a copy whose INSERT starts
while a chunk is deleting its very event waits on the deleted row and, once the chunk
commits, inserts under a snapshot that cannot see the new key (a statement keeps the
snapshot it started with, whatever it waits for). The fence closes it: every batch with
events first takes the fence shared, in a statement of its own in the batch's transaction
(writers never wait on each other), a purge chunk takes it exclusive after the purge
lock, so a batch runs wholly before a chunk (the chunk's DELETE, a statement after the
lock, sees its rows) or wholly after it (its statement, started after the fence was
granted, sees the kept keys)
(`test_retention_postgres_copy_during_purge_is_duplicate`). Both locks are two-int4
advisory locks (`objsubid` 2), which the events' watermark does not count (it reads the
bigint ones, `objsubid` 1) nor the rejections' (it reads only keys below the newest
rejected seq; these are `(class << 32) | hash`, far above), keyed by the schema so that
stores in other schemas never wait on each other. A chunk waiting for the fence holds new
batches back (PostgreSQL queues a lock request behind a conflicting waiter) for as long
as the batches in flight and the chunk take: chunks are small for that.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bridge.retention import key_hash

RETENTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS expired_keys (key bigint PRIMARY KEY, expired_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS expired_keys_at ON expired_keys (expired_at);
CREATE TABLE IF NOT EXISTS retention_counts (name text PRIMARY KEY, count bigint NOT NULL);
"""
# Two-key advisory locks (class, hashtext(schema)): one purger per schema; the fence
# between batches (shared) and purge chunks (exclusive).
PURGE_LOCK = 0x6C6F6762
FENCE_LOCK = 0x6C6F6763
FENCE_SHARED = f"SELECT pg_advisory_xact_lock_shared({FENCE_LOCK}, hashtext(current_schema()))"

# The first seq received at or after a time, by bisection over seq in one statement: each
# step reads one row by the seq index (`reading.first_recent` in SQL).
FLOOR = """
WITH RECURSIVE b (lo, hi) AS (
    SELECT min(seq), max(seq) + 1 FROM events
    UNION ALL
    SELECT CASE WHEN p.recent THEN b.lo ELSE least(p.seq + 1, b.hi) END,
           CASE WHEN p.recent THEN (b.lo + b.hi) / 2 ELSE b.hi END
    FROM b CROSS JOIN LATERAL (
        SELECT seq, received_at >= to_timestamp(%s) AS recent FROM events
        WHERE seq >= (b.lo + b.hi) / 2 ORDER BY seq LIMIT 1
    ) AS p
    WHERE b.lo < b.hi
)
SELECT coalesce(min(lo), 0) FROM b WHERE lo >= hi
"""

_COUNT = """
INSERT INTO retention_counts (name, count) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET count = retention_counts.count + excluded.count
"""

_DELETE_CHUNK = """
DELETE FROM events WHERE seq IN (
    SELECT seq FROM events WHERE topic = %s AND seq < %s ORDER BY seq LIMIT %s
) RETURNING event_id
"""

_KEEP_KEYS = """
WITH made AS (
    INSERT INTO expired_keys (key, expired_at) SELECT k, now() FROM unnest(%s::bigint[]) AS k
    ON CONFLICT DO NOTHING RETURNING 1
) SELECT count(*) FROM made
"""

_FORGET_CHUNK = """
DELETE FROM expired_keys WHERE key IN (
    SELECT key FROM expired_keys WHERE expired_at < now() - make_interval(secs => %s)
    ORDER BY expired_at LIMIT %s
)
"""


def count(conn: psycopg.Connection[Any], name: str, n: int) -> None:
    """Add `n` to a retention counter, in the caller's transaction."""
    if n:
        conn.execute(_COUNT, (name, n))


def _locked(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(%s, hashtext(current_schema()))", (PURGE_LOCK,)
    ).fetchone()
    return bool(row and row[0])


def purge_chunk(conn: psycopg.Connection[Any], topic: str, floor: int, limit: int) -> int | None:
    """Delete up to `limit` of `topic`'s events below seq `floor`, keep their keys and
    count both, in the caller's transaction, behind the fence; None when another bridge
    is purging."""
    if not _locked(conn):
        return None
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (FENCE_LOCK,))
    ids = [eid for (eid,) in conn.execute(_DELETE_CHUNK, (topic, floor, limit))]
    row = conn.execute(_KEEP_KEYS, ([key_hash(topic, eid) for eid in ids],)).fetchone()
    count(conn, "events_expired", len(ids))
    count(conn, "keys_made", row[0] if row else 0)
    return len(ids)


def forget_chunk(conn: psycopg.Connection[Any], horizon_s: float, limit: int) -> int | None:
    """Forget up to `limit` keys of events deleted more than `horizon_s` ago."""
    if not _locked(conn):
        return None
    n = conn.execute(_FORGET_CHUNK, (horizon_s, limit)).rowcount
    count(conn, "keys_forgotten", n)
    return n


def prune_time_seqs(conn: psycopg.Connection[Any]) -> None:
    """The time index's spans with no event left go too."""
    conn.execute(
        "DELETE FROM time_seqs WHERE high < (SELECT min(seq) FROM events)"
        " OR NOT EXISTS (SELECT 1 FROM events)"
    )
