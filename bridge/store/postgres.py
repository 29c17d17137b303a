"""PostgreSQL store: many bridges write one database at once; the primary key dedups.

`postgresql://user@host/db?schema=NAME` keeps the tables in schema NAME (created by the
writer; default: the connection's search_path, normally `public`). Any other query
parameter goes to libpq (see `bridge.store.url`); `connect_timeout` (default 5 s) also
bounds how long a call waits for a pooled connection before it reports the store
unavailable.

A batch is one statement (see `record_sql`) and one round trip: the events as one JSON
text (`json_to_recordset`), the counters, the rejections. Without events it runs outside
a transaction block, its own transaction; with events it is followed, in its
transaction, by a check against the purge, a round trip per statement
(`postgres_retention.record_events`).
`INSERT … ON CONFLICT DO NOTHING` arbitrates on the unique index, where a concurrent
insert of the same key waits for the other transaction and then yields no row (or the row,
if the other rolled back); counters are `x = x + n` upserts, which lock the row and add to
its newest version, so no increment is lost. Each writer counts in rows of its own (a
random `slot` of SLOTS, summed when read), so bridges do not queue on one hot counter row.
SERIALIZABLE would add serialization failures and nothing else.

Deadlocks between bridges are avoided by taking row locks in one global order: each
batch inserts its events sorted by key, then updates spans, topic counters and rejection
counters sorted by name (see `BatchTally`).

`durability` maps to `synchronous_commit` (see `Durability`).

Concurrent writers: `seq` comes from an identity column, drawn in insert order, but
transactions commit in any order, so a row can become visible after one with a higher
`seq`; a tail that had read up to the newest visible `seq` would skip it for good. No lock
orders the commits. Instead every read stops at a watermark (`_watermark_sql`), below
which no unfinished transaction can still commit a row:

1. A batch first reads the sequence's newest value `v` and takes a *shared*
   transaction-level advisory lock keyed `v` (bigint), then inserts: its seqs are all
   above `v`, and the lock, visible in `pg_locks` until its commit, says so. Shared locks
   never wait on each other.
2. A reader, before its snapshot, reads the sequence's newest value `L`, then the lowest
   such key held by a session that also holds a lock on `events`: the watermark is the
   smaller. A writer that drew a seq at or below `L` drew it before `L` was read, so
   it held its lock then: either it still does (the watermark is below its seqs) or it
   has finished before the reader's snapshot (its rows are in it, or were rolled back).
3. The snapshot is taken after the watermark (its own statement first, outside the read
   transaction), and every read path filters `seq <= watermark` (`_horizon`, `where`).
4. A reader never moves its watermark back (`_watermark`): a writer that read the
   sequence before a reader and locked after it holds a key below that reader's
   watermark, which stays true all the same.

A reader's lag is the longest batch transaction in flight (measured at load 27 on 2 cores,
3 bridges at 1,000 events/s: 4 ms at the median, 130 ms at p99; BENCHMARKS.md, "live
tail"); a session stopped inside a transaction holds readers back, never
writers, until the server ends it after `hold_s`.

`rejected` has a sequence and a watermark of its own, the same way: a batch with refusals
first takes a shared advisory lock keyed by the newest rejected seq, as two int4 keys
(`objsubid` 2: the events' watermark, which reads bigint keys, never counts it, though one
transaction may hold both), and a read of `rejected` stops at its watermark, read from
those keys and the sessions writing `rejected` (`test_watermark.py`). Its pages by `after`
(`/rejected`, `logagg rejected export`) miss no rejection but those the trim to
KEEP_REJECTED deleted first. Rejections drawing seqs of `events` instead would have cost a
migration and gaps in the trim's count; one lock per batch with refusals costs nothing
a writer waits on, and a read of `rejected` one watermark query, as any read.

No session may hold the others for long: every session gets
`idle_in_transaction_session_timeout` = `hold_s` (the server ends a session idle inside a
transaction, which releases its locks), `lock_timeout` = twice `hold_s` (a wait
outlasting a stuck holder's removal is reported, then retried), and `statement_timeout` =
six times `hold_s` (a read transaction sets its own, `query_timeout_s`, and reports
running past it as `QueryTimeout`).

Search (issue 11): each event's `tsv` is written by its own INSERT; `postgres_search`
turns a `Query` into SQL, `postgres_backfill` upgrades a schema 2 store beside ingest.

Heartbeats are stamped with the server's `now()` and judged against its
`clock_timestamp()`: one clock, whatever the bridges' clocks say.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from bridge.event import Event
from bridge.query import Query, document, searchable, tsvector_literal
from bridge.retention import RetentionPolicy, key_hash
from bridge.store.base import (
    KEEP_REJECTED,
    SCHEMA_VERSION,
    BatchOutcome,
    Bucket,
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
    rejected_row,
    tally,
)
from bridge.store.options import StoreOptions
from bridge.store.policy import chunks, declare_policy, overdue
from bridge.store.postgres_backfill import (
    BACKFILL_PROGRESS,
    PENDING_KEY,
    PENDING_LIST_KB,
    TEXT_INDEXES,
    TIME_INDEXES,
    Backfill,
    create_index,
    limit_pending_list,
)
from bridge.store.postgres_retention import (
    FLOOR,
    RETENTION_SCHEMA,
    analyze_if_grown,
    forget_chunk,
    prune_time_seqs,
    purge_chunk,
    rebuild_text_index,
    record_events,
)
from bridge.store.postgres_search import (
    COUNT_SPANS,
    TOPICS_LIKE,
    Where,
    histogram_sql,
    page_sql,
    seq_bounds,
    span_sql,
    where,
)
from bridge.store.reading import Connection, SqlReader
from bridge.store.space import (
    POSTGRES_FREE_SPACE_MAP,
    POSTGRES_REUSABLE_BYTES,
    POSTGRES_USED_BYTES,
    put_report,
)
from bridge.store.url import PostgresUrl

DEFAULT_TIMEOUT_S = 5.0

logger = logging.getLogger("logagg.bridge.store")

# A bridge uses one connection at a time (one writer thread); the sidecar's readers share these.
POOL_MAX = 4
# Serialises schema creation between bridges starting at once (any constant unique to logagg).
_MIGRATION_LOCK = 0x6C6F6761_67000001
# Each writer counts in one of this many slots (rows of topic_stats, rejection_stats and
# time_seqs, summed when read), drawn at random when it opens the store: bridges that
# drew different slots never wait on each other's counters; two that share one wait on
# each other row by row (correct, only slower).
SLOTS = 64

# An export's line (bridge.store.export), made by the server as SQLite makes it (see
# bridge/store/sqlite.py): the payload as jsonb's text, names quoted by `to_json`, the
# timestamp written as Python's `isoformat` writes it in its offset (microseconds only
# when not zero; the offset's seconds only when not zero), `received_at` as `iso_utc`.
_LOCAL = "(timestamp AT TIME ZONE 'UTC' + make_interval(secs => utc_offset_s))"
_OFFSET = "make_interval(secs => abs(utc_offset_s))"
_EXPORT_COLUMNS = (
    """seq, '{"seq":' || seq || ',"topic":' || to_json(topic)"""
    """ || ',"event_id":' || to_json(event_id) || ',"timestamp":"'"""
    f""" || to_char({_LOCAL}, 'YYYY-MM-DD"T"HH24:MI:SS')"""
    f""" || CASE WHEN extract(microseconds FROM {_LOCAL})::bigint %% 1000000 = 0 THEN ''"""
    f""" ELSE to_char({_LOCAL}, '.US') END"""
    """ || CASE WHEN utc_offset_s < 0 THEN '-' ELSE '+' END"""
    f""" || to_char({_OFFSET}, 'HH24:MI')"""
    f""" || CASE WHEN utc_offset_s %% 60 = 0 THEN '' ELSE to_char({_OFFSET}, ':SS') END"""
    """ || '","source":' || to_json(source) || ',"payload":' || payload::text"""
    """ || ',"received_at":"'"""
    """ || to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')"""
    """ || '+00:00"}' || chr(10) AS line, payload"""
)

# What a random page read costs the planner in reads, as against a sequential one (the
# server's default is 4: a spinning disk). Search reads the store's hot pages from memory.
READ_RANDOM_PAGE_COST = 1.1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic text NOT NULL,
    event_id text NOT NULL,
    timestamp timestamptz NOT NULL,
    -- The publisher's UTC offset: readers get the timestamp back as it was written.
    utc_offset_s integer NOT NULL,
    source text NOT NULL,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- What `q` searches, as Python tokenized it (NULL until a v2 store's backfill).
    tsv tsvector,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
-- Counters in one row per writer `slot` (see SLOTS), summed when read.
CREATE TABLE IF NOT EXISTS topic_stats (
    topic text NOT NULL,
    slot smallint NOT NULL DEFAULT 0,
    unique_processed bigint NOT NULL,
    duplicate_dropped bigint NOT NULL,
    PRIMARY KEY (topic, slot)
);
-- Per 5 minutes of `timestamp` from `start` and writer slot, the lowest and highest seq of
-- their events: bounds in seq of a time range (see `postgres_search.seq_bounds`).
CREATE TABLE IF NOT EXISTS time_seqs (
    start timestamptz NOT NULL,
    slot smallint NOT NULL DEFAULT 0,
    low bigint NOT NULL,
    high bigint NOT NULL,
    PRIMARY KEY (start, slot)
);
CREATE TABLE IF NOT EXISTS rejection_stats (
    code text NOT NULL,
    slot smallint NOT NULL DEFAULT 0,
    count bigint NOT NULL,
    PRIMARY KEY (code, slot)
);
CREATE TABLE IF NOT EXISTS rejected (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mqtt_topic text NOT NULL,
    code text NOT NULL,
    reason text NOT NULL,
    body text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
DROP TABLE IF EXISTS bridges;
CREATE TABLE IF NOT EXISTS heartbeats (
    client_id text PRIMARY KEY,
    run_id text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL
);
"""

# Schema 5 (concurrent writers): the counters gain their writer slot; the rows so far are
# slot 0's. Table → its key besides the slot.
_PER_SLOT = {"topic_stats": "topic", "rejection_stats": "code", "time_seqs": "start"}
_HAS_SLOT = "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'slot'"

# The server's clock for both stamps; `started_at` is the first beat of this run.
_HEARTBEAT = """
INSERT INTO heartbeats AS h (client_id, run_id, started_at, seen_at)
VALUES (%s, %s, now(), now())
ON CONFLICT (client_id) DO UPDATE SET
    run_id = excluded.run_id,
    seen_at = excluded.seen_at,
    started_at = CASE WHEN h.run_id = excluded.run_id THEN h.started_at ELSE excluded.started_at END
"""

# The live bridges' uptimes, on the server's clock.
_LIVE_UPTIMES = """
SELECT extract(epoch FROM clock_timestamp() - started_at)::float8 AS uptime FROM heartbeats
WHERE seen_at > clock_timestamp() - make_interval(secs => %s)
"""


def _newest_seq(table: str) -> str:
    """The newest seq of `table` handed out so far (0 before the first): every seq drawn
    from now on is above it. Read live, outside any transaction's snapshot."""
    return (
        f"coalesce(pg_sequence_last_value(pg_get_serial_sequence('{table}', 'seq')::regclass), 0)"
    )


_NEWEST_SEQ = _newest_seq("events")
# A writer's lock on the rejections' seqs (see `record_sql`): a two-int4 advisory lock,
# the newest rejected seq split in its high and low 32 bits, read once.
_REJECTING = f"""SELECT pg_advisory_xact_lock_shared((v >> 32)::int4, v::bit(32)::int4)
    FROM (SELECT {_newest_seq("rejected")} AS v OFFSET 0) AS newest"""
# Advisory locks show in pg_locks as (classid, objid): a bigint's high and low 32 bits, or
# the two int4 keys (as oids: unsigned), which `_REJECTING` makes the same bits.
_LOCK_KEY = "((held.classid::bigint << 32) | held.objid::bigint)"


def _watermark_sql(table: str, objsubid: int) -> str:
    """The watermark of `table` (see "Concurrent writers" above), whose writers lock their
    keys in advisory locks of `objsubid` (1: bigint, 2: two int4): the newest seq handed
    out, or below the lowest seq an unfinished writer may still commit; and which sequence
    (its oid). The sequence is read first (a subquery fenced by OFFSET 0), the locks after
    it (a subquery that depends on it). Only keys below the newest seq count: the purge's
    two-int4 locks (`postgres_retention`, class 0x6C6F676x) are far above any seq."""
    return f"""
SELECT sequence.id, least(newest, (
    SELECT min({_LOCK_KEY}) FROM pg_locks AS held
    JOIN pg_locks AS writing ON writing.pid = held.pid AND writing.database = held.database
    WHERE held.locktype = 'advisory' AND held.objsubid = {objsubid} AND held.granted
        AND held.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND writing.locktype = 'relation' AND writing.relation = '{table}'::regclass
        AND writing.mode = 'RowExclusiveLock' AND {_LOCK_KEY} < newest
)) FROM (
    SELECT {_newest_seq(table)} AS newest,
        pg_get_serial_sequence('{table}', 'seq')::regclass::oid::bigint AS id
    OFFSET 0
) AS sequence
"""


# Each table read by seq, and its watermark's query.
_WATERMARKS = {"events": _watermark_sql("events", 1), "rejected": _watermark_sql("rejected", 2)}


def record_sql(slot: int, *, events: bool, refused: bool, late: bool = False) -> str:
    """The one statement that records a batch (its own transaction, or after the purge
    fence in one with events: `PostgresWriter.record`): named parameters, counters in
    writer `slot`.

    With events: first a shared advisory lock keyed by the newest seq handed out (the
    events' seqs, drawn after it, are all above it; it shows readers where this writer's
    seqs begin until it commits), then the new events, their spans of time and the topic
    counters, whose duplicates are the batch's copies of a topic less its new events.
    With late ones among the events: how many of those were new, added to the writer's
    own `late:slot` row of `retention_counts` (no row shared by all writers).
    With refusals: a shared advisory lock keyed by the newest rejected seq (as the events'
    lock, in two int4 keys: readers of either table tell them apart), the rejected rows,
    their counters, and the trim to KEEP_REJECTED."""
    ctes: list[str] = []
    if events:
        ctes += [
            f"held AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({_NEWEST_SEQ}))",
            """inserted AS (
    INSERT INTO events (topic, event_id, timestamp, utc_offset_s, source, payload, tsv)
    SELECT t, e, ts, o, s, p, v FROM held, json_to_recordset(%(events)s::json)
        AS batch (t text, e text, ts timestamptz, o integer, s text, p jsonb, v tsvector, k bigint)
    -- A copy of an expired event whose key is kept is a duplicate (postgres_retention).
    WHERE NOT EXISTS (SELECT 1 FROM expired_keys AS x WHERE x.key = batch.k)
    ON CONFLICT DO NOTHING
    RETURNING topic, event_id, seq, timestamp
)""",
            f"spans AS ({COUNT_SPANS.format(rows='inserted', slot=slot)})",
            f"""counted AS (
    INSERT INTO topic_stats AS s (topic, slot, unique_processed, duplicate_dropped)
    SELECT batch.topic, {slot}, coalesce(new.n, 0), batch.copies - coalesce(new.n, 0)
    FROM unnest(%(topics)s::text[], %(copies)s::bigint[]) AS batch (topic, copies)
    LEFT JOIN (SELECT topic, count(*) AS n FROM inserted GROUP BY topic) AS new USING (topic)
    ORDER BY batch.topic
    ON CONFLICT (topic, slot) DO UPDATE SET
        unique_processed = s.unique_processed + excluded.unique_processed,
        duplicate_dropped = s.duplicate_dropped + excluded.duplicate_dropped
)""",
        ]
    if late:
        ctes.append(f"""overdue AS (
    INSERT INTO retention_counts AS c (name, count)
    SELECT 'late:{slot}', count(*) FROM inserted
    JOIN unnest(%(late_topics)s::text[], %(late_ids)s::text[]) AS l (topic, event_id)
        USING (topic, event_id)
    HAVING count(*) > 0
    ON CONFLICT (name) DO UPDATE SET count = c.count + excluded.count
)""")
    if refused:
        ctes += [
            f"rejecting AS MATERIALIZED ({_REJECTING})",
            """kept AS (
    INSERT INTO rejected (mqtt_topic, code, reason, body)
    SELECT t, c, r, b FROM rejecting, unnest(
        %(mqtt_topic)s::text[], %(code)s::text[], %(reason)s::text[], %(body)s::text[]
    ) AS batch (t, c, r, b)
    RETURNING seq
)""",
            f"""coded AS (
    INSERT INTO rejection_stats AS c (code, slot, count)
    SELECT code, {slot}, n FROM unnest(%(codes)s::text[], %(code_counts)s::bigint[]) AS x (code, n)
    ORDER BY code
    ON CONFLICT (code, slot) DO UPDATE SET count = c.count + excluded.count
)""",
            f"""trimmed AS (
    DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM kept) - {KEEP_REJECTED}
)""",
        ]
    main = "SELECT topic, event_id FROM inserted" if events else "SELECT NULL, NULL WHERE false"
    return "WITH " + ",\n".join(ctes) + "\n" + main


def _one_line(exc: BaseException) -> str:
    """libpq messages span lines (DETAIL, HINT); a log line should not."""
    return " ".join(str(exc).split())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A read transaction and its watermark: it reads rows (of the table it was opened
    for: events, or rejected) with seq up to `upto` only."""

    conn: psycopg.Connection[Any]
    upto: int

    def execute(
        self, query: str | bytes, params: Any = None, /, *, prepare: bool | None = None
    ) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params, prepare=prepare)


class PostgresReader(SqlReader):
    """Reads one PostgreSQL store through a connection pool, in read-only transactions;
    never creates the schema."""

    _MARK = "%s"
    _EVENT_COLUMNS = "seq, topic, event_id, timestamp, utc_offset_s, source, payload, received_at"
    _PAYLOAD_SIZE = "octet_length(payload::text)"
    _SINCE = "received_at >= to_timestamp(%s)"
    _SECOND = "date_trunc('second', received_at)"
    _UNIX = "extract(epoch FROM {})::bigint"
    _TOPIC_COUNTS = (
        "SELECT topic, sum(unique_processed)::bigint, sum(duplicate_dropped)::bigint"
        " FROM topic_stats GROUP BY topic ORDER BY topic"
    )
    _CODE_COUNTS = (
        "SELECT code, sum(count)::bigint FROM rejection_stats GROUP BY code ORDER BY code"
    )

    def __init__(self, url: PostgresUrl, options: StoreOptions) -> None:
        self.display = url.display
        # Per table, the highest watermark read so far, and the oid of the sequence it is of.
        self._highest: dict[str, tuple[int | None, int]] = {}
        self._highest_lock = threading.Lock()
        self._alive_s = options.alive_s
        self._hold_ms = max(1, round(options.hold_s * 1000))
        self._query_ms = max(1, round(options.query_timeout_s * 1000))
        self._conninfo, self._schema = url.conninfo, url.schema
        self._timeout = url.connect_timeout_s or DEFAULT_TIMEOUT_S
        self._synchronous_commit = options.durability.postgres_synchronous_commit
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=POOL_MAX,
            open=False,
            configure=self._configure,
            # A connection that died with the server is replaced before use, not failed on.
            check=ConnectionPool.check_connection,
            timeout=self._timeout,
            # Past this the pool stops retrying in the background, so the next call tries
            # afresh: a server back after a long outage is seen within one retry.
            reconnect_timeout=self._timeout,
            name="logagg-store",
            # A batch is one statement, its own transaction; a read opens its own.
            kwargs={"autocommit": True},
        )
        self._pool.open(wait=False)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Runs on every new pooled connection: our durability and timeouts, and our schema
        if named."""
        conn.execute(
            "SELECT set_config('synchronous_commit', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false),"
            " set_config('lock_timeout', %s, false),"
            " set_config('statement_timeout', %s, false)",
            (
                self._synchronous_commit,
                str(self._hold_ms),
                str(2 * self._hold_ms),
                str(6 * self._hold_ms),
            ),
        )
        if self._schema is not None:
            conn.execute(
                "SELECT set_config('search_path', quote_ident(%s), false)", (self._schema,)
            )

    @contextmanager
    def _connection(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, in autocommit (each statement its own transaction, unless
        the caller opens one); every database or connection failure becomes
        StoreUnavailable."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"cannot {doing} {self.display}: {self._why_no_connection()}"
            ) from exc
        except psycopg.errors.DiskFull as exc:  # SQLSTATE 53100: the server's disk is full
            raise StoreFull(f"cannot {doing} {self.display}: {_one_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot {doing} {self.display}: {_one_line(exc)}") from exc

    def _why_no_connection(self) -> str:
        """The pool only says it timed out; one direct attempt tells why."""
        try:
            psycopg.connect(self._conninfo, connect_timeout=max(1, round(self._timeout))).close()
        except psycopg.Error as exc:
            return _one_line(exc)
        return f"no pooled connection free within {self._timeout:g}s"

    @contextmanager
    def _read(self, table: str = "events") -> Iterator[Snapshot]:
        """One snapshot for all the statements of a read, which cannot write, each
        statement cut off at the query timeout, and the watermark of `table` it reads up
        to, taken before the snapshot (so every writer below it has finished before the
        snapshot)."""
        with self._connection("read") as conn:
            try:
                upto = self._watermark(conn, table)
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    # The time index is in seq order on disk, so at the default cost of 4 the
                    # planner prefers reading every topic's rows of a range by it to a topic's
                    # own scattered rows: 1.1 s instead of 0.1 s for a busy topic's day on 10 M.
                    conn.execute(
                        "SELECT set_config('statement_timeout', %s, true),"
                        " set_config('random_page_cost', %s, true)",
                        (str(self._query_ms), str(READ_RANDOM_PAGE_COST)),
                    )
                    yield Snapshot(conn, upto)
            except psycopg.errors.UndefinedTable as exc:
                raise StoreUnavailable(
                    f"the store in {self.display} does not exist yet: the bridge creates it"
                ) from exc
            except psycopg.errors.QueryCanceled as exc:
                raise QueryTimeout(
                    f"the query ran past the {self._query_ms / 1000:g}s statement timeout of"
                    f" {self.display}: narrow it (a time range, a topic, rarer words)"
                ) from exc

    # The searches run unprepared: PostgreSQL would switch a prepared statement to a generic
    # plan after five runs, blind to the values (a needle or a common word, a seq range of
    # an hour or a month), which is what picks the index.
    def search(self, query: Query, *, max_bytes: int | None = None) -> list[StoredEvent]:
        with self._read() as conn:
            filters = self._where(conn, query, paged=True)
            sql_text = page_sql(self._EVENT_COLUMNS, query, filters, max_bytes)
            params = (*filters.params, query.limit, *(() if max_bytes is None else (max_bytes,)))
            rows = conn.execute(sql_text.encode(), params, prepare=False).fetchall()
        return [self._event(row) for row in rows]

    def export_page(self, query: Query, *, max_bytes: int) -> list[tuple[int, str]]:
        with self._read() as conn:
            filters = self._where(conn, query, paged=True)
            sql_text = page_sql(_EXPORT_COLUMNS, query, filters, max_bytes, "seq, line")
            params = (*filters.params, query.limit, max_bytes)
            rows: list[tuple[int, str]] = conn.execute(
                sql_text.encode(), params, prepare=False
            ).fetchall()
        return rows

    def histogram(self, query: Query, interval_s: int) -> list[Bucket]:
        with self._read() as conn:
            filters = self._where(conn, query, paged=False)
            rows = conn.execute(
                histogram_sql(filters).encode(), (interval_s, *filters.params), prepare=False
            )
            return [Bucket(start.astimezone(UTC), count) for start, count in rows]

    def time_span(self, query: Query) -> tuple[datetime, datetime] | None:
        with self._read() as conn:
            filters = self._where(conn, query, paged=False)
            row = conn.execute(span_sql(filters).encode(), filters.params, prepare=False).fetchone()
        if row is None or row[0] is None:
            return None
        return row[0].astimezone(UTC), row[1].astimezone(UTC)

    def _watermark(self, conn: psycopg.Connection[Any], table: str) -> int:
        """This read's watermark of `table`, never below one this reader used before on
        the same store. A watermark can come out lower than an earlier one (a writer that
        read the sequence before that earlier reader, and locked after it, holds a key
        below it); the earlier one stays true, since what was finished stays finished, and
        a reader that moved back could skip what a stream already passed."""
        sequence, upto = conn.execute(_WATERMARKS[table]).fetchone() or (None, 0)
        with self._highest_lock:
            before, highest = self._highest.get(table, (None, 0))
            if before == sequence:
                upto = max(upto, highest)
            self._highest[table] = (sequence, upto)
        return int(upto)

    def _read_rejected(self) -> AbstractContextManager[Snapshot]:
        return self._read("rejected")

    def _horizon(self, conn: Connection) -> int | None:
        assert isinstance(conn, Snapshot)
        return conn.upto

    def _where(self, conn: Snapshot, query: Query, *, paged: bool) -> Where:
        """The filters of `query`, once a wildcard topic is resolved and its time range
        bounded in seq. While the backfill of an upgraded store runs, a text query is
        refused (it would miss the events not reached yet) and time ranges are not
        bounded (the spans of older events are not all counted yet)."""
        pending = None
        if query.text is not None or query.since is not None or query.until is not None:
            pending = conn.execute(BACKFILL_PROGRESS).fetchone()
            if pending is not None and query.text is not None:
                raise StoreUnavailable(
                    f"full-text search in {self.display} is not ready: its text index is being"
                    f" built after the upgrade to schema {SCHEMA_VERSION} (events up to seq"
                    f" {pending[0]} done); other filters work meanwhile"
                )
        topics, wanted = None, query.topic
        if wanted is not None and wanted.wildcard:
            rows = conn.execute(TOPICS_LIKE, (wanted.like_pattern(),))
            topics = [topic for (topic,) in rows if wanted.matches(topic)]
        seqs = None
        if pending is None and (bounds := seq_bounds(query)) is not None:
            row = conn.execute(bounds.sql.encode(), bounds.params).fetchone()
            low, high = row or (None, None)
            seqs = (low or 1, high or 0)  # no event in those spans: an empty interval
        return where(
            query, topics, paged=paged, seqs=seqs, upto=conn.upto, retained=self._retained(conn)
        )

    def _live_uptimes(self, client_id: str | None) -> tuple[str, tuple[object, ...]]:
        if client_id is None:
            return _LIVE_UPTIMES, (self._alive_s,)
        return _LIVE_UPTIMES + " AND client_id = %s", (self._alive_s, client_id)

    def _now(self, conn: Connection) -> float:
        """The server's clock, which stamps `received_at`."""
        (now,) = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        return float(now)

    def _instant(self, unix: float) -> object:
        return unix

    def _event(self, row: Any) -> StoredEvent:
        seq, topic, event_id, timestamp, offset, source, payload, received_at = row
        return StoredEvent(
            seq,
            topic,
            event_id,
            _stamp(timestamp, offset),
            source,
            payload,
            iso_utc(received_at),
        )

    def _rejection(self, row: Any) -> StoredRejection:
        seq, topic, code, reason, body, received_at = row
        return StoredRejection(seq, topic, code, reason, body, iso_utc(received_at))

    def _floor(self, conn: Connection, since: float) -> int:
        row = conn.execute(FLOOR, (since,)).fetchone()
        return int(row[0]) if row else 0

    def _topic_list(self, topics: list[str]) -> tuple[str, object]:
        return "topic = ANY(%s::text[])", topics

    def close(self) -> None:
        self._pool.close()


class PostgresWriter(PostgresReader):
    """A bridge's store: creates the schema (or checks it is not newer) when opened."""

    def __init__(self, url: PostgresUrl, options: StoreOptions) -> None:
        super().__init__(url, options)
        self.slot = random.randrange(SLOTS)
        self._statements = {
            (events, refused, late): record_sql(
                self.slot, events=events, refused=refused, late=late
            )
            for events in (False, True)
            for refused in (False, True)
            for late in (False, True)
            if events or not late
        }
        self.backfill: Backfill | None = None
        self._said_no_map = False
        try:
            if self._migrate():
                self.backfill = Backfill(self._conninfo, self._schema, self.display)
            with self._connection("write") as conn:
                if limit_pending_list(conn):
                    logger.info(
                        "%s: text index pending list limited to %d kB",
                        self.display,
                        PENDING_LIST_KB,
                    )
                self._policy_now = declare_policy(conn, "%s", options.retention, self.display)
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self) -> bool:
        """Create the tables, or check that existing ones are not newer than this logagg
        and upgrade older ones; whether the search upgrade's backfill is still to do (see
        `bridge.store.postgres_backfill`). An advisory lock makes bridges starting together
        take turns: CREATE … IF NOT EXISTS alone races on the system catalogs."""
        with self._connection("create the schema in") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if self._schema is not None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = int(row[0]) if row else 0
            check_schema_version(found)
            if found == SCHEMA_VERSION:
                # Nothing to create: and DDL here would deadlock with a backfill's
                # CREATE INDEX CONCURRENTLY, which waits for this transaction.
                return conn.execute(BACKFILL_PROGRESS).fetchone() is not None
            conn.execute(_SCHEMA)
            conn.execute(RETENTION_SCHEMA)
            if found == 0:  # a new store: its indexes cost nothing to build
                for name, how in {**TIME_INDEXES, **TEXT_INDEXES}.items():
                    create_index(conn, name, how, concurrently=False)
            elif found < 3:  # from before search
                conn.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS tsv tsvector")
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, '0') ON CONFLICT DO NOTHING",
                    (PENDING_KEY,),
                )
            for table, key in _PER_SLOT.items():  # from before concurrent writers
                if not conn.execute(_HAS_SLOT, (table,)).fetchone():
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {table} ADD COLUMN slot smallint NOT NULL DEFAULT 0;"
                            " ALTER TABLE {table} DROP CONSTRAINT {pkey},"
                            " ADD PRIMARY KEY ({key}, slot)"
                        ).format(
                            table=sql.Identifier(table),
                            pkey=sql.Identifier(f"{table}_pkey"),
                            key=sql.Identifier(key),
                        )
                    )
            # ANALYZE keeps the 1,000 commonest words of `tsv` by default (10,000 with this);
            # a rarer word is guessed 10x too common, and the planner walks seq instead of
            # the GIN index (BENCHMARKS.md, "Search": 585 ms p95 on 10 M, 21 ms with this).
            conn.execute("ALTER TABLE events ALTER COLUMN tsv SET STATISTICS 1000")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            return conn.execute(BACKFILL_PROGRESS).fetchone() is not None

    def record(self, events: Sequence[Event], refused: Sequence[Refused]) -> BatchOutcome:
        if not events and not refused:
            return BatchOutcome()
        statement, params = self.batch(events, refused)
        with self._connection("write") as conn:
            if "events" in params:
                # Checked against the purge after it, in a statement of its own (see
                # `postgres_retention`). Not pipelined: the server arms
                # `idle_in_transaction_session_timeout` only after a Sync, so a bridge
                # stopped between pipelined statements would hold its locks, and the
                # readers' watermark, for as long as it is stopped
                # (`test_bridge_stopped_mid_stream_holds_neither_writers_nor_readers`).
                rows = record_events(conn, statement, params)
            else:
                rows = conn.execute(statement, params).fetchall()
            inserted = {(topic, event_id) for topic, event_id in rows}
        return tally(events, refused, inserted).outcome

    def batch(
        self, events: Sequence[Event], refused: Sequence[Refused]
    ) -> tuple[str, dict[str, Any]]:
        """The statement that records a batch (see `record_sql`) and its parameters. The
        events are sorted by key: two bridges inserting overlapping keys wait on each other
        in the same order, never in a cycle."""
        rows = sorted(first_copies(events), key=lambda e: (e.topic, e.event_id))
        params: dict[str, Any] = {}
        if rows:
            # One JSON text for the batch: one C call to encode, where arrays of seven
            # columns cost psycopg a Python loop over every value (BENCHMARKS.md).
            params["events"] = json.dumps(
                [
                    {
                        "t": e.topic,
                        "e": e.event_id,
                        "ts": e.timestamp.isoformat(),
                        "o": _offset_s(e.timestamp),
                        "s": e.source,
                        "p": e.payload,
                        "v": tsvector_literal(
                            document(searchable(e.event_id, e.source, e.payload))
                        ),
                        "k": key_hash(e.topic, e.event_id),
                    }
                    for e in rows
                ],
                separators=(",", ":"),
                ensure_ascii=False,
            )
            copies = Counter(e.topic for e in events)
            params.update(_named(("topics", "copies"), sorted(copies.items())))
            # The late ones among them, counted by the statement if they are new.
            if self._policy_now.finite and (
                overdue_rows := overdue(rows, self._policy_now, datetime.now(UTC))
            ):
                params.update(
                    _named(
                        ("late_topics", "late_ids"), ((e.topic, e.event_id) for e in overdue_rows)
                    )
                )
        if refused:
            params.update(
                # Only the newest KEEP_REJECTED: the statement's trim cannot see its own rows.
                _named(
                    ("mqtt_topic", "code", "reason", "body"),
                    map(rejected_row, refused[-KEEP_REJECTED:]),
                )
            )
            codes = Counter(r.rejection.code for r in refused)
            params.update(_named(("codes", "code_counts"), sorted(codes.items())))
        return self._statements[bool(rows), bool(refused), "late_ids" in params], params

    @property
    def policy(self) -> RetentionPolicy:
        return self._policy_now

    def purge(self, stopping: Callable[[], bool]) -> Purged:
        """Each chunk in a transaction of its own, under the purge lock (see
        `postgres_retention`); skipped as soon as another bridge holds it."""
        with self._connection("purge") as conn:
            policy = self._policy(conn)
            floors = self._floors(conn, policy)
        self._policy_now = policy
        events = 0
        for topic, floor in floors.items():

            def chunk(limit: int, topic: str = topic, floor: int = floor) -> int | None:
                with self._connection("purge") as conn:
                    with conn.transaction():
                        done = purge_chunk(conn, topic, floor, limit)
                    analyze_if_grown(conn)
                    return done

            done = chunks(chunk, stopping)
            if done is None:
                return Purged(events, skipped=True)
            events += done
        forgotten = 0
        if policy.horizon_s is not None:
            horizon_s = policy.horizon_s

            def forget(limit: int) -> int | None:
                with self._connection("purge") as conn, conn.transaction():
                    return forget_chunk(conn, horizon_s, limit)

            done = chunks(forget, stopping)
            if done is None:
                return Purged(events, skipped=True)
            forgotten = done
        if events:
            with self._connection("purge") as conn:
                prune_time_seqs(conn)
                sizes = rebuild_text_index(conn, stopping)
            if sizes is not None:
                logger.info(
                    "%s: text index rebuilt, %.1f → %.1f MB",
                    self.display,
                    sizes[0] / 1e6,
                    sizes[1] / 1e6,
                )
        return Purged(events, forgotten)

    def heartbeat(self, client_id: str, run_id: str) -> None:
        with self._connection("write") as conn:
            conn.execute(_HEARTBEAT, (client_id, run_id))

    def used_bytes(self) -> int:
        with self._connection("measure") as conn:
            (used,) = conn.execute(POSTGRES_USED_BYTES).fetchone() or (0,)
        return int(used)

    def reusable_bytes(self) -> int:
        """The free space maps' room, by `pg_freespacemap` (`bridge.store.space`); 0, said
        once in the log, where the extension is not installed."""
        with self._connection("measure") as conn:
            row = conn.execute(POSTGRES_FREE_SPACE_MAP).fetchone()
            if row is None:
                if not self._said_no_map:
                    self._said_no_map = True
                    logger.warning(
                        "%s: the pg_freespacemap extension is not installed, so rows deleted"
                        " (retention) do not count as room under --max-store-bytes until the"
                        " files shrink (VACUUM FULL); a superuser can CREATE EXTENSION"
                        " pg_freespacemap",
                        self.display,
                    )
                return 0
            statement = sql.SQL(POSTGRES_REUSABLE_BYTES).format(fsm=sql.Identifier(row[0]))
            (free,) = conn.execute(statement).fetchone() or (0,)
        return int(free)

    def report_space(self, client_id: str, report: SpaceReport | None) -> None:
        with self._connection("write") as conn:
            put_report(conn, self._MARK, client_id, report)

    def close(self) -> None:
        if self.backfill is not None:
            self.backfill.stop()
        super().close()


def _named(names: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """Rows as one named list per column: the arrays that `unnest` turns back into rows."""
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


def _stamp(timestamp: datetime, offset_s: int) -> str:
    """An event's timestamp as it was written: in its publisher's UTC offset."""
    return timestamp.astimezone(timezone(timedelta(seconds=offset_s))).isoformat()


def _offset_s(moment: datetime) -> int:
    """The UTC offset of an event's (always aware) timestamp."""
    return int((moment.utcoffset() or timedelta()).total_seconds())
