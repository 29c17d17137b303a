"""PostgreSQL store: many bridges write one database at once; the primary key dedups.

`postgresql://user@host/db?schema=NAME` keeps the tables in schema NAME (created by the
writer; default: the connection's search_path, normally `public`). Any other query
parameter goes to libpq (see `bridge.store.url`); `connect_timeout` (default 5 s) also
bounds how long a call waits for a pooled connection before it reports the store
unavailable.

Isolation is PostgreSQL's default, READ COMMITTED, and it suffices: a batch never
decides anything from what it read. `INSERT … ON CONFLICT DO NOTHING` arbitrates on
the unique index, where a concurrent insert of the same key waits for the other
transaction and then yields no row (or the row, if the other rolled back); counters
are `x = x + n` upserts, which lock the row and add to its newest version, so no
increment is lost. SERIALIZABLE would add serialization failures and nothing else.

Deadlocks between bridges are avoided by taking row locks in one global order: each
batch inserts its events sorted by key, then updates topic counters and rejection
counters sorted by name (see `BatchTally`).

`durability` maps to `synchronous_commit` (see `Durability`).

`seq` comes from an identity column, which is monotonic in insert order; but with
several bridges a transaction could commit after one that took a higher `seq`, and a
live tail that had read up to the newest `seq` would miss that row for good. So each
batch first takes a transaction-scoped advisory lock (one per schema): bridges commit
one at a time, in `seq` order. Parsing, MQTT and building the parameters run in
parallel; the section from the lock to the commit (about five round trips) is serial.
Measured with the parameters still built under the lock, it cost 3 bridges more than
half their drain throughput on 2 cores (BENCHMARKS.md, "Scaling out (issue 5)"); the
parameters now come first, and one round trip per batch is the next step.

Because every batch waits for that lock, a bridge that stops inside its transaction
(SIGSTOP, a debugger, a paused VM) would stall all the others. So no session may hold
the others for long: every session gets `idle_in_transaction_session_timeout` = `hold_s`
(the server ends a session idle inside a transaction, which releases its locks; its
bridge never acked that batch, so it commits it again when it wakes), `lock_timeout` =
twice `hold_s` (a wait outlasting a stuck holder's removal is reported, then retried),
and `statement_timeout` = six times `hold_s` (a read transaction sets its own,
`query_timeout_s`, and reports running past it as `QueryTimeout`).

Search (issue 11): each event's `tsv` is written by its own INSERT; `postgres_search`
turns a `Query` into SQL, `postgres_backfill` upgrades a schema 2 store beside ingest.

Heartbeats are stamped with the server's `now()` and judged against its
`clock_timestamp()`: one clock, whatever the bridges' clocks say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
    EventKey,
    Purged,
    QueryTimeout,
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
from bridge.store.policy import chunks, declare_policy, late
from bridge.store.postgres_backfill import (
    BACKFILL_PROGRESS,
    PENDING_KEY,
    TEXT_INDEXES,
    TIME_INDEXES,
    Backfill,
    create_index,
)
from bridge.store.postgres_retention import (
    FLOOR,
    RETENTION_SCHEMA,
    count,
    forget_chunk,
    prune_time_seqs,
    purge_chunk,
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
from bridge.store.url import PostgresUrl

DEFAULT_TIMEOUT_S = 5.0
# A bridge uses one connection at a time (one writer thread); the sidecar's readers share these.
POOL_MAX = 4
# Serialises schema creation between bridges starting at once (any constant unique to logagg).
_MIGRATION_LOCK = 0x6C6F6761_67000001
# Two-key form: (class, schema), so stores in different schemas do not wait on each other.
_COMMIT_LOCK = 0x6C6F6761

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
CREATE TABLE IF NOT EXISTS topic_stats (
    topic text PRIMARY KEY,
    unique_processed bigint NOT NULL,
    duplicate_dropped bigint NOT NULL
);
-- Per 5 minutes of `timestamp` from `start`, the lowest and highest seq of their events:
-- bounds in seq of a time range (see `postgres_search.seq_bounds`).
CREATE TABLE IF NOT EXISTS time_seqs (
    start timestamptz PRIMARY KEY,
    low bigint NOT NULL,
    high bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS rejection_stats (code text PRIMARY KEY, count bigint NOT NULL);
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

# The new events, and the seqs of their spans of time (see `postgres_search.seq_bounds`),
# in one statement.
_INSERT_EVENTS = f"""
WITH inserted AS (
    INSERT INTO events (topic, event_id, timestamp, utc_offset_s, source, payload, tsv)
    SELECT topic, event_id, ts, utc_offset_s, source, payload::jsonb, tsv::tsvector
    FROM unnest(
        %s::text[], %s::text[], %s::timestamptz[], %s::integer[], %s::text[], %s::text[],
        %s::text[], %s::bigint[]
    ) AS batch (topic, event_id, ts, utc_offset_s, source, payload, tsv, key)
    -- A copy of an expired event whose key is kept is a duplicate (postgres_retention).
    WHERE NOT EXISTS (SELECT 1 FROM expired_keys AS k WHERE k.key = batch.key)
    ON CONFLICT DO NOTHING
    RETURNING topic, event_id, seq, timestamp
), spans AS ({COUNT_SPANS.format(rows="inserted")})
SELECT topic, event_id FROM inserted
"""

_COUNT_TOPICS = """
INSERT INTO topic_stats (topic, unique_processed, duplicate_dropped)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])
ON CONFLICT (topic) DO UPDATE SET
    unique_processed = topic_stats.unique_processed + excluded.unique_processed,
    duplicate_dropped = topic_stats.duplicate_dropped + excluded.duplicate_dropped
"""

_INSERT_REJECTED = """
INSERT INTO rejected (mqtt_topic, code, reason, body)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
"""

_COUNT_CODES = """
INSERT INTO rejection_stats (code, count)
SELECT * FROM unnest(%s::text[], %s::bigint[])
ON CONFLICT (code) DO UPDATE SET count = rejection_stats.count + excluded.count
"""


def _one_line(exc: BaseException) -> str:
    """libpq messages span lines (DETAIL, HINT); a log line should not."""
    return " ".join(str(exc).split())


class PostgresReader(SqlReader):
    """Reads one PostgreSQL store through a connection pool, in read-only transactions;
    never creates the schema."""

    _MARK = "%s"
    _EVENT_COLUMNS = "seq, topic, event_id, timestamp, utc_offset_s, source, payload, received_at"
    _PAYLOAD_SIZE = "octet_length(payload::text)"
    _SINCE = "received_at >= to_timestamp(%s)"
    _SECOND = "date_trunc('second', received_at)"
    _UNIX = "extract(epoch FROM {})::bigint"

    def __init__(self, url: PostgresUrl, options: StoreOptions) -> None:
        self.display = url.display
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
        conn.commit()

    @contextmanager
    def _connection(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction (committed at the end, rolled back on error);
        every database or connection failure becomes StoreUnavailable."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"cannot {doing} {self.display}: {self._why_no_connection()}"
            ) from exc
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
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        """One snapshot for all the statements of a read, which cannot write, each
        statement cut off at the query timeout."""
        with self._connection("read") as conn:
            try:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(self._query_ms),)
                )
                # The time index is in seq order on disk, so at the default cost of 4 the
                # planner prefers reading every topic's rows of a range by it to a topic's
                # own scattered rows: 1.1 s instead of 0.1 s for a busy topic's day on 10 M.
                conn.execute(f"SET LOCAL random_page_cost = {READ_RANDOM_PAGE_COST}")
                yield conn
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

    def _where(self, conn: psycopg.Connection[Any], query: Query, *, paged: bool) -> Where:
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
        return where(query, topics, paged=paged, seqs=seqs, retained=self._retained(conn))

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
            timestamp.astimezone(timezone(timedelta(seconds=offset))).isoformat(),
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
        self.backfill: Backfill | None = None
        try:
            if self._migrate():
                self.backfill = Backfill(self._conninfo, self._schema, self.display)
            with self._connection("write") as conn:
                self._policy_now = declare_policy(conn, "%s", options.retention, self.display)
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self) -> bool:
        """Create the tables, or check that existing ones are not newer than this logagg
        and upgrade older ones; whether the search upgrade's backfill is still to do (see
        `bridge.store.postgres_backfill`). An advisory lock makes bridges starting together
        take turns: CREATE … IF NOT EXISTS alone races on the system catalogs."""
        with self._connection("create the schema in") as conn:
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
        # Sorted by key: two bridges inserting overlapping keys wait on each other in the
        # same order, never in a cycle. Parameters are built before the commit lock is
        # taken, so the lock covers only the round trips.
        rows = sorted(first_copies(events), key=lambda e: (e.topic, e.event_id))
        event_columns = _columns(
            (
                e.topic,
                e.event_id,
                e.timestamp,
                _offset_s(e.timestamp),
                e.source,
                payload_json(e),
                tsvector_literal(document(searchable(e.event_id, e.source, e.payload))),
                key_hash(e.topic, e.event_id),
            )
            for e in rows
        )
        rejected_columns = _columns(map(rejected_row, refused))
        with self._connection("write") as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_COMMIT_LOCK,)
            )
            inserted: set[EventKey] = set()
            if rows:
                cur = conn.execute(_INSERT_EVENTS, event_columns)
                inserted = {(topic, event_id) for topic, event_id in cur}
            counts = tally(events, refused, inserted)
            if self._policy_now.finite and inserted:
                stored = [e for e in rows if (e.topic, e.event_id) in inserted]
                count(conn, "late", late(stored, self._policy_now, datetime.now(UTC)))
            if counts.topics:
                conn.execute(_COUNT_TOPICS, _columns(counts.topics))
            if refused:
                conn.execute(_INSERT_REJECTED, rejected_columns)
                conn.execute(_COUNT_CODES, _columns(counts.codes))
                conn.execute(
                    "DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM rejected) - %s",
                    (KEEP_REJECTED,),
                )
        return counts.outcome

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
                    return purge_chunk(conn, topic, floor, limit, _COMMIT_LOCK)

            done = chunks(chunk, stopping)
            if done is None:
                return Purged(events, skipped=True)
            events += done
        forgotten = 0
        if policy.horizon_s is not None:
            horizon_s = policy.horizon_s

            def forget(limit: int) -> int | None:
                with self._connection("purge") as conn:
                    return forget_chunk(conn, horizon_s, limit)

            done = chunks(forget, stopping)
            if done is None:
                return Purged(events, skipped=True)
            forgotten = done
        if events:
            with self._connection("purge") as conn:
                prune_time_seqs(conn)
        return Purged(events, forgotten)

    def heartbeat(self, client_id: str, run_id: str) -> None:
        with self._connection("write") as conn:
            conn.execute(_HEARTBEAT, (client_id, run_id))

    def close(self) -> None:
        if self.backfill is not None:
            self.backfill.stop()
        super().close()


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays that `unnest` turns back into rows."""
    return [list(column) for column in zip(*rows, strict=True)]


def _offset_s(moment: datetime) -> int:
    """The UTC offset of an event's (always aware) timestamp."""
    return int((moment.utcoffset() or timedelta()).total_seconds())
