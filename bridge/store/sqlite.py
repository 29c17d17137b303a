"""SQLite store: WAL, one writer (the bridge), many readers (the sidecar, other processes).

Heartbeats need a clock that bridge and readers share. SQLite has no server, and WAL
needs writer and readers on one host; but the bridge's own clock may be wrong (a wall
clock an hour off, a process under libfaketime), and the wall clock can be stepped. So
heartbeats are stamped with the host's boot clock, read from /proc/uptime (seconds
since boot, which no one sets and no library fakes), with the boot's id: a stamp from
another boot is never fresh.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.event import Event
from bridge.query import Query
from bridge.retention import RetentionPolicy, key_hash
from bridge.store.base import (
    KEEP_REJECTED,
    SCHEMA_VERSION,
    BatchOutcome,
    Bucket,
    EventKey,
    Purged,
    QueryTimeout,
    Refused,
    SpaceReport,
    StoredEvent,
    StoredRejection,
    StoreFull,
    StoreUnavailable,
    check_schema_version,
    first_copies,
    iso_utc,
    payload_json,
    rejected_row,
    tally,
)
from bridge.store.options import StoreOptions
from bridge.store.policy import declare_policy, late
from bridge.store.reading import Connection, SqlReader, first_recent
from bridge.store.search_sql import micros
from bridge.store.space import WAL_LIMIT_BYTES, put_report, sqlite_used_bytes
from bridge.store.sqlite_retention import (
    RETENTION_SCHEMA,
    Turns,
    count,
    expired_copies,
    has_keys,
)
from bridge.store.sqlite_retention import purge as purge_expired
from bridge.store.sqlite_search import (
    SEARCH_SCHEMA,
    bounded_rows,
    histogram,
    note_minutes,
    search_rows,
    time_span,
)
from bridge.store.sqlite_text import TextIndexer, await_index

logger = logging.getLogger("logagg.bridge.store")
# The schema that can be searched; a store below it is still being upgraded.
SEARCH_SCHEMA_VERSION = 3
# In `meta` while upgrading to schema 3: the last seq given its `ts` (the key's name is
# older than the text index's own `indexed_through`, in its own file).
_STAMPED_THROUGH = "indexed_through"

# Rows per multi-row INSERT: 7 parameters each stays far below SQLite's variable limit.
_CHUNK = 500
# The upgrade to schema 3 indexes old events in transactions of about this long, so that
# it never holds the store for much longer at a time; and logs its progress every 5%.
_UPGRADE_STEP_S = 0.05
_UPGRADE_FIRST_STEP = 1000  # events in the first transaction; then adapted to the time
_UPGRADE_REPORT_SHARE = 0.05
# How long a purge pass waits for the text index to reach the events it would delete (past
# that it deletes what is indexed, and the next pass the rest).
_PURGE_INDEX_WAIT_S = 5.0
# A read checks its deadline every this many SQLite VM instructions (about a millisecond).
_TIMEOUT_CHECK_STEPS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    event_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    -- `timestamp` as µs since the epoch, UTC: what time ranges compare and histograms
    -- bucket. NULL only in a store still being upgraded to schema 3.
    ts INTEGER,
    UNIQUE (topic, event_id)
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE TABLE IF NOT EXISTS topic_stats (
    topic TEXT PRIMARY KEY,
    unique_processed INTEGER NOT NULL,
    duplicate_dropped INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejection_stats (code TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mqtt_topic TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at TEXT NOT NULL
);
DROP TABLE IF EXISTS bridges;
CREATE TABLE IF NOT EXISTS heartbeats (
    client_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    -- Seconds since boot on the host clock (see the module's docstring), and which boot.
    boot_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
"""

# `started_at` is the first beat of this run (a new run, or a new boot, starts it afresh).
_HEARTBEAT = """
INSERT INTO heartbeats AS h (client_id, run_id, boot_id, started_at, seen_at)
VALUES (:client_id, :run_id, :boot_id, :now, :now)
ON CONFLICT (client_id) DO UPDATE SET
    run_id = excluded.run_id,
    boot_id = excluded.boot_id,
    seen_at = excluded.seen_at,
    started_at = CASE WHEN h.run_id = excluded.run_id AND h.boot_id = excluded.boot_id
        THEN h.started_at ELSE excluded.started_at END
"""

_LIVE_UPTIMES = """
SELECT :now - started_at AS uptime FROM heartbeats
WHERE boot_id = :boot_id AND seen_at > :now - :alive_s
"""


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _require_search(conn: sqlite3.Connection) -> None:
    """Refuse to search a store whose old events are not all indexed yet: it would miss them."""
    if _schema_version(conn) >= SEARCH_SCHEMA_VERSION:
        return
    row = conn.execute(
        "SELECT CAST(value AS INTEGER), (SELECT max(seq) FROM events) FROM meta WHERE key = ?",
        (_STAMPED_THROUGH,),
    ).fetchone()
    progress = f" ({100 * row[0] // max(row[1], 1)}% done)" if row else ""
    raise StoreUnavailable(
        f"search is not ready: the bridge is upgrading the store to index its events{progress}"
    )


# An export's line (bridge.store.export), made by SQLite from the stored text: the payload
# as stored (compact JSON), names quoted by `json_quote`, the two times as they are (ISO
# text from `isoformat`: nothing in them to escape). Made here, a row is one string for
# Python to carry rather than seven values: an export runs at the speed of reading the
# table (BENCHMARKS.md, "Export").
_EXPORT_COLUMNS = (
    """seq, '{"seq":' || seq || ',"topic":' || json_quote(topic)"""
    """ || ',"event_id":' || json_quote(event_id) || ',"timestamp":"' || timestamp"""
    """ || '","source":' || json_quote(source) || ',"payload":' || payload"""
    """ || ',"received_at":"' || received_at || '"}' || char(10)"""
)


def _write_error(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """SQLITE_FULL (the disk is full: SQLite turns ENOSPC into it) as StoreFull."""
    if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
        return StoreFull(f"the disk of {path} is full: {exc}")
    return StoreUnavailable(f"cannot write {path}: {exc}")


def host_clock() -> tuple[str, float]:
    """(this boot's id, seconds since boot): the host's clock, the same in every process."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot_id, float(Path("/proc/uptime").read_text().split()[0])


class SQLiteReader(SqlReader):
    """Reads the store at `path` in short read-only transactions; never creates it."""

    _MARK = "?"
    _EVENT_COLUMNS = "seq, topic, event_id, timestamp, source, payload, received_at"
    _PAYLOAD_SIZE = "length(payload)"
    # `received_at` is always the same width (`iso_utc`): text compares and cuts as time does.
    _SINCE = "received_at >= ?"
    _SECOND = "substr(received_at, 1, 19)"
    _UNIX = "CAST(strftime('%s', {}) AS INTEGER)"

    def __init__(self, path: Path, options: StoreOptions) -> None:
        self.path = path
        self._alive_s = options.alive_s
        self._timeout_s = options.query_timeout_s

    @contextmanager
    def _read(self, *, text: bool = False) -> Iterator[sqlite3.Connection]:
        """A short-lived read-only connection in one read transaction: every query of a call
        sees the same snapshot (so /stats never straddles a commit), and in WAL mode readers
        never block the writer. The call is interrupted past the query timeout. With `text`,
        the text index is attached once it holds every event stored at the start."""
        if not self.path.exists():
            raise StoreUnavailable(f"{self.path} does not exist yet: the bridge creates it")
        try:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=5.0, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
        deadline = time.monotonic() + self._timeout_s
        conn.set_progress_handler(lambda: time.monotonic() > deadline, _TIMEOUT_CHECK_STEPS)
        with closing(conn):
            try:
                if text:
                    await_index(conn, self.path)
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if time.monotonic() > deadline and "interrupted" in str(exc):
                    raise QueryTimeout(
                        f"the query ran past the store's {self._timeout_s:g} s timeout"
                        " (query_timeout_s): narrow it, e.g. with a shorter time range or a topic"
                    ) from exc
                raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc

    def _live_uptimes(self, client_id: str | None) -> tuple[str, dict[str, object]]:
        boot_id, now = host_clock()
        params: dict[str, object] = {"boot_id": boot_id, "now": now, "alive_s": self._alive_s}
        if client_id is None:
            return _LIVE_UPTIMES, params
        return _LIVE_UPTIMES + " AND client_id = :client_id", {**params, "client_id": client_id}

    def _now(self, conn: Connection) -> float:
        """The wall clock, which stamps `received_at`: the bridge's and ours, on one host."""
        return time.time()

    def _instant(self, unix: float) -> object:
        return iso_utc(datetime.fromtimestamp(unix, UTC))

    def _event(self, row: Any) -> StoredEvent:
        seq, topic, event_id, timestamp, source, payload, received_at = row
        return StoredEvent(
            seq, topic, event_id, timestamp, source, json.loads(payload), received_at
        )

    def _rejection(self, row: Any) -> StoredRejection:
        return StoredRejection(*row)

    def _floor(self, conn: Connection, since: float) -> int:
        bounds = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        if bounds[0] is None:
            return 0
        instant = self._instant(since)
        return first_recent(
            lambda seq: conn.execute(
                "SELECT seq, received_at >= ? FROM events WHERE seq >= ? ORDER BY seq LIMIT 1",
                (instant, seq),
            ).fetchall()[0],
            bounds[0],
            bounds[1] + 1,
        )

    def _topic_list(self, topics: list[str]) -> tuple[str, object]:
        return "topic IN (SELECT value FROM json_each(?))", json.dumps(topics)

    def search(self, query: Query, *, max_bytes: int | None = None) -> list[StoredEvent]:
        with self._read(text=query.text is not None) as conn:
            _require_search(conn)
            rows = search_rows(
                conn,
                query,
                self._EVENT_COLUMNS,
                self._PAYLOAD_SIZE,
                max_bytes,
                self._retained(conn),
            )
        return [self._event(row) for row in rows]

    def export_page(self, query: Query, *, max_bytes: int) -> list[tuple[int, str]]:
        with self._read(text=query.text is not None) as conn:
            _require_search(conn)
            rows: list[tuple[int, str]] = bounded_rows(
                conn, query, _EXPORT_COLUMNS, max_bytes, self._retained(conn)
            )
        return rows

    def histogram(self, query: Query, interval_s: int) -> list[Bucket]:
        with self._read(text=query.text is not None) as conn:
            _require_search(conn)
            return histogram(conn, query, interval_s, self._retained(conn))

    def time_span(self, query: Query) -> tuple[datetime, datetime] | None:
        with self._read(text=query.text is not None) as conn:
            _require_search(conn)
            return time_span(conn, query, self._retained(conn))

    def close(self) -> None:
        """Nothing to close: each read opens and closes its own connection."""


class SQLiteWriter(SQLiteReader):
    """The bridge's store: one connection, created with the file and schema if need be.
    `durability` is SQLite's `synchronous`."""

    def __init__(self, path: Path, options: StoreOptions) -> None:
        super().__init__(path, options)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={options.durability.sqlite_synchronous}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._migrate(conn)
            self._policy_now = declare_policy(conn, "?", options.retention, self.path)
            # Whether `record` must look for expired copies: false until a key is kept.
            self._keys = has_keys(conn)
            (store_id,) = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            self._text = TextIndexer(self.path, store_id)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._connection = conn
        self._purger: sqlite3.Connection | None = None
        self._purging = threading.Lock()
        # The write turn: a batch and a purge transaction take it in turn (see `purge`).
        self._turn = Turns()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the schema, or upgrade it: an older store gains the search columns and
        tables at once, then its events are stamped by `_stamp_old_events` before the
        store says schema 3 (until then search says it is not ready); a text index kept
        in the store (schema 3-5) is dropped, and built again in its own file."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                conn.execute(statement)
            found = _schema_version(conn)
            check_schema_version(found)
            if "ts" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                conn.execute("ALTER TABLE events ADD COLUMN ts INTEGER")
            for statement in (SEARCH_SCHEMA + RETENTION_SCHEMA).split(";"):
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value)"
                " VALUES ('store_id', lower(hex(randomblob(16))))"
            )
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events_fts'").fetchone():
                logger.info(
                    "upgrading %s: its text index moves to a file of its own, built again from"
                    " the events while the bridge runs (text search says when it is ready)",
                    self.path,
                )
                conn.execute("DROP TABLE events_fts")
            (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            upgrading = found < SEARCH_SCHEMA_VERSION and last > 0
            if upgrading:
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", (_STAMPED_THROUGH,)
                )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(found if upgrading else SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if upgrading:
            self._stamp_old_events(conn, last)

    def _stamp_old_events(self, conn: sqlite3.Connection, last: int) -> None:
        """Give the events up to seq `last` stored before schema 3 their `ts` and place in
        `minute_seqs`, oldest first, in short transactions that each record how far they
        got (an interrupted upgrade resumes there), then say schema 3. Runs before the
        bridge consumes: its log says how long that takes."""
        (done,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?", (_STAMPED_THROUGH,)
        ).fetchone()
        started, total, step, reported = time.monotonic(), last - done, _UPGRADE_FIRST_STEP, 0.0
        longest = 0.0
        logger.info(
            "upgrading %s to schema %d: stamping up to %d stored events for search; the bridge"
            " consumes once this is done",
            self.path,
            SCHEMA_VERSION,
            total,
        )
        while done < last:
            began = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT seq, timestamp FROM events WHERE seq > ? AND seq <= ?"
                    " ORDER BY seq LIMIT ?",
                    (done, last, step),
                ).fetchall()
                stamped = [(seq, micros(datetime.fromisoformat(at))) for seq, at in rows]
                conn.executemany(
                    "UPDATE events SET ts = ? WHERE seq = ?", [(ts, seq) for seq, ts in stamped]
                )
                note_minutes(conn, stamped)
                done = rows[-1][0] if rows else last
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = ?", (str(done), _STAMPED_THROUGH)
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            took = time.monotonic() - began
            longest = max(longest, took)
            step = max(100, min(2 * step, int(step * _UPGRADE_STEP_S / max(took, 1e-3))))
            share = 1 - (last - done) / total
            if share >= reported + _UPGRADE_REPORT_SHARE or done >= last:
                reported = share
                logger.info(
                    "upgrading %s: %.0f%% stamped (%.0f s)",
                    self.path,
                    100 * share,
                    time.monotonic() - started,
                )
        with conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (_STAMPED_THROUGH,))
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        took = time.monotonic() - started
        logger.info(
            "upgraded %s to schema %d: %d events stamped in %.1f s (%.0f events/s; the"
            " store held at most %.0f ms at a time)",
            self.path,
            SCHEMA_VERSION,
            total,
            took,
            total / max(took, 1e-3),
            1000 * longest,
        )

    @property
    def policy(self) -> RetentionPolicy:
        return self._policy_now

    def record(self, events: Sequence[Event], refused: Sequence[Refused]) -> BatchOutcome:
        conn = self._connection
        now = datetime.now(UTC)
        received_at = iso_utc(now)
        try:
            with self._turn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Copies of expired events whose keys are kept are duplicates: not stored.
                    gone = expired_copies(conn, events) if self._keys and events else set()
                    outcome, rows, inserted = self._record(conn, events, refused, received_at, gone)
                    if self._policy_now.finite and inserted:
                        stored = [e for e in rows if (e.topic, e.event_id) in inserted]
                        count(conn, "late", late(stored, self._policy_now, now))
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLITE_FULL (and IOERR) roll back by themselves: a second ROLLBACK
                    # would fail and hide the real reason ("database or disk is full").
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from exc
        self._text.wake()
        return outcome

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        events: Sequence[Event],
        refused: Sequence[Refused],
        received_at: str,
        gone: set[int],
    ) -> tuple[BatchOutcome, list[Event], set[EventKey]]:
        """What the batch did, the events it tried to store and the keys of those it stored
        (the events stored are made only where retention needs them: a list per batch is
        writer time under the GIL); `gone` are the keys of expired events, whose copies are
        duplicates."""
        rows = first_copies(events)
        if gone:
            rows = [e for e in rows if key_hash(e.topic, e.event_id) not in gone]
        inserted: set[EventKey] = set()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            values = ",".join(["(?,?,?,?,?,?,?)"] * len(chunk))
            stamps = [micros(e.timestamp) for e in chunk]
            params: list[str | int] = []
            for e, ts in zip(chunk, stamps, strict=True):
                params += (
                    e.topic,
                    e.event_id,
                    e.timestamp.isoformat(),
                    e.source,
                    payload_json(e),
                    received_at,
                    ts,
                )
            cur = conn.execute(
                "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at, ts)"
                f" VALUES {values} ON CONFLICT DO NOTHING RETURNING seq, topic, event_id",
                params,
            )
            new = {(topic, event_id): seq for seq, topic, event_id in cur.fetchall()}
            inserted.update(new)
            note_minutes(
                conn,
                [
                    (new[key], ts)
                    for e, ts in zip(chunk, stamps, strict=True)
                    if (key := (e.topic, e.event_id)) in new
                ],
            )
        counts = tally(events, refused, inserted)
        conn.executemany(
            "INSERT INTO topic_stats (topic, unique_processed, duplicate_dropped) VALUES (?, ?, ?)"
            " ON CONFLICT (topic) DO UPDATE SET"
            " unique_processed = unique_processed + excluded.unique_processed,"
            " duplicate_dropped = duplicate_dropped + excluded.duplicate_dropped",
            counts.topics,
        )
        if refused:
            conn.executemany(
                "INSERT INTO rejected (mqtt_topic, code, reason, body, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(*rejected_row(r), received_at) for r in refused],
            )
            conn.executemany(
                "INSERT INTO rejection_stats (code, count) VALUES (?, ?)"
                " ON CONFLICT (code) DO UPDATE SET count = count + excluded.count",
                counts.codes,
            )
            conn.execute(
                "DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM rejected) - ?",
                (KEEP_REJECTED,),
            )
        return counts.outcome, rows, inserted

    def purge(self, stopping: Callable[[], bool]) -> Purged:
        """On its own connection (made on first use), one pass at a time."""
        with self._purging:
            try:
                if self._purger is None:
                    self._purger = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False, timeout=5.0
                    )
                    # A purge lost to a power cut is redone by the next pass, and WAL keeps
                    # each transaction whole: its commits need not wait for the disk.
                    self._purger.execute("PRAGMA synchronous=NORMAL")
                    self._purger.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
                    # Its commits never checkpoint (inside the write turn, a checkpoint held
                    # the batches for its copy and fsync): each step checkpoints after it.
                    self._purger.execute("PRAGMA wal_autocheckpoint=0")
                conn = self._purger
                with self._reading(conn):
                    policy = self._policy(conn)
                    floors = self._floors(conn, policy)
                self._policy_now = policy
                if not policy.finite and policy.horizon_s is None:
                    return Purged()
                # Before the first key is committed, so no batch after it misses the check.
                self._keys = True
                # Only what the text index holds, so that it can forget what is deleted: it
                # is milliseconds behind the newest event, unless the bridge just started.
                self._text.caught_up(max(floors.values(), default=1) - 1, _PURGE_INDEX_WAIT_S)
                indexed = self._text.through + 1
                floors = {topic: min(floor, indexed) for topic, floor in floors.items()}
                return purge_expired(
                    conn, floors, policy, time.time(), stopping, self._turn, self._text.forget
                )
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot purge {self.path}: {exc}") from exc

    @contextmanager
    def _reading(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def heartbeat(self, client_id: str, run_id: str) -> None:
        boot_id, now = host_clock()
        try:
            with self._turn:
                self._connection.execute(
                    _HEARTBEAT,
                    {"client_id": client_id, "run_id": run_id, "boot_id": boot_id, "now": now},
                )
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from exc

    def used_bytes(self) -> int:
        try:
            return sqlite_used_bytes(self._connection) + self._text.used_bytes()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot measure {self.path}: {exc}") from exc

    def reusable_bytes(self) -> int:
        return 0  # freelist pages are already left out of the measure

    def report_space(self, client_id: str, report: SpaceReport | None) -> None:
        try:
            with self._turn:
                put_report(self._connection, self._MARK, client_id, report)
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from exc

    def text_indexed(self, timeout: float) -> bool:
        """Wait until every event stored now is in the text index; whether it was within
        `timeout` (a bench's prefill waits, rather than measure the indexing)."""
        (newest,) = self._connection.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return self._text.caught_up(newest, timeout)

    def close(self) -> None:
        with self._purging:
            if self._purger is not None:
                self._purger.close()
        self._text.close()
        self._connection.close()
