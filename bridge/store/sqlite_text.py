"""SQLite's text index: FTS5 in a file of its own beside the store, kept by a thread of its own.

Why apart from the events: an FTS5 insert is half to two thirds of a commit's work, and
FTS5 merges its segments inside whichever transaction crosses a threshold (40-140 ms on a
200,000-event store), so with the index in the events' transaction every such merge
stalled the stream, and a purge deleted index entries inside the write turn the stream
waits on (BENCHMARKS.md, "The text index behind a watermark"). In a file of its own the
index has its own write lock: the bridge commits events without it, and `TextIndexer`
indexes them after, from `indexed_through` (the last seq indexed, kept in the index file
and committed with the entries), usually a few milliseconds behind.

A text search first waits for the index to reach the newest event stored at its start
(`TEXT_WAIT_S` at most; past that it says how far behind the index is), so a search finds
what `/events` shows. The index is derived data: `store_id` ties it to its store, and an
index file that is missing, broken or of another store is built again from the events.
A crash loses at most its last commits, redone from `indexed_through`.

Deletions: a contentless FTS5 table forgets a row only when told the text it indexed. The
purge makes that text before it deletes the events and hands it here once they are
deleted (`forget`); the purge only deletes what is indexed already. A crash between the
two leaves those entries behind, matching no event (a search joins each hit to its
event): they cost space, never a wrong answer.

Space: FTS5 deletes by writing delete markers, and drops a deleted row's entries only when
a merge reaches its oldest segment, so under retention the file grew with each turnover
(0.6 -> 5.2 MB over ten, BENCHMARKS.md). Forcing that merge is no way out: on SQLite 3.40
each all-level merge adds a level, and beside a writer the index passed FTS5's limit and
read as corrupt. So once the index has forgotten as many events as the store spans (and
at least `COMPACT_AFTER`), and the purge has been quiet for `QUIET_S` (not in the middle of
a long backlog), the thread builds a fresh table beside it from the events, a step at a
time between its indexing steps, and swaps it in (a drop and a rename, one transaction):
each event is indexed about twice, and the file holds about twice what its events need.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bridge.store.base import StoreUnavailable
from bridge.store.space import WAL_LIMIT_BYTES, sqlite_used_bytes
from bridge.store.sqlite_search import index_text

logger = logging.getLogger("logagg.bridge.store")

# Contentless (the text is not kept: the event is), no column sizes (nothing ranks).
_FTS5 = "USING fts5 (body, content = '', columnsize = 0, tokenize = 'ascii')"
TEXT_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts {_FTS5};
-- A compaction cut short (see above).
DROP TABLE IF EXISTS events_fts_next;
"""
# The compaction's table, built beside `events_fts` and renamed to it.
_NEXT = f"CREATE VIRTUAL TABLE events_fts_next {_FTS5}"
_INSERT = "INSERT INTO {} (rowid, body) VALUES (?, ?)"
_DELETE = "INSERT INTO {0} ({0}, rowid, body) VALUES ('delete', ?, ?)"
# Events indexed per transaction: ~50 ms of work, so `forget` and a stop wait little.
STEP = 2000
# The thread wakes after a commit of the bridge, and at least this often; woken, it lets
# `GATHER_S` of commits gather first: an FTS5 transaction costs about as much for 1 event
# as for 50 (its segment, its merges), and indexing each of 1,000/s one by one took a
# fifth of a core more than the same events indexed together.
IDLE_S = 0.5
GATHER_S = 0.05
# After an error (the disk full, the file locked), the thread tries again this much later.
RETRY_S = 1.0
# How long a text search waits for the index to reach the newest event, and how often it looks.
TEXT_WAIT_S = 2.0
_POLL_S = 0.002
# How long closing the store waits for the index to take in what was committed.
CLOSE_S = 5.0

# Compaction (see above): due once this many events were forgotten, and as many as the
# store spans, with no purge for this long.
COMPACT_AFTER = 10_000
QUIET_S = 1.0
# A compaction that meets more deleted events than this gives up (and starts again later).
_MAX_GAPS = 100_000

# SQLite's largest rowid: no upper bound on the events read.
_LAST_SEQ = 2**63 - 1

# A text index file past saving: built again from the events.
_BROKEN = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

# (seq, the text it was indexed with): what `forget` is told.
Indexed = tuple[int, str]


@dataclass(slots=True)
class _Table:
    """An index table and the events it may hold: from seq `start` on (through `read` while
    a compaction builds it), but `gaps`, deleted before the compaction read them."""

    name: str
    start: int = 0
    read: int | None = None
    gaps: set[int] = field(default_factory=set)

    def holds(self, seq: int) -> bool:
        return (
            self.start <= seq and (self.read is None or seq <= self.read) and seq not in self.gaps
        )


def text_path(path: Path) -> Path:
    """The text index's file beside the store's (`logagg.db` -> `logagg.db-text`)."""
    return path.with_name(f"{path.name}-text")


def _remove(path: Path) -> None:
    """The index file and SQLite's files beside it."""
    for name in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        name.unlink(missing_ok=True)


class TextIndexer:
    """The index of the store at `events`, tied to its `store_id`, kept up to date by a
    daemon thread from the events the bridge commits (`wake` after each commit)."""

    def __init__(self, events: Path, store_id: str) -> None:
        self.path = text_path(events)
        self._store_id = store_id
        self._events = sqlite3.connect(
            f"file:{events}?mode=ro", uri=True, check_same_thread=False, timeout=5.0
        )
        self.through = 0  # the last seq indexed (set by `_open`)
        self._index = self._open()
        # Measures the file from the bridge's thread while this one writes it.
        self._measure = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        self._measuring = threading.Lock()
        self._forgotten: list[Indexed] = []
        self._forgotten_since = 0  # since the last compaction (or this start)
        self._last_forget = 0.0  # when a purge last handed events to forget (monotonic)
        self._table = _Table("events_fts")
        self._next: _Table | None = None  # the compaction under way
        self._pending = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logagg-text-index", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        """The index file, made anew when it is broken or another store's."""
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode not in _BROKEN:
                raise
            why = f"it is broken ({exc})"
        else:
            if self._meta(conn, "store_id") != self._store_id:
                why = "it indexes another store"
            elif self.through > self._last_seq():
                why = "it is ahead of the store (restored from a backup?)"
            else:
                return conn
            conn.close()
        logger.warning("building the text index %s again: %s", self.path, why)
        _remove(self.path)
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # A commit lost to a power cut is indexed again: no need to wait for the disk.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            conn.executescript(TEXT_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('store_id', ?), ('indexed_through', '0')",
                (self._store_id,),
            )
            self.through = int(self._meta(conn, "indexed_through"))
        except BaseException:
            conn.close()
            raise
        return conn

    def _last_seq(self) -> int:
        """The highest seq the store ever gave (AUTOINCREMENT's record: never reused)."""
        row = self._events.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(value)

    def wake(self) -> None:
        """Events were committed: index them now rather than at the next idle tick."""
        self._wake.set()

    def forget(self, indexed: Sequence[Indexed]) -> None:
        """Take these deleted events out of the index (each seq at most `through`); called
        once they are deleted from the store, which a compaction relies on."""
        with self._pending:
            self._forgotten.extend(indexed)
            self._last_forget = time.monotonic()
        self._wake.set()

    def used_bytes(self) -> int:
        """The index file's pages that hold data (`space.sqlite_used_bytes`)."""
        with self._measuring:
            return sqlite_used_bytes(self._measure)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self._step() or self._compact():
                    if self._stop.is_set():
                        return
            except sqlite3.Error as exc:
                if exc.sqlite_errorcode in _BROKEN:
                    self._rebuild(exc)
                else:
                    logger.error("cannot index %s for search (retrying): %s", self.path, exc)
                if self._stop.wait(RETRY_S):
                    return
                continue
            if self._closing.is_set():
                return
            if self._wake.wait(IDLE_S) and self._stop.wait(GATHER_S):
                return
            self._wake.clear()

    def _step(self) -> bool:
        """Index the next events, and forget the deleted ones, in one transaction; whether
        there is more to index."""
        rows = self._events_after(self.through)
        forgotten = self._take_forgotten()
        if not rows and not forgotten:
            return False
        with self._writing(forgotten):
            self._index.executemany(_INSERT.format(self._table.name), index_texts(rows))
            if rows:
                self._index.execute(
                    "UPDATE meta SET value = ? WHERE key = 'indexed_through'", (rows[-1][0],)
                )
            self._forget(forgotten)
        if rows:
            self.through = rows[-1][0]
        return len(rows) == STEP

    def _compact(self) -> bool:
        """One step of the compaction (see above), started when due; whether there is more."""
        if self._next is None:
            oldest = self._compaction_due()
            if oldest is None:
                return False
            self._index.execute(_NEXT)
            self._next, self._forgotten_since = _Table("events_fts_next", oldest, oldest - 1), 0
        new = self._next
        assert new.read is not None
        rows = self._events_after(new.read, self.through)
        # Seqs the step passes over were deleted before it read them: not in the new table.
        last = rows[-1][0] if len(rows) == STEP else self.through
        if len(new.gaps) + (last - new.read - len(rows)) > _MAX_GAPS:
            self._index.execute("DROP TABLE events_fts_next")
            self._next = None
            return False
        read = _Table(new.name, new.start, last, new.gaps | set(range(new.read + 1, last + 1)))
        read.gaps -= {row[0] for row in rows}
        forgotten = self._take_forgotten()
        done = last == self.through
        with self._writing(forgotten):
            self._index.executemany(_INSERT.format(new.name), index_texts(rows))
            self._next = read
            self._forget(forgotten)
            if done:
                self._index.execute("DROP TABLE events_fts")
                self._index.execute("ALTER TABLE events_fts_next RENAME TO events_fts")
        if not done:
            return True
        # What the new table can hold: events from its start on, but its gaps, and all after.
        self._table, self._next = _Table("events_fts", read.start, None, read.gaps), None
        logger.info("compacted the text index %s", self.path)
        return False

    def _events_after(self, seq: int, upto: int = _LAST_SEQ) -> list[tuple[int, str, str, str]]:
        """The next `STEP` events after `seq`, up to seq `upto`, oldest first."""
        rows: list[tuple[int, str, str, str]] = self._events.execute(
            "SELECT seq, event_id, source, payload FROM events WHERE seq > ? AND seq <= ?"
            " ORDER BY seq LIMIT ?",
            (seq, upto, STEP),
        ).fetchall()
        return rows

    def _take_forgotten(self) -> list[Indexed]:
        """What the purge handed to forget since last taken."""
        with self._pending:
            forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def _compaction_due(self) -> int | None:
        """The oldest event's seq when a compaction is due (see above), else None."""
        with self._pending:
            quiet = time.monotonic() - self._last_forget >= QUIET_S
        if self._forgotten_since < COMPACT_AFTER or not quiet:
            return None
        (low, high) = self._events.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        if low is None or self._forgotten_since < high - low + 1:
            return None
        return int(low)

    def _forget(self, forgotten: list[Indexed]) -> None:
        """Take deleted events out of each table that holds them (in the caller's
        transaction): a contentless table must not be told to delete what it lacks."""
        for table in (self._table, self._next):
            if table is not None:
                held = [f for f in forgotten if table.holds(f[0])]
                self._index.executemany(_DELETE.format(table.name), held)

    @contextmanager
    def _writing(self, forgotten: list[Indexed]) -> Iterator[None]:
        """A write transaction of the index; what the purge handed to forget in it is
        handed back if it fails (and the tables' state put back)."""
        conn = self._index
        table, new = self._table, self._next
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            self._table, self._next = table, new
            with self._pending:
                self._forgotten[:0] = forgotten
            raise
        self._forgotten_since += len(forgotten)

    def _rebuild(self, exc: sqlite3.Error) -> None:
        """The file broke under us: start it again from the first event. What the purge
        asked to forget is gone from the events, so the new index never holds it."""
        logger.error("the text index %s is broken (%s): building it again", self.path, exc)
        with self._pending:
            self._forgotten = []
        self._table, self._next = _Table("events_fts"), None
        self._index.close()
        with self._measuring:
            self._measure.close()
            _remove(self.path)
            self._index = self._open()
            self._measure = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)

    def caught_up(self, newest: int, timeout: float) -> bool:
        """Wait until the events up to seq `newest` are indexed; whether they were within
        `timeout`."""
        deadline = time.monotonic() + timeout
        while self.through < newest:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(_POLL_S)
        return True

    def close(self) -> None:
        """Index what was committed (`CLOSE_S` at most: the next start does the rest), then stop."""
        self._closing.set()
        self._wake.set()
        self._thread.join(CLOSE_S)
        if self._thread.is_alive():
            logger.info("closing before the text index caught up: the next start indexes the rest")
            self._stop.set()
            self._thread.join()
        for conn in (self._index, self._events, self._measure):
            conn.close()


def index_texts(rows: list[tuple[int, str, str, str]]) -> list[Indexed]:
    """What the index holds for these events (seq, event_id, source, payload JSON)."""
    return [(seq, index_text(eid, src, json.loads(p))) for seq, eid, src, p in rows]


def await_index(conn: sqlite3.Connection, path: Path) -> None:
    """Attach the store's text index to the read-only `conn` as `text`, once it holds every
    event stored now; else (after `TEXT_WAIT_S`) StoreUnavailable saying how far it is."""
    index = text_path(path)
    if not index.exists():
        raise StoreUnavailable(
            f"search by text is not ready: {index} is not built yet (the bridge builds it)"
        )
    conn.execute("ATTACH ? AS text", (f"file:{index}?mode=ro",))
    (newest,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    deadline = time.monotonic() + TEXT_WAIT_S
    while True:
        # None while the file is another store's, or ahead of this one (restored from a
        # backup), until the bridge builds it again.
        (through,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM text.meta WHERE key = 'indexed_through'"
            " AND (SELECT value FROM text.meta WHERE key = 'store_id')"
            " = (SELECT value FROM main.meta WHERE key = 'store_id')"
            " AND CAST(value AS INTEGER)"
            " <= coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
        ).fetchone() or (None,)
        if through is not None and through >= newest:
            return
        if time.monotonic() > deadline:
            done = "" if through is None else f" (indexed to seq {through} of {newest})"
            raise StoreUnavailable(
                f"search by text is not ready: the bridge is still indexing {path}{done}"
            )
        time.sleep(_POLL_S)
