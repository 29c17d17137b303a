"""Watching a SQLite store from outside, as a reader would: what is committed, and since when.

One read-only connection kept open: each query is its own read transaction in
WAL mode, so it sees every commit made before it and never blocks the
bridge. A query costs tens of microseconds, so polling every few
milliseconds takes little from the bridge on a shared CPU.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.procs import BenchError


@dataclass(frozen=True, slots=True)
class Counts:
    received: int
    unique: int
    duplicates: int
    rejected: int
    rows: int


class StoreWatch:
    """Counts relative to the moment of `mark()`, so a prefilled store reads like a fresh one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._base = Counts(0, 0, 0, 0, 0)
        self._base_seq = 0

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.exists():
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self._conn

    def _absolute(self) -> Counts:
        db = self._db()
        if db is None:
            return Counts(0, 0, 0, 0, 0)
        try:
            unique, dups = db.execute(
                "SELECT coalesce(sum(unique_processed), 0), coalesce(sum(duplicate_dropped), 0)"
                " FROM topic_stats"
            ).fetchone()
            (rejected,) = db.execute(
                "SELECT coalesce(sum(count), 0) FROM rejection_stats"
            ).fetchone()
        except sqlite3.OperationalError:  # the bridge has not created the schema yet
            return Counts(0, 0, 0, 0, 0)
        return Counts(unique + dups + rejected, unique, dups, rejected, 0)

    def mark(self) -> None:
        """From now on, count only what is stored after this point."""
        self._base = self._absolute()
        db = self._db()
        if db is not None:
            (seq,) = db.execute("SELECT max(seq) FROM events").fetchone()
            self._base_seq = seq or 0

    def counts(self, *, rows: bool = False) -> Counts:
        """Counters since `mark()`; `rows=True` also counts the stored rows (slower: a scan)."""
        now, base = self._absolute(), self._base
        stored = 0
        db = self._db()
        if rows and db is not None:
            (stored,) = db.execute(
                "SELECT count(*) FROM events WHERE seq > ?", (self._base_seq,)
            ).fetchone()
        return Counts(
            now.received - base.received,
            now.unique - base.unique,
            now.duplicates - base.duplicates,
            now.rejected - base.rejected,
            stored,
        )

    def first_received_at(self) -> float:
        """When the bridge took the first batch after `mark()` (its `received_at`, epoch s)."""
        db = self._db()
        sql = "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1"
        row = None if db is None else db.execute(sql, (self._base_seq,)).fetchone()
        if row is None:
            raise BenchError(f"nothing stored in {self.path}")
        return datetime.fromisoformat(row[0]).timestamp()

    def sent_at_since(self, seq: int) -> list[tuple[int, float]]:
        """`(seq, payload.sent_at)` of the rows stored after `seq`, in order."""
        db = self._db()
        if db is None:
            return []
        try:
            rows: list[tuple[int, float]] = db.execute(
                "SELECT seq, json_extract(payload, '$.sent_at') FROM events WHERE seq > ?"
                " ORDER BY seq",
                (seq,),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        return rows

    def wait(
        self,
        done: Callable[[Counts], bool],
        *,
        timeout: float,
        every: float = 0.005,
        alive: Callable[[], None] = lambda: None,
        on_first: Callable[[Counts], None] = lambda _c: None,
    ) -> tuple[float, Counts]:
        """Poll until `done(counts)`; returns the wall time it first held (epoch s) and the
        counts. `on_first` runs once, when anything is first counted; `alive` raises if the
        process being watched has died."""
        deadline = time.monotonic() + timeout
        first_seen = False
        while True:
            counts = self.counts()
            now = time.time()
            if counts.received and not first_seen:
                first_seen = True
                on_first(counts)
            if done(counts):
                return now, counts
            alive()
            if time.monotonic() > deadline:
                raise BenchError(f"store not there after {timeout:g}s: {counts}")
            time.sleep(every)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
