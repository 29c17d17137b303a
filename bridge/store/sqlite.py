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
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.event import Event
from bridge.store.base import (
    KEEP_REJECTED,
    SCHEMA_VERSION,
    BatchOutcome,
    EventKey,
    Refused,
    StoredEvent,
    StoredRejection,
    StoreUnavailable,
    check_schema_version,
    first_copies,
    iso_utc,
    payload_json,
    rejected_row,
    tally,
)
from bridge.store.options import StoreOptions
from bridge.store.reading import Connection, SqlReader

# Rows per multi-row INSERT: 6 parameters each stays far below SQLite's variable limit.
_CHUNK = 500

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

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A short-lived read-only connection in one read transaction: every query of a call
        sees the same snapshot (so /stats never straddles a commit), and in WAL mode readers
        never block the writer."""
        if not self.path.exists():
            raise StoreUnavailable(f"{self.path} does not exist yet: the bridge creates it")
        try:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=5.0, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
        with closing(conn):
            try:
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
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
            self._migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._connection = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            check_schema_version(int(row[0]) if row else 0)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def record(self, events: Sequence[Event], refused: Sequence[Refused]) -> BatchOutcome:
        conn = self._connection
        received_at = iso_utc(datetime.now(UTC))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcome = self._record(conn, events, refused, received_at)
                conn.execute("COMMIT")
            except BaseException:
                # SQLITE_FULL (and IOERR) roll back by themselves: a second ROLLBACK would
                # fail and hide the real reason ("database or disk is full") from the log.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from exc
        return outcome

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        events: Sequence[Event],
        refused: Sequence[Refused],
        received_at: str,
    ) -> BatchOutcome:
        rows = first_copies(events)
        inserted: set[EventKey] = set()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            values = ",".join(["(?,?,?,?,?,?)"] * len(chunk))
            params: list[str] = []
            for e in chunk:
                params += (
                    e.topic,
                    e.event_id,
                    e.timestamp.isoformat(),
                    e.source,
                    payload_json(e),
                    received_at,
                )
            cur = conn.execute(
                "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
                f" VALUES {values} ON CONFLICT DO NOTHING RETURNING topic, event_id",
                params,
            )
            inserted.update(cur.fetchall())
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
        return counts.outcome

    def heartbeat(self, client_id: str, run_id: str) -> None:
        boot_id, now = host_clock()
        try:
            self._connection.execute(
                _HEARTBEAT,
                {"client_id": client_id, "run_id": run_id, "boot_id": boot_id, "now": now},
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        self._connection.close()
