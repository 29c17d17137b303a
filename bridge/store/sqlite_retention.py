"""Retention in SQLite: what `record` checks and counts, and the purge's transactions.

The purge runs on its own connection, beside the writer's, and takes turns with it: each
write transaction is sized to take about `policy.SQLITE_PACE`, so a batch waits at most
about that long, and the purge rests after each (`policy.chunks`). One transaction deletes a
chunk of one topic's expired events, keeps their keys in `expired_keys` and counts both
in `retention_counts`: a crash leaves either all of a chunk done or none of it. Their
text index entries are forgotten after, by the index's own thread (`sqlite_text`). Its
commits never checkpoint the WAL: each step checkpoints after it, outside the turn.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

from bridge.event import Event
from bridge.retention import RetentionPolicy, key_hash
from bridge.store.base import Purged
from bridge.store.policy import SQLITE_PACE, chunks
from bridge.store.sqlite_text import Indexed, index_texts

# Takes the text index entries of deleted events out (`TextIndexer.forget`).
Forget = Callable[[Sequence[Indexed]], None]

RETENTION_SCHEMA = """
-- The keys of deleted events, for the dedup horizon: the key is the rowid (8 bytes).
CREATE TABLE IF NOT EXISTS expired_keys (key INTEGER PRIMARY KEY, expired_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS expired_keys_at ON expired_keys (expired_at);
CREATE TABLE IF NOT EXISTS retention_counts (name TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class Turns:
    """The write turn the bridge's batches and the purge share, in the order they asked
    (a ticket lock): a writer committing back to back cannot starve the purge, nor a
    purge the writer, as a plain lock's re-acquire by the thread that just let go can."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._changed:
            ticket = self._next
            self._next += 1
            self._changed.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._serving += 1
            self._changed.notify_all()


_COUNT = (
    "INSERT INTO retention_counts (name, count) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET count = count + excluded.count"
)


def count(conn: sqlite3.Connection, name: str, n: int) -> None:
    """Add `n` to a retention counter, in the caller's transaction."""
    if n:
        conn.execute(_COUNT, (name, n))


def has_keys(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM expired_keys LIMIT 1").fetchone() is not None


def expired_copies(conn: sqlite3.Connection, events: Sequence[Event]) -> set[int]:
    """The keys (hashes) among `events` that belong to expired events still remembered."""
    hashes = [key_hash(e.topic, e.event_id) for e in events]
    rows = conn.execute(
        "SELECT key FROM expired_keys WHERE key IN (SELECT value FROM json_each(?))",
        (json.dumps(hashes),),
    )
    return {key for (key,) in rows}


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, rolled back on any error (unless SQLite already did)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _purge_chunk(
    conn: sqlite3.Connection,
    turn: Turns,
    topic: str,
    floor: int,
    limit: int,
    now: float,
    forget: Forget,
) -> int:
    """Delete up to `limit` of `topic`'s events below seq `floor`, oldest first, in one
    transaction with their keys and the counters, then have the text index forget them;
    how many.

    The rows are read and their index text made before the write lock is taken: only the
    purge deletes events, so what it read is still there when its turn comes."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(
            "SELECT seq, event_id, source, payload FROM events"
            " WHERE topic = ? AND seq < ? ORDER BY seq LIMIT ?",
            (topic, floor, limit),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    if not rows:
        return 0
    # A contentless FTS5 table forgets a row only when told the text it indexed.
    texts = index_texts(rows)
    seqs = json.dumps([seq for seq, _ in texts])
    keys = [(key_hash(topic, eid), now) for _, eid, _, _ in rows]
    with turn, _immediate(conn):
        conn.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))", (seqs,))
        made = conn.executemany(
            "INSERT INTO expired_keys (key, expired_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            keys,
        ).rowcount
        count(conn, "events_expired", len(rows))
        count(conn, "keys_made", max(made, 0))
    # Outside the turn: batches commit while the WAL is copied back (PASSIVE waits for no
    # writer), where a checkpoint in the step's commit made them wait for it.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    forget(texts)
    return len(rows)


def _forget_chunk(conn: sqlite3.Connection, turn: Turns, before: float, limit: int) -> int:
    """Forget up to `limit` keys of events deleted before Unix time `before`."""
    with turn, _immediate(conn):
        cur = conn.execute(
            "DELETE FROM expired_keys WHERE key IN"
            " (SELECT key FROM expired_keys WHERE expired_at < ? ORDER BY expired_at LIMIT ?)",
            (before, limit),
        )
        count(conn, "keys_forgotten", cur.rowcount)
    return cur.rowcount


def purge(
    conn: sqlite3.Connection,
    floors: dict[str, int],
    policy: RetentionPolicy,
    now: float,
    stopping: Callable[[], bool],
    turn: Turns,
    forget: Forget,
) -> Purged:
    """Delete each topic's events below its floor, then forget the keys past the horizon
    and the time index's minutes with no event left. Each write transaction is taken
    inside `turn`, the writer's own: the bridge's batches wait on a lock handed over at
    once, not on SQLite's busy handler, which sleeps up to 100 ms between its tries."""
    events = 0
    for topic, floor in floors.items():
        step = partial(_purge_chunk, conn, turn, topic, floor, now=now, forget=forget)
        events += chunks(step, stopping, SQLITE_PACE) or 0
    forgotten = 0
    if policy.horizon_s is not None:
        step = partial(_forget_chunk, conn, turn, now - policy.horizon_s)
        forgotten = chunks(step, stopping, SQLITE_PACE) or 0
    if events:
        with turn, conn:
            conn.execute(
                "DELETE FROM minute_seqs WHERE last_seq < (SELECT min(seq) FROM events)"
                " OR NOT EXISTS (SELECT 1 FROM events)"
            )
        # The WAL back to its limit now, not at the next checkpoint readers let through.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return Purged(events, forgotten)
