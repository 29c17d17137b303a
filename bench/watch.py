"""Watching a store from outside, as a reader would: what is committed, and since when.

One connection kept open. SQLite: read-only, each query its own read transaction in WAL
mode, so it sees every commit made before it and never blocks the bridge; a query costs
tens of microseconds, so polling every few milliseconds takes little from the bridge on a
shared CPU. PostgreSQL: autocommit, so each query sees every commit before it; it can also
sample what the other backends of the database are doing (`sample_backends`).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.procs import BenchError
from bridge.store import PostgresUrl, parse_store_url
from bridge.store.sqlite_text import text_path

# What the database's other client backends are doing: "state" or "state wait_type:wait_event".
_BACKENDS = """
SELECT state || coalesce(' ' || wait_event_type || ':' || wait_event, ''), count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
    AND backend_type = 'client backend'
GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class Counts:
    received: int
    unique: int
    duplicates: int
    rejected: int
    rows: int


class StoreWatch:
    """Counts relative to the moment of `mark()`, so a prefilled store reads like a fresh one.
    `target`: a SQLite file, or a store URL (`sqlite:///…` or `postgresql://…`)."""

    def __init__(self, target: Path | str) -> None:
        self._pg: str | None = None
        self._schema: str | None = None
        url = parse_store_url(target) if isinstance(target, str) else None
        if isinstance(url, PostgresUrl):
            self._pg, self._schema = url.conninfo, url.schema
            self.path = Path()  # unused: no file
            self._where = url.display
        else:
            self.path = url.path if url is not None else Path(target)
            self._where = str(self.path)
        self._conn: Any = None  # sqlite3.Connection or psycopg.Connection: both `execute`
        self._base = Counts(0, 0, 0, 0, 0)
        self._base_seq = 0
        self.samples = 0
        self.backends: Counter[str] = Counter()

    def _db(self) -> Any:
        if self._conn is None and self._pg is not None:
            self._conn = psycopg.connect(self._pg, autocommit=True)
            if self._schema is not None:
                self._conn.execute(
                    "SELECT set_config('search_path', quote_ident(%s), false)", (self._schema,)
                )
        elif self._conn is None and self.path.exists():
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self._conn

    def _one(self, query: str, params: tuple[object, ...] = ()) -> Any:
        """The first row of `query` (written with `?` placeholders), or None without a store."""
        db = self._db()
        if db is None:
            return None
        if self._pg is not None:
            query = query.replace("?", "%s")
        return db.execute(query, params).fetchone()

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL: this watch's own server process (its polling is not the bridges')."""
        return None if self._pg is None else int(self._one("SELECT pg_backend_pid()")[0])

    def _absolute(self) -> Counts:
        try:
            row = self._one(
                "SELECT coalesce(sum(unique_processed), 0), coalesce(sum(duplicate_dropped), 0)"
                " FROM topic_stats"
            )
            if row is None:
                return Counts(0, 0, 0, 0, 0)
            (rejected,) = self._one("SELECT coalesce(sum(count), 0) FROM rejection_stats")
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return Counts(0, 0, 0, 0, 0)  # the bridge has not created the schema yet
        unique, dups = int(row[0]), int(row[1])
        return Counts(unique + dups + int(rejected), unique, dups, int(rejected), 0)

    def mark(self) -> None:
        """From now on, count only what is stored after this point."""
        self._base = self._absolute()
        try:
            row = self._one("SELECT max(seq) FROM events")
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            row = None
        self._base_seq = (row[0] if row else None) or 0

    def sample_backends(self) -> None:
        """PostgreSQL: count the other client backends by state and wait event, once."""
        self.samples += 1
        for what, n in self._db().execute(_BACKENDS).fetchall():
            self.backends[what] += n

    def counts(self, *, rows: bool = False) -> Counts:
        """Counters since `mark()`; `rows=True` also counts the stored rows (slower: a scan)."""
        now, base = self._absolute(), self._base
        stored = 0
        if rows:
            row = self._one("SELECT count(*) FROM events WHERE seq > ?", (self._base_seq,))
            stored = 0 if row is None else int(row[0])
        return Counts(
            now.received - base.received,
            now.unique - base.unique,
            now.duplicates - base.duplicates,
            now.rejected - base.rejected,
            stored,
        )

    def first_received_at(self) -> float:
        """When the bridge took the first batch after `mark()` (its `received_at`, epoch s)."""
        sql = "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1"
        row = self._one(sql, (self._base_seq,))
        if row is None:
            raise BenchError(f"nothing stored in {self._where}")
        return _epoch(row[0])

    def sent_at_since(self, seq: int) -> list[tuple[int, float]]:
        """`(seq, payload.sent_at)` of the rows stored after `seq`, in order."""
        db = self._db()
        if db is None:
            return []
        if self._pg is not None:
            query = "SELECT seq, (payload->>'sent_at')::float8 FROM events WHERE seq > %s"
        else:
            query = "SELECT seq, json_extract(payload, '$.sent_at') FROM events WHERE seq > ?"
        try:
            rows: list[tuple[int, float]] = db.execute(f"{query} ORDER BY seq", (seq,)).fetchall()
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return []
        return rows

    def seq_range(self) -> tuple[int, int] | None:
        """The lowest and highest `seq` stored, or None when the store holds no event: the
        oldest one tells how far a purge (oldest first) has come, in O(log n)."""
        low = self._one("SELECT seq FROM events ORDER BY seq LIMIT 1")
        if low is None:
            return None
        (high,) = self._one("SELECT seq FROM events ORDER BY seq DESC LIMIT 1")
        return int(low[0]), int(high)

    def expired(self) -> int:
        """Events the bridge's retention has deleted so far (its `retention_counts`), 0 in a
        store that has never had a retention."""
        try:
            row = self._one("SELECT count FROM retention_counts WHERE name = 'events_expired'")
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return 0
        return 0 if row is None else int(row[0])

    def newest_received_at(self) -> float | None:
        """When the newest stored event arrived (epoch s), or None without events."""
        row = self._one("SELECT received_at FROM events ORDER BY seq DESC LIMIT 1")
        return None if row is None else _epoch(row[0])

    def size_bytes(self) -> dict[str, int]:
        """What the store takes on disk. SQLite: the database file and its WAL, and the text
        index's file and WAL; PostgreSQL: `pg_total_relation_size` (heap, indexes, TOAST) of
        each table of the store's schema."""
        if self._pg is None:
            files = {"db": self.path, "text": text_path(self.path)}
            files |= {f"{name}_wal": Path(f"{path}-wal") for name, path in files.items()}
            return {
                name: path.stat().st_size if path.exists() else 0 for name, path in files.items()
            }
        return self.tables_bytes()

    def free_bytes(self) -> int | None:
        """SQLite: the bytes of the database file's free pages (reused before it grows)."""
        if self._pg is not None:
            return None
        (pages,) = self._one("PRAGMA freelist_count")
        (size,) = self._one("PRAGMA page_size")
        return int(pages) * int(size)

    def tables_bytes(self) -> dict[str, int]:
        """Each table's (PostgreSQL: with its indexes and TOAST) and, in SQLite, each index's
        bytes; SQLite reads every page for it (`dbstat`), so ask once, not in a loop."""
        if self._pg is None:
            query = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
        else:
            query = (
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()"
            )
        return {str(name): int(size) for name, size in self._db().execute(query).fetchall()}

    def wait(
        self,
        done: Callable[[Counts], bool],
        *,
        timeout: float,
        every: float = 0.005,
        alive: Callable[[], None] = lambda: None,
        on_first: Callable[[Counts], None] = lambda _c: None,
        on_poll: Callable[[], None] = lambda: None,
    ) -> tuple[float, Counts]:
        """Poll until `done(counts)`; returns the wall time it first held (epoch s) and the
        counts. `on_first` runs once, when anything is first counted, `on_poll` at each poll
        after that; `alive` raises if the process being watched has died."""
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
            if first_seen:
                on_poll()
            alive()
            if time.monotonic() > deadline:
                raise BenchError(f"store not there after {timeout:g}s: {counts}")
            time.sleep(every)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _epoch(at: str | datetime) -> float:
    """A `received_at` as epoch seconds: SQLite gives ISO text, PostgreSQL an aware datetime."""
    return (at if isinstance(at, datetime) else datetime.fromisoformat(at)).timestamp()
