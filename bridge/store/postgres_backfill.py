"""Upgrading a PostgreSQL store to schema 3 (search) while the bridges keep ingesting.

The upgrade itself is instant and runs under the schema lock: `ALTER TABLE … ADD COLUMN
tsv tsvector` (nullable: no table rewrite) and a `text_backfill` row in `meta`. From then
on every new event is written with its `tsv`. What remains, the old events' `tsv` and
the search indexes, runs beside ingest in a thread of one writer (`Backfill`):

1. the time indexes, by `CREATE INDEX CONCURRENTLY` (inserts go on meanwhile);
2. `tsv` of the older events, and their spans in `time_seqs`, by seq, a chunk per
   transaction, so no row lock is held for long (a duplicate of an event being updated
   waits for that chunk's commit); the `meta` row keeps the last seq done, so a restart
   resumes there, and the progress is logged every 5%;
3. the GIN index over `tsv`, concurrently, once (cheaper than keeping it up to date
   through the updates);
4. the `meta` row is deleted: full-text search is ready.

While the row exists, readers refuse text queries (they would silently miss the events
not reached yet), and answer every other filter, without bounding time ranges in seq.
Of several bridges, the one holding a session advisory lock does the work; the others
check every `RETRY_S` seconds, so one takes over if that bridge stops. An index build
that was interrupted leaves an invalid index behind: it is dropped and built again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from bridge.query import document, searchable, tsvector_literal
from bridge.store.postgres_search import COUNT_SPANS

logger = logging.getLogger("logagg.bridge.store")

# Session-level, two-key (class, schema): one backfill per store. Two-key, so readers never
# take it for a writer's watermark lock (bigint keys).
_BACKFILL_LOCK = 0x6C6F6762
CHUNK = 5_000
RETRY_S = 30.0
PENDING_KEY = "text_backfill"
# What a reader checks before a text query: the row's value says how far the backfill is.
BACKFILL_PROGRESS = f"SELECT value FROM meta WHERE key = '{PENDING_KEY}'"
# Name → what follows `ON events`. Built at once in a new store, concurrently in an old one.
TIME_INDEXES = {
    "events_topic_time": "(topic, timestamp) INCLUDE (seq)",
    "events_time": "(timestamp) INCLUDE (seq)",
}
# GIN's fast update queues each insert's entries in a pending list, which the insert that
# takes it past `gin_pending_list_limit` merges into the index. At the default 4 MB, at
# 1,000 events/s, that stalled a batch 200-300 ms every few seconds, most of the stream's
# p99; without the list (fastupdate off) every insert writes its own entries, and bulk
# ingest ran at 0.67x; a 256 kB list merges in steps a batch barely notices, at 0.89x
# (BENCHMARKS.md, "PostgreSQL: batches past the purge").
PENDING_LIST_KB = 256
TEXT_INDEXES = {"events_tsv": f"USING gin (tsv) WITH (gin_pending_list_limit = {PENDING_LIST_KB})"}
_PENDING_LIST_DEFAULT = f"""
SELECT c.relname FROM pg_class AS c JOIN pg_index AS i ON i.indexrelid = c.oid
WHERE c.oid = to_regclass('events_tsv') AND i.indisvalid
  AND NOT coalesce(c.reloptions @> '{{gin_pending_list_limit={PENDING_LIST_KB}}}', false)
"""

_READ_CHUNK = """
SELECT seq, timestamp, event_id, source, payload FROM events
WHERE seq > %s AND seq <= %s AND tsv IS NULL
"""
_WRITE_CHUNK = """
UPDATE events SET tsv = chunk.tsv::tsvector
FROM unnest(%s::bigint[], %s::text[]) AS chunk (seq, tsv)
WHERE events.seq = chunk.seq AND events.tsv IS NULL
"""
_COUNT_CHUNK_SPANS = COUNT_SPANS.format(
    rows="unnest(%s::bigint[], %s::timestamptz[]) AS chunk (seq, timestamp)", slot=0
)


def create_index(conn: psycopg.Connection[Any], name: str, how: str, *, concurrently: bool) -> None:
    """`CREATE INDEX name ON events how`, after dropping an invalid one of that name (what
    an interrupted concurrent build leaves)."""
    invalid = conn.execute(
        "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid", (name,)
    ).fetchone()
    mode = sql.SQL("CONCURRENTLY " if concurrently else "")
    if invalid:
        conn.execute(sql.SQL("DROP INDEX {}{}").format(mode, sql.Identifier(name)))
    conn.execute(
        sql.SQL("CREATE INDEX {}IF NOT EXISTS {} ON events {}").format(
            mode, sql.Identifier(name), sql.SQL(how)
        )
    )


def limit_pending_list(conn: psycopg.Connection[Any]) -> bool:
    """In a store whose text index was made with GIN's default pending list (before the
    limit above), set the limit and merge the list (an index option: no schema change, and
    the lock it takes lets writers and readers go on); whether it did."""
    row = conn.execute(_PENDING_LIST_DEFAULT).fetchone()
    if row is None:
        return False
    name = sql.Identifier(row[0])
    limit = sql.Literal(PENDING_LIST_KB)
    conn.execute(sql.SQL("ALTER INDEX {} SET (gin_pending_list_limit = {})").format(name, limit))
    conn.execute("SELECT gin_clean_pending_list(%s::regclass)", (row[0],))
    return True


class Backfill:
    """The rest of an upgrade to schema 3, in a daemon thread on its own connection.
    `stop` ends it between two steps (or cancels the statement running), to be resumed
    by the next writer opened on the store."""

    def __init__(self, conninfo: str, schema: str | None, display: str) -> None:
        self._conninfo, self._schema, self._display = conninfo, schema, display
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="logagg-backfill", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            conn.cancel()
        self._thread.join()

    def join(self, timeout: float) -> bool:
        """Wait for the backfill to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._attempt():
                    return
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                logger.warning(
                    "search upgrade of %s interrupted, retrying in %gs: %s",
                    self._display,
                    RETRY_S,
                    " ".join(str(exc).split()),
                )
            self._stopping.wait(RETRY_S)

    def _attempt(self) -> bool:
        """Do the backfill if no other writer is; whether it is done (by anyone)."""
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            self._conn = conn
            try:
                if self._schema is not None:
                    conn.execute(
                        "SELECT set_config('search_path', quote_ident(%s), false)", (self._schema,)
                    )
                # Index builds and a chunk's update may take long: no statement timeout.
                conn.execute("SET statement_timeout = 0")
                locked = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))",
                    (_BACKFILL_LOCK,),
                ).fetchone()
                if not (locked and locked[0]):
                    return False
                row = conn.execute(BACKFILL_PROGRESS).fetchone()
                if row is not None:
                    self._backfill(conn, int(row[0]))
                return not self._stopping.is_set()
            finally:
                self._conn = None

    def _backfill(self, conn: psycopg.Connection[Any], done_through: int) -> None:
        started = time.monotonic()
        logger.info("search upgrade of %s: building the time indexes", self._display)
        for name, how in TIME_INDEXES.items():
            create_index(conn, name, how, concurrently=True)
        end_row = conn.execute("SELECT max(seq) FROM events WHERE tsv IS NULL").fetchone()
        end = int(end_row[0]) if end_row and end_row[0] is not None else done_through
        first = done_through
        logger.info(
            "search upgrade of %s: indexing the text of events %d to %d",
            self._display,
            first + 1,
            end,
        )
        reported = 0
        while done_through < end:
            if self._stopping.is_set():
                return
            upto = min(done_through + CHUNK, end)
            self._chunk(conn, done_through, upto)
            done_through = upto
            percent = 100 * (done_through - first) // max(1, end - first)
            if percent >= reported + 5:
                reported = percent - percent % 5
                logger.info(
                    "search upgrade of %s: %d%% of the events' text indexed (%.0fs)",
                    self._display,
                    reported,
                    time.monotonic() - started,
                )
        logger.info("search upgrade of %s: building the text index", self._display)
        for name, how in TEXT_INDEXES.items():
            create_index(conn, name, how, concurrently=True)
        conn.execute("DELETE FROM meta WHERE key = %s", (PENDING_KEY,))
        logger.info(
            "search upgrade of %s done in %.0fs: full-text search is ready",
            self._display,
            time.monotonic() - started,
        )

    def _chunk(self, conn: psycopg.Connection[Any], after: int, upto: int) -> None:
        """`tsv` of the events with seq in (after, upto], and the progress, in one commit."""
        with conn.transaction():
            rows = conn.execute(_READ_CHUNK, (after, upto)).fetchall()
            seqs = [row[0] for row in rows]
            literals = [
                tsvector_literal(document(searchable(event_id, source, payload)))
                for _, _, event_id, source, payload in rows
            ]
            conn.execute(_WRITE_CHUNK, (seqs, literals))
            conn.execute(_COUNT_CHUNK_SPANS, (seqs, [row[1] for row in rows]))
            conn.execute("UPDATE meta SET value = %s WHERE key = %s", (str(upto), PENDING_KEY))
