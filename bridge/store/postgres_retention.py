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
snapshot it started with, whatever it waits for). So a batch looks again after its
statement, in one of its own (`record_events`): a new snapshot, taken once every chunk the
statement waited for (or ran into, deleted) had committed, shows whether a key it inserted
is now kept. If one is, the batch rolls back and runs again behind the fence, an advisory
lock that such a retry takes shared and every purge chunk exclusive (after the purge
lock): the retry runs wholly after a chunk (its statement, started after the fence was
granted, sees the kept keys) or wholly before it (the chunk's DELETE sees its rows)
(`test_retention_postgres_copy_during_purge_is_duplicate`). Batches take no lock a chunk
holds unless they raced one: when every batch took the fence, each waited for the chunk
in progress, and the purge's chunks had to be short and rested (BENCHMARKS.md,
"PostgreSQL: batches past the purge"). Both locks are two-int4
advisory locks (`objsubid` 2), which the events' watermark does not count (it reads the
bigint ones, `objsubid` 1) nor the rejections' (it reads only keys below the newest
rejected seq; these are `(class << 32) | hash`, far above), keyed by the schema so that
stores in other schemas never wait on each other.

The text index is rebuilt now and then (`rebuild_text_index`). Under retention the heap
and the B-trees stay flat once autovacuum has been by, but the GIN index on `tsv` does not
give back what deleted rows held: at 1,000 events/s with a 30 s retention `events_tsv`
grew 6 → 20 MB in five minutes while the rows held, the heap and the other indexes stayed
level (BENCHMARKS.md, "Retention"); its entries are mostly tokens no later event repeats
(ids, numbers). Each time the purge has deleted as many events as the table holds (and at
least `REBUILD_AFTER`), the index is rebuilt with `REINDEX … CONCURRENTLY`, which lets
writers and readers go on: every event pays a share of one rebuild, and the index stays
within about twice what its rows need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

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
REBUILD_LOCK = 0x6C6F6764
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


# Whether a purge chunk kept any of these keys since the batch's statement took its snapshot.
_RACED = "SELECT EXISTS (SELECT 1 FROM expired_keys WHERE key = ANY(%s::bigint[]))"


def record_events(
    conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]
) -> list[tuple[str, str]]:
    """Run a batch's statement with events (`postgres.record_sql`): the `(topic, event_id)`
    it inserted. Checked against the purge after it, and run again behind the fence if a
    chunk deleted one of their events meanwhile (see the module's docstring)."""
    with conn.transaction():
        rows = conn.execute(statement, params).fetchall()
        keys = [key_hash(topic, event_id) for topic, event_id in rows]
        raced = keys and conn.execute(_RACED, (keys,)).fetchone()
        if not (raced and raced[0]):
            return rows
        raise psycopg.Rollback
    with conn.transaction():
        conn.execute(FENCE_SHARED)
        return conn.execute(statement, params).fetchall()


# The planner's size of `expired_keys` (`relpages`, set by ANALYZE and VACUUM) against its
# real size. A session caches a generic plan for each prepared statement, made with the
# table's size at the time, until the table's statistics change: a batch's key probe
# planned while the table was empty scans the whole table for each event once it holds a
# million keys (a batch of 275 events took 309 ms, its plan expecting 4,255 keys against
# 347,755; BENCHMARKS.md, "PostgreSQL: batches past the purge"). The purge, which fills the
# table, analyzes it each time it has doubled, and so replaces every session's plans;
# autovacuum may be off or behind.
_GROWN = """
SELECT pg_relation_size(oid) / current_setting('block_size')::bigint > 2 * greatest(relpages, 1)
FROM pg_class WHERE oid = 'expired_keys'::regclass
"""


def analyze_if_grown(conn: psycopg.Connection[Any]) -> None:
    """ANALYZE `expired_keys` if it has grown to twice what the planner knows of it (on an
    autocommit connection; skipped while autovacuum holds it)."""
    row = conn.execute(_GROWN).fetchone()
    if row and row[0]:
        conn.execute("ANALYZE (SKIP_LOCKED) expired_keys")


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


# The text index: rebuilt once the purge has deleted as many events as the table holds, and
# at least this many, since the last rebuild (whose `events_expired` count meta keeps).
REBUILD_AFTER = 50_000
REBUILT_AT = "text_index_rebuilt_at"
TEXT_INDEX = "events_tsv"

_REBUILD_DUE = f"""
SELECT c.expired,
       c.expired - coalesce((SELECT value::bigint FROM meta WHERE key = '{REBUILT_AT}'), 0)
           >= greatest((SELECT reltuples::bigint FROM pg_class WHERE oid = 'events'::regclass),
                       %s)
FROM (SELECT coalesce(sum(count), 0)::bigint AS expired FROM retention_counts
      WHERE name = 'events_expired') AS c
WHERE EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('{TEXT_INDEX}')
              AND indisvalid)
"""

# What a rebuild cut short leaves behind: its copy, invalid (REINDEX CONCURRENTLY names
# it `<index>_ccnew`, and the old one `<index>_ccold` once swapped).
_LEFT_BEHIND = f"""
SELECT i.indexrelid::regclass::text FROM pg_index i
WHERE i.indrelid = 'events'::regclass AND NOT i.indisvalid
  AND i.indexrelid::regclass::text ~ '^{TEXT_INDEX}_cc(new|old)[0-9]*$'
"""


def rebuild_text_index(
    conn: psycopg.Connection[Any], stopping: Callable[[], bool]
) -> tuple[int, int] | None:
    """Rebuild the text index if it is due (see the module's docstring), on an autocommit
    connection, unless another bridge is rebuilding it or has just rebuilt it; its size in
    bytes before and after, or None. Runs without the session's statement and lock timeouts
    (a rebuild waits for the reads in flight and takes as long as the index's size);
    `stopping()` cancels it, and the invalid copy it leaves is dropped by the next one."""
    if _due(conn) is None or stopping():
        return None
    lock = (REBUILD_LOCK,)
    (got,) = conn.execute(
        "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", lock
    ).fetchone() or (False,)
    if not got:
        return None
    timeouts = conn.execute(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
    ).fetchone()
    assert timeouts is not None
    conn.execute(
        "SELECT set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false)"
    )
    try:
        # Again under the lock: another bridge that saw it due may have rebuilt it since.
        expired = _due(conn)
        if expired is None:
            return None
        for (name,) in conn.execute(_LEFT_BEHIND).fetchall():
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name))
            )
        before = _size(conn)
        try:
            with _cancelled_when(conn, stopping):
                conn.execute(
                    sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(TEXT_INDEX))
                )
        except psycopg.errors.QueryCanceled:
            if stopping():
                return None
            raise
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (REBUILT_AT, str(expired)),
        )
        return before, _size(conn)
    finally:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('lock_timeout', %s, false)",
            timeouts,
        )
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", lock)


def _due(conn: psycopg.Connection[Any]) -> int | None:
    """The purge's `events_expired` count when a rebuild is due, else None."""
    row = conn.execute(_REBUILD_DUE, (REBUILD_AFTER,)).fetchone()
    return int(row[0]) if row is not None and row[1] else None


def _size(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_relation_size(%s::regclass)", (TEXT_INDEX,)).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _cancelled_when(conn: psycopg.Connection[Any], stopping: Callable[[], bool]) -> Iterator[None]:
    """Cancel `conn`'s statement in progress as soon as `stopping()` (checked every 0.1 s)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if stopping():
                conn.cancel_safe()
                return

    watcher = threading.Thread(target=watch, name="logagg-rebuild-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def prune_time_seqs(conn: psycopg.Connection[Any]) -> None:
    """The time index's spans with no event left go too."""
    conn.execute(
        "DELETE FROM time_seqs WHERE high < (SELECT min(seq) FROM events)"
        " OR NOT EXISTS (SELECT 1 FROM events)"
    )
