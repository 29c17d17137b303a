"""Which indexes issue 11's search needs: build candidates on a prefilled store and time them.

A spike toward `logagg bench`'s `query` scenario: the query kinds and their random
parameters (`kinds`), the candidate indexes per store (`SQLITE_INDEXES`, `PG_INDEXES`),
and the three measurements the design rests on:

    python -m bench.query_spike prefill URL --count 10000000
    python -m bench.query_spike index URL NAME…        # build time and size of each
    python -m bench.query_spike queries URL [--n 200]  # p50/p95 of every kind
    python -m bench.query_spike ingest URL             # insert rate with and without

URL is `sqlite:////abs/path.db` or `postgresql://…/db`. Every figure is printed as one
JSON line with the host's load average, so a figure from a busy machine says so; the
ingest measurement alternates its variants within one run, so their ratio holds however
busy the machine is. Results go to docs/search-indexes.md.

The SQL here is the spike's, not the product's: parameters are always bound, but the
query shapes are the candidates being compared, written out by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.corpus import Corpus, Row, fold
from bench.prefill import prefill_corpus
from bridge.event import Event
from bridge.store import Store, open_store
from bridge.store.base import first_copies
from bridge.store.postgres import split_schema
from bridge.store.sqlite import SQLiteStore

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
PAGE = 100
DEEP_PAGE = 1000

# What the full-text index holds, per event: the payload's string values, event_id, source.
SQLITE_TEXT = (
    "e.event_id || ' ' || e.source || ' ' || coalesce("
    "(SELECT group_concat(value, ' ') FROM json_tree(e.payload) WHERE type = 'text'), '')"
)
# UTC µs since the epoch from the stored ISO text (always 6 fraction digits, or none, as
# `isoformat` writes it): exact, deterministic, so usable as a VIRTUAL generated column
# that an index can cover with no table rewrite.
SQLITE_TS_US = (
    "CAST(strftime('%s', timestamp) AS INTEGER) * 1000000 + CASE WHEN substr(timestamp, 20, 1)"
    " = '.' THEN CAST(substr(timestamp, 21, 6) AS INTEGER) ELSE 0 END"
)
_TOKENIZE = "tokenize = 'unicode61 remove_diacritics 2'"
SQLITE_INDEXES: dict[str, list[str]] = {
    "topic_ts": ["CREATE INDEX IF NOT EXISTS events_topic_ts ON events (topic, ts_us)"],
    "ts": ["CREATE INDEX IF NOT EXISTS events_ts ON events (ts_us)"],
    # A zone map: one row per committed batch (here, per 1,000 seq), written by `record`.
    "spans": [
        "CREATE TABLE IF NOT EXISTS spans (first_seq INTEGER PRIMARY KEY, last_seq INTEGER,"
        " min_ts_us INTEGER, max_ts_us INTEGER)",
        "INSERT INTO spans SELECT min(seq), max(seq), min(ts_us), max(ts_us) FROM events"
        " GROUP BY (seq - 1) / 1000",
    ],
    "level_expr": [
        "CREATE INDEX IF NOT EXISTS events_topic_level_ts"
        " ON events (topic, json_extract(payload, '$.level'), ts_us)"
    ],
    # Contentless: the index alone, no copy of the text (SQLite 3.40 cannot delete a row
    # from it; 3.43's contentless_delete=1 can).
    "fts_contentless": [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS fts_cl USING fts5(body, content = '', {_TOKENIZE})",
        f"INSERT INTO fts_cl (rowid, body) SELECT e.seq, {SQLITE_TEXT} FROM events AS e",
    ],
    # External content: the text is a view over events, read back for snippets and checks.
    # Built by INSERT, as 'rebuild' fails on this view in SQLite 3.40 ("SQL logic error",
    # the json_tree in it); a delete supplies the old text itself.
    "fts_external": [
        f"CREATE VIEW IF NOT EXISTS events_text AS SELECT e.seq, {SQLITE_TEXT} AS body"
        " FROM events AS e",
        "CREATE VIRTUAL TABLE IF NOT EXISTS fts_ext USING fts5(body, content = 'events_text',"
        f" content_rowid = 'seq', {_TOKENIZE})",
        "INSERT INTO fts_ext (rowid, body) SELECT seq, body FROM events_text",
    ],
}
# The objects each SQLite candidate adds, for its size (dbstat names FTS5's shadow tables).
SQLITE_OBJECTS = {
    "topic_ts": ["events_topic_ts"],
    "ts": ["events_ts"],
    "spans": ["spans"],
    "level_expr": ["events_topic_level_ts"],
    "fts_contentless": ["fts_cl_data", "fts_cl_idx", "fts_cl_docsize", "fts_cl_config"],
    "fts_external": ["fts_ext_data", "fts_ext_idx", "fts_ext_docsize", "fts_ext_config"],
}

# PostgreSQL's parser, with `unaccent` in front of `simple` for words: case and
# diacritics folded, no stemming, no stop words.
PG_SETUP = [
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "DO $$ BEGIN CREATE TEXT SEARCH CONFIGURATION logagg_search (COPY = simple);"
    " EXCEPTION WHEN unique_violation THEN NULL; END $$",
    "ALTER TEXT SEARCH CONFIGURATION logagg_search ALTER MAPPING FOR"
    " word, hword, hword_part, asciiword, asciihword, hword_asciipart WITH unaccent, simple",
]
PG_TSV = (
    "(jsonb_to_tsvector('logagg_search'::regconfig, payload, '[\"string\"]')"
    " || to_tsvector('logagg_search'::regconfig, event_id || ' ' || source))"
)
PG_TEXT = (
    "(event_id || ' ' || source || ' ' || jsonb_path_query_array(payload,"
    " 'strict $.** ? (@.type() == \"string\")')::text)"
)
PG_INDEXES: dict[str, list[str]] = {
    "topic_ts": ["CREATE INDEX IF NOT EXISTS events_topic_ts ON events (topic, timestamp)"],
    "ts_brin": ["CREATE INDEX IF NOT EXISTS events_ts_brin ON events USING brin (timestamp)"],
    "spans": [
        "CREATE TABLE IF NOT EXISTS spans AS SELECT min(seq) AS first_seq, max(seq) AS last_seq,"
        " min(timestamp) AS min_ts, max(timestamp) AS max_ts FROM events"
        " GROUP BY (seq - 1) / 1000",
    ],
    # With seq, so a time range's seq bounds come from an index-only scan.
    "ts": ["CREATE INDEX IF NOT EXISTS events_ts ON events (timestamp) INCLUDE (seq)"],
    "level_expr": [
        "CREATE INDEX IF NOT EXISTS events_topic_level_ts"
        " ON events (topic, (payload ->> 'level'), timestamp)"
    ],
    "jsonb_path": [
        "CREATE INDEX IF NOT EXISTS events_payload_path"
        " ON events USING gin (payload jsonb_path_ops)"
    ],
    "tsv_expr": [f"CREATE INDEX IF NOT EXISTS events_tsv ON events USING gin ({PG_TSV})"],
    # The stored column: a table rewrite to add, then the same GIN over the column.
    "tsv_column": [
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS tsv tsvector"
        f" GENERATED ALWAYS AS {PG_TSV} STORED",
        "CREATE INDEX IF NOT EXISTS events_tsv_col ON events USING gin (tsv)",
    ],
    "trgm": [
        f"CREATE INDEX IF NOT EXISTS events_trgm ON events USING gin ({PG_TEXT} gin_trgm_ops)"
    ],
}
PG_OBJECTS = {
    "topic_ts": ["events_topic_ts"],
    "ts_brin": ["events_ts_brin"],
    "spans": ["spans"],
    "ts": ["events_ts"],
    "level_expr": ["events_topic_level_ts"],
    "jsonb_path": ["events_payload_path"],
    "tsv_expr": ["events_tsv"],
    "tsv_column": ["events_tsv_col"],
    "trgm": ["events_trgm"],
}


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def emit(record: dict[str, Any]) -> None:
    record = {"at": datetime.now(UTC).strftime("%H:%M:%S"), **record, "load": load()}
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------- the query kinds


@dataclass(frozen=True, slots=True)
class Params:
    topic: str = ""
    since_us: int = 0
    until_us: int = 0
    word: str = ""
    field: str = ""
    value: str = ""
    cursor: int = 0


def kinds(corpus: Corpus, rng: random.Random) -> dict[str, Callable[[], Params]]:
    """Each query kind of issue 11 with a draw of random parameters."""
    needles, common = corpus.needles(), corpus.common()

    def span(length_us: int) -> tuple[int, int]:
        since = rng.randrange(corpus.start_us, corpus.end_us - length_us)
        return since, since + length_us

    def topic_span(length_us: int) -> Params:
        since, until = span(length_us)
        return Params(topic=rng.choice(corpus.topics), since_us=since, until_us=until)

    def word_span(length_us: int) -> Params:
        since, until = span(length_us)
        return Params(word=rng.choice(common), since_us=since, until_us=until)

    return {
        "topic_hour": lambda: topic_span(HOUR_US),
        # Folded: a needle with a diacritic is found only if the store folds them too.
        "needle": lambda: Params(word=fold(rng.choice(needles))),
        "common_day": lambda: word_span(DAY_US),
        "common_day_ts": lambda: word_span(DAY_US),
        "bounds_day": lambda: word_span(DAY_US),
        "bounds_day_spans": lambda: word_span(DAY_US),
        "common_day_spans": lambda: word_span(DAY_US),
        "topic_hour_spans": lambda: topic_span(HOUR_US),
        "field_topic_day_spans": lambda: replace(topic_span(DAY_US), field="level", value="error"),
        "field_topic_day": lambda: replace(topic_span(DAY_US), field="level", value="error"),
        "field_topic_day_expr": lambda: replace(topic_span(DAY_US), field="level", value="error"),
        "histogram_topic_day": lambda: topic_span(DAY_US),
        "page1_topic": lambda: Params(topic=rng.choice(corpus.topics)),
        "page1000_topic": lambda: Params(topic=rng.choice(corpus.topics)),
        "page1_common": lambda: Params(word=rng.choice(common)),
        "page1000_common": lambda: Params(word=rng.choice(common)),
        "page1000_topic_offset": lambda: Params(topic=rng.choice(corpus.topics)),
    }


# ---------------------------------------------------------------- SQLite


Shape = Callable[[Any, Params], list[Any]]


def _topic_shapes(
    run: Callable[..., list[Any]], mark: str, ts: str, *, field: str, level: str
) -> dict[str, Shape]:
    """The shapes both stores write alike: a topic in a time range, with a field equal to
    a value, and paging a topic. `mark` is the driver's placeholder, `ts` the store's
    time-range condition, `field` its generic (path, value) test, `level` the same with
    the path written into the SQL, as an expression index needs it."""
    keyset = f"SELECT * FROM events WHERE topic = {mark} AND seq < {mark}"
    in_range = f"SELECT * FROM events WHERE topic = {mark} AND {ts}"
    return {
        "field_topic_day": lambda c, p: run(
            c,
            f"{in_range} AND {field} ORDER BY seq DESC LIMIT {mark}",
            *(p.topic, p.since_us, p.until_us, p.field, p.value, PAGE),
        ),
        "field_topic_day_expr": lambda c, p: run(
            c,
            f"{in_range} AND {level} ORDER BY seq DESC LIMIT {mark}",
            *(p.topic, p.since_us, p.until_us, p.value, PAGE),
        ),
        "topic_hour": lambda c, p: run(
            c,
            f"SELECT * FROM events WHERE topic = {mark} AND {ts} ORDER BY seq DESC LIMIT {mark}",
            p.topic,
            p.since_us,
            p.until_us,
            PAGE,
        ),
        "page1_topic": lambda c, p: run(
            c, f"{keyset} ORDER BY seq DESC LIMIT {mark}", p.topic, p.cursor, PAGE
        ),
        "page1000_topic": lambda c, p: run(
            c, f"{keyset} ORDER BY seq DESC LIMIT {mark}", p.topic, p.cursor, PAGE
        ),
        # What a cursor saves: page 1,000 by OFFSET.
        "page1000_topic_offset": lambda c, p: run(
            c,
            f"SELECT * FROM events WHERE topic = {mark}"
            f" ORDER BY seq DESC LIMIT {mark} OFFSET {mark}",
            p.topic,
            PAGE,
            (DEEP_PAGE - 1) * PAGE,
        ),
    }


def _bounds_shapes(
    common_day: Callable[..., list[Any]],
    seq_bounds: Callable[[Any, Params], tuple[int, int]],
    span_bounds: Callable[[Any, Params], tuple[int, int]],
) -> dict[str, Shape]:
    """A common word in a day with seq bounds from the time index or the zone map, and
    each way of finding the bounds alone (what the text query spends before the index)."""
    return {
        "common_day": common_day,
        "bounds_day": lambda c, p: [seq_bounds(c, p)],
        "bounds_day_spans": lambda c, p: [span_bounds(c, p)],
        "common_day_spans": lambda c, p: common_day(c, p, span_bounds),
    }


_SQLITE_COLUMNS = "e.seq, e.topic, e.event_id, e.timestamp, e.source, e.payload, e.received_at"


def sqlite_queries(fts: str) -> dict[str, Callable[[sqlite3.Connection, Params], list[Any]]]:
    """The SQLite shape of each kind over FTS5 table `fts`; results newest (highest seq) first."""
    cols = _SQLITE_COLUMNS

    def run(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
        return conn.execute(sql, args).fetchall()

    def seq_bounds(conn: sqlite3.Connection, p: Params) -> tuple[int, int]:
        # The lowest and highest seq with a timestamp in range: FTS5 seeks its doclists
        # to a rowid range, so a time range becomes one (exactly, whatever the skew).
        lo, hi = conn.execute(
            "SELECT min(seq), max(seq) FROM events WHERE ts_us >= ? AND ts_us < ?",
            (p.since_us, p.until_us),
        ).fetchone()
        return (lo or 0), (hi or -1)

    def span_bounds(conn: sqlite3.Connection, p: Params) -> tuple[int, int]:
        # The same from the zone map: a superset of the seq range, from ~10,000 rows.
        lo, hi = conn.execute(
            "SELECT min(first_seq), max(last_seq) FROM spans"
            " WHERE max_ts_us >= ? AND min_ts_us < ?",
            (p.since_us, p.until_us),
        ).fetchone()
        return (lo or 0), (hi or -1)

    def common_day(
        conn: sqlite3.Connection, p: Params, bounds: Callable[..., tuple[int, int]] = seq_bounds
    ) -> list[Any]:
        lo, hi = bounds(conn, p)
        return run(
            conn,
            f"SELECT {cols} FROM {fts} AS f JOIN events AS e ON e.seq = f.rowid"
            f" WHERE {fts} MATCH ? AND f.rowid BETWEEN ? AND ?"
            " AND e.ts_us >= ? AND e.ts_us < ? ORDER BY f.rowid DESC LIMIT ?",
            _fts_words(p.word),
            lo,
            hi,
            p.since_us,
            p.until_us,
            PAGE,
        )

    def deep_common(conn: sqlite3.Connection, p: Params) -> list[Any]:
        return run(
            conn,
            f"SELECT {cols} FROM {fts} AS f JOIN events AS e ON e.seq = f.rowid"
            f" WHERE {fts} MATCH ? AND f.rowid < ? ORDER BY f.rowid DESC LIMIT ?",
            _fts_words(p.word),
            p.cursor,
            PAGE,
        )

    return {
        **_topic_shapes(
            run,
            "?",
            "ts_us >= ? AND ts_us < ?",
            field="json_extract(payload, '$.' || ?) = ?",
            level="json_extract(payload, '$.level') = ?",
        ),
        "needle": lambda c, p: run(
            c,
            f"SELECT {cols} FROM {fts} AS f JOIN events AS e ON e.seq = f.rowid"
            f" WHERE {fts} MATCH ? ORDER BY f.rowid DESC LIMIT ?",
            _fts_words(p.word),
            PAGE,
        ),
        **_bounds_shapes(common_day, seq_bounds, span_bounds),
        # Within the zone map's seq bounds, newest first along (topic, seq): stops at 100.
        "topic_hour_spans": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events AS e INDEXED BY events_topic_seq WHERE topic = ?"
            " AND seq BETWEEN ? AND ? AND ts_us >= ? AND ts_us < ? ORDER BY seq DESC LIMIT ?",
            p.topic,
            *span_bounds(c, p),
            p.since_us,
            p.until_us,
            PAGE,
        ),
        "field_topic_day_spans": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events AS e INDEXED BY events_topic_seq WHERE topic = ?"
            " AND seq BETWEEN ? AND ? AND ts_us >= ? AND ts_us < ?"
            " AND json_extract(payload, '$.' || ?) = ? ORDER BY seq DESC LIMIT ?",
            p.topic,
            *span_bounds(c, p),
            p.since_us,
            p.until_us,
            p.field,
            p.value,
            PAGE,
        ),
        "histogram_topic_day": lambda c, p: run(
            c,
            "SELECT (ts_us - ?) / 60000000 AS bucket, count(*) FROM events"
            " WHERE topic = ? AND ts_us >= ? AND ts_us < ? GROUP BY bucket ORDER BY bucket",
            p.since_us,
            p.topic,
            p.since_us,
            p.until_us,
        ),
        "page1_common": deep_common,
        "page1000_common": deep_common,
    }


def _fts_words(text: str) -> str:
    """User words as FTS5 strings, each quoted: FTS syntax typed by a user stays text."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in text.split())


def sqlite_cursor(conn: sqlite3.Connection, kind: str, p: Params, fts: str) -> Params:
    """The keyset cursor a client would hold at page 1 or page 1000 (found untimed)."""
    skip = (DEEP_PAGE - 1) * PAGE if kind.startswith("page1000") else 0
    if kind.endswith("topic"):
        row = conn.execute(
            "SELECT seq FROM events WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (p.topic, skip),
        ).fetchone()
    else:
        row = conn.execute(
            f"SELECT rowid FROM {fts} WHERE {fts} MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (_fts_words(p.word), skip),
        ).fetchone()
    return replace(p, cursor=(row[0] + 1) if row else 0)


# ---------------------------------------------------------------- PostgreSQL


_PG_COLUMNS = "seq, topic, event_id, timestamp, utc_offset_s, source, payload, received_at"


def pg_queries(tsv: str) -> dict[str, Callable[[psycopg.Connection[Any], Params], list[Any]]]:
    """The PostgreSQL shape of each kind over tsvector expression `tsv`; newest first."""
    cols = _PG_COLUMNS

    def run(conn: psycopg.Connection[Any], sql: str, *args: Any) -> list[Any]:
        return conn.execute(sql.encode(), args).fetchall()

    ts = "timestamp >= to_timestamp(%s / 1e6) AND timestamp < to_timestamp(%s / 1e6)"
    match = f"{tsv} @@ to_tsquery('logagg_search', %s)"

    def seq_bounds(conn: psycopg.Connection[Any], p: Params) -> tuple[int, int]:
        row = conn.execute(
            # seq + 0: not the min/max shortcut, which walks the seq index filtering on time.
            f"SELECT min(seq + 0), max(seq + 0) FROM events WHERE {ts}".encode(),
            (p.since_us, p.until_us),
        ).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else (0, -1)

    def span_bounds(conn: psycopg.Connection[Any], p: Params) -> tuple[int, int]:
        row = conn.execute(
            "SELECT min(first_seq), max(last_seq) FROM spans"
            " WHERE max_ts >= to_timestamp(%s / 1e6) AND min_ts < to_timestamp(%s / 1e6)",
            (p.since_us, p.until_us),
        ).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else (0, -1)

    def common_day(
        conn: psycopg.Connection[Any],
        p: Params,
        bounds: Callable[..., tuple[int, int]] = seq_bounds,
    ) -> list[Any]:
        # As on SQLite: the time range's seq bounds, then newest matches by seq within them.
        lo, hi = bounds(conn, p)
        return run(
            conn,
            f"SELECT {cols} FROM events WHERE {match} AND seq BETWEEN %s AND %s AND {ts}"
            " ORDER BY seq DESC LIMIT %s",
            _tsquery(p.word),
            lo,
            hi,
            p.since_us,
            p.until_us,
            PAGE,
        )

    return {
        **_topic_shapes(
            run,
            "%s",
            ts,
            field="payload @> jsonb_build_object(%s::text, %s::text)",
            level="payload ->> 'level' = %s",
        ),
        "needle": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events WHERE {match} ORDER BY seq DESC LIMIT %s",
            _tsquery(p.word),
            PAGE,
        ),
        **_bounds_shapes(common_day, seq_bounds, span_bounds),
        # Newest by timestamp instead of seq: the time index's order, no bounds needed.
        "common_day_ts": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events WHERE {match} AND {ts} ORDER BY timestamp DESC LIMIT %s",
            _tsquery(p.word),
            p.since_us,
            p.until_us,
            PAGE,
        ),
        "histogram_topic_day": lambda c, p: run(
            c,
            "SELECT date_bin('1 minute', timestamp, to_timestamp(%s / 1e6)) AS bucket, count(*)"
            f" FROM events WHERE topic = %s AND {ts} GROUP BY bucket ORDER BY bucket",
            p.since_us,
            p.topic,
            p.since_us,
            p.until_us,
        ),
        "page1_common": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events WHERE {match} AND seq < %s ORDER BY seq DESC LIMIT %s",
            _tsquery(p.word),
            p.cursor,
            PAGE,
        ),
        "page1000_common": lambda c, p: run(
            c,
            f"SELECT {cols} FROM events WHERE {match} AND seq < %s ORDER BY seq DESC LIMIT %s",
            _tsquery(p.word),
            p.cursor,
            PAGE,
        ),
    }


def _tsquery(text: str) -> str:
    """User words as quoted tsquery lexemes joined by AND."""
    return " & ".join("'" + w.replace("'", "''").replace("\\", "\\\\") + "'" for w in text.split())


def pg_cursor(conn: psycopg.Connection[Any], kind: str, p: Params, tsv: str) -> Params:
    skip = (DEEP_PAGE - 1) * PAGE if kind.startswith("page1000") else 0
    if kind.endswith("topic"):
        row = conn.execute(
            "SELECT seq FROM events WHERE topic = %s ORDER BY seq DESC LIMIT 1 OFFSET %s",
            (p.topic, skip),
        ).fetchone()
    else:
        row = conn.execute(
            f"SELECT seq FROM events WHERE {tsv} @@ to_tsquery('logagg_search', %s)"
            " ORDER BY seq DESC LIMIT 1 OFFSET %s",
            (_tsquery(p.word), skip),
        ).fetchone()
    return replace(p, cursor=(row[0] + 1) if row else 2**62)


# ---------------------------------------------------------------- measuring


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "max_ms": round(max(samples_ms), 2),
    }


class _Explain:
    """A connection stand-in that prints the plan of each statement instead of its rows."""

    def __init__(self, conn: Any, is_pg: bool) -> None:
        self._conn, self._is_pg = conn, is_pg

    def execute(self, sql: Any, args: Any = ()) -> Any:
        text = sql.decode() if isinstance(sql, bytes) else sql
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if self._is_pg else "EXPLAIN QUERY PLAN "
        plan = self._conn.execute((prefix + text).encode() if self._is_pg else prefix + text, args)
        print("\n".join(str(r[-1]) for r in plan.fetchall()), flush=True)
        return self._conn.execute(sql, args)


def measure_queries(
    url: str,
    corpus: Corpus,
    n: int,
    only: Sequence[str],
    seed: int,
    explain: bool = False,
    prepare_threshold: int | None = None,
) -> None:
    """`n` random queries of each kind, each timed from sending to the last row fetched;
    with `explain`, one of each with its plan instead."""
    rng = random.Random(seed)
    draws = kinds(corpus, rng)
    with _connection(url, prepare_threshold) as (conn, is_pg, fts):
        shapes: dict[str, Callable[[Any, Params], list[Any]]]
        shapes = pg_queries(fts) if is_pg else sqlite_queries(fts)
        cursor = pg_cursor if is_pg else sqlite_cursor
        names = [k for k in draws if (not only or k in only) and k in shapes]
        for kind in names:
            params = [draws[kind]() for _ in range(n)]
            if kind.startswith("page") and not kind.endswith("offset"):
                # Once per topic or word (50 and 10 of them): finding page 1,000 is slow.
                found = {p: cursor(conn, kind, p, fts) for p in set(params)}
                params = [found[p] for p in params]
            if explain:
                print(f"-- {kind}: {params[0]}", flush=True)
                shapes[kind](_Explain(conn, is_pg), params[0])
                continue
            samples, rows = [], 0
            for p in params:
                started = time.perf_counter()
                rows += len(shapes[kind](conn, p))
                samples.append((time.perf_counter() - started) * 1000)
            label = "tsv_expr" if fts == PG_TSV else fts
            emit(
                {
                    "kind": kind,
                    "store": "pg" if is_pg else "sqlite",
                    "fts": label,
                    "n": n,
                    "mean_rows": round(rows / n, 1),
                    **percentiles(samples),
                }
            )


@contextmanager
def _connection(url: str, prepare_threshold: int | None) -> Iterator[tuple[Any, bool, str]]:
    """A read connection to the store at `url`, and which full-text candidate it has."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            yield conn, False, "fts_cl" if "fts_cl" in names else "fts_ext"
        return
    with _pg(url) as pg:
        # Never prepared: a generic plan ignores the bounds (docs/search-indexes.md, 9).
        pg.prepare_threshold = prepare_threshold
        has_column = pg.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'events'"
            " AND column_name = 'tsv' AND table_schema = current_schema()"
        ).fetchone()
        yield pg, True, "tsv" if has_column else PG_TSV


def build_indexes(url: str, names: Sequence[str]) -> None:
    """Build each named candidate, timing it, and say what it adds per event."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB, as a migration could
            (count,) = conn.execute("SELECT max(seq) FROM events").fetchone()
            for name in names:
                started = time.monotonic()
                conn.execute("BEGIN")
                for statement in SQLITE_INDEXES[name]:
                    conn.execute(statement)
                conn.execute("COMMIT")
                seconds = time.monotonic() - started
                size = _sqlite_size(conn, SQLITE_OBJECTS[name])
                emit(
                    {
                        "index": name,
                        "store": "sqlite",
                        "events": count,
                        "build_s": round(seconds, 1),
                        "mb": round(size / 2**20, 1),
                        "bytes_per_event": round(size / count, 1),
                    }
                )
        return
    with _pg(url) as pg:
        pg.execute("SET maintenance_work_mem = '1GB'")
        for statement in PG_SETUP:
            pg.execute(statement.encode())
        (count,) = pg.execute("SELECT count(*) FROM events").fetchone() or (0,)
        for name in names:
            started = time.monotonic()
            for statement in PG_INDEXES[name]:
                pg.execute(statement.encode())
            seconds = time.monotonic() - started
            pg.execute("ANALYZE events")
            (size,) = pg.execute(
                "SELECT sum(pg_relation_size(oid))::bigint FROM pg_class WHERE relname = ANY(%s)",
                (PG_OBJECTS[name],),
            ).fetchone() or (0,)
            emit(
                {
                    "index": name,
                    "store": "pg",
                    "events": count,
                    "build_s": round(seconds, 1),
                    "mb": round(size / 2**20, 1),
                    "bytes_per_event": round(size / count, 1),
                }
            )


def _sqlite_size(conn: sqlite3.Connection, objects: Sequence[str]) -> int:
    marks = ",".join("?" * len(objects))
    (size,) = conn.execute(
        f"SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ({marks})", objects
    ).fetchone()
    return int(size)


def table_sizes(url: str) -> None:
    """The size of the events table and every index on it, per event."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            (count,) = conn.execute("SELECT max(seq) FROM events").fetchone()
            for name, size in conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ):
                emit(
                    {
                        "object": name,
                        "mb": round(size / 2**20, 1),
                        "bytes_per_event": round(size / count, 1),
                    }
                )
        return
    with _pg(url) as pg:
        (count,) = pg.execute("SELECT count(*) FROM events").fetchone() or (0,)
        for name, size in pg.execute(
            "SELECT c.relname, pg_relation_size(c.oid) + coalesce(pg_relation_size("
            "c.reltoastrelid), 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i') ORDER BY 2 DESC"
        ):
            emit(
                {
                    "object": name,
                    "mb": round(size / 2**20, 1),
                    "bytes_per_event": round(size / count, 1),
                }
            )


# ---------------------------------------------------------------- ingest


# Ingest variants: what each adds to a plain store, all through the real `record`.
SQLITE_INGEST: dict[str, list[str]] = {
    "plain": [],
    "topic_ts": SQLITE_INDEXES["topic_ts"],
    "fts_trigger": [
        "CREATE INDEX IF NOT EXISTS events_topic_ts ON events (topic, ts_us)",
        *SQLITE_INDEXES["fts_contentless"],
        "CREATE TRIGGER IF NOT EXISTS events_fts AFTER INSERT ON events BEGIN"
        f" INSERT INTO fts_cl (rowid, body) SELECT e.seq, {SQLITE_TEXT}"
        " FROM (SELECT new.seq AS seq, new.event_id AS event_id, new.source AS source,"
        " new.payload AS payload) AS e; END",
    ],
}
# Written by Python in `record`'s transaction instead of by a trigger (see _PythonFts).
SQLITE_INGEST["fts_python"] = [
    SQLITE_INDEXES["topic_ts"][0],
    SQLITE_INDEXES["fts_contentless"][0],
    f"INSERT INTO fts_cl (rowid, body) SELECT e.seq, {SQLITE_TEXT} FROM events AS e",
]
# One tokenizer rule for both stores, applied in Python: runs of letters and digits
# (unicode61's token characters, less private-use ones), case and diacritics folded.
_WORD = re.compile(r"[^\W_]+")


def search_text(event_id: str, source: str, payload: object) -> str:
    """What the full-text index holds for one event, as space-separated folded words."""
    text = " ".join((event_id, source, *_strings(payload)))
    return " ".join(_WORD.findall(text.lower() if text.isascii() else fold(text.casefold())))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class _PythonFts(SQLiteStore):
    """The real store, plus the full-text rows of the batch's new events, from Python."""

    @staticmethod
    def _record(conn: sqlite3.Connection, events: Sequence[Event], *args: Any) -> Any:
        (before,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        outcome = SQLiteStore._record(conn, events, *args)  # noqa: SLF001
        texts = {
            (e.topic, e.event_id): search_text(e.event_id, e.source, e.payload)
            for e in first_copies(events)
        }
        new = conn.execute("SELECT seq, topic, event_id FROM events WHERE seq > ?", (before,))
        conn.executemany(
            "INSERT INTO fts_cl (rowid, body) VALUES (?, ?)",
            [(seq, texts[(topic, eid)]) for seq, topic, eid in new.fetchall()],
        )
        return outcome


PG_INGEST: dict[str, list[str]] = {
    "plain": [],
    "topic_ts": PG_INDEXES["topic_ts"],
    "tsv_expr": PG_INDEXES["topic_ts"] + PG_INDEXES["tsv_expr"],
    "tsv_column": PG_INDEXES["topic_ts"] + PG_INDEXES["tsv_column"],
}


def measure_ingest(
    url: str, variants: Sequence[str], *, events: int, batch: int, rounds: int, prefill: int
) -> None:
    """Insert the same events through `Store.record` into one store per variant, in turns.

    Each variant's store starts with `prefill` corpus events (so indexes are not tiny);
    then `rounds` turns each insert `events / rounds` new events in batches of `batch`
    into every variant. Turns interleave, so a busy machine slows all variants alike.
    """
    is_pg = not url.startswith("sqlite://")
    table = PG_INGEST if is_pg else SQLITE_INGEST
    urls = {v: _variant_url(url, v) for v in variants}
    base = Corpus(prefill, seed=5)
    for variant, vurl in urls.items():
        _reset(vurl)
        # SQLite: ts_us computed from `timestamp`, so the unchanged `record` fills it.
        _apply(
            vurl,
            PG_SETUP
            if is_pg
            else [
                f"ALTER TABLE events ADD COLUMN ts_us INTEGER GENERATED ALWAYS AS ({SQLITE_TS_US})"
                " VIRTUAL"
            ],
        )
        if prefill:
            prefill_corpus(vurl, base)
        started = time.monotonic()
        _apply(vurl, table[variant])
        emit({"built": variant, "prefill": prefill, "s": round(time.monotonic() - started, 1)})
    new = list(Corpus(events, seed=7, end=base.end + timedelta(days=1), days=1).rows())
    batches = [[_event(r) for r in new[i : i + batch]] for i in range(0, len(new), batch)]
    per_round = max(1, len(batches) // rounds)
    spent = dict.fromkeys(variants, 0.0)
    stores: dict[str, Store] = {
        v: _PythonFts.from_url(u) if v == "fts_python" else open_store(u, durability="full")
        for v, u in urls.items()
    }
    try:
        for start in range(0, len(batches), per_round):
            for variant, store in stores.items():
                started = time.perf_counter()
                for b in batches[start : start + per_round]:
                    store.record(b, [])
                spent[variant] += time.perf_counter() - started
    finally:
        for store in stores.values():
            store.close()
    plain = len(new) / spent[variants[0]]
    for variant in variants:
        rate = len(new) / spent[variant]
        emit(
            {
                "ingest": variant,
                "store": "pg" if is_pg else "sqlite",
                "prefill": prefill,
                "events": len(new),
                "batch": batch,
                "per_s": round(rate),
                "ratio_to_" + variants[0]: round(rate / plain, 3),
            }
        )


def _event(row: Row) -> Event:
    return Event.model_validate(
        {
            "topic": row.topic,
            "event_id": row.event_id,
            "timestamp": row.timestamp,
            "source": row.source,
            "payload": json.loads(row.payload),
        }
    )


def _variant_url(url: str, variant: str) -> str:
    if url.startswith("sqlite://"):
        return url.removesuffix(".db") + f"-{variant}.db"
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema=ingest_{variant}"


@contextmanager
def _pg(url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the store at `url`, in its schema (then `public`,
    where the extensions are) when the URL names one."""
    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo, autocommit=True) as pg:
        if schema is not None:
            pg.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(schema)))
        yield pg


def _reset(url: str) -> None:
    if url.startswith("sqlite://"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo, autocommit=True) as pg:
        pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def _apply(url: str, statements: Sequence[str]) -> None:
    if url.startswith("sqlite://"):
        open_store(url).close()
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)) as c:
            for statement in statements:
                c.execute(statement)
        return
    open_store(url).close()
    with _pg(url) as pg:
        pg.execute("SET maintenance_work_mem = '1GB'")
        for statement in statements:
            pg.execute(statement.encode())


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_spike", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prefill", help="fill a new store with the corpus")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=10_000_000)
    p.add_argument("--seed", type=int, default=11)
    p = sub.add_parser("index", help="build candidate indexes, timing each")
    p.add_argument("url")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("sizes", help="the size of every table and index")
    p.add_argument("url")
    p = sub.add_parser("queries", help="p50/p95 of each query kind")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=10_000_000, help="the prefilled corpus's size")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--kind", action="append", default=[])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--explain", action="store_true", help="print one plan of each kind")
    p.add_argument(
        "--prepare-threshold",
        type=int,
        default=None,
        help="PostgreSQL: prepare a statement on this execution (psycopg's default: 5)",
    )
    p = sub.add_parser("ingest", help="record() throughput per index variant, interleaved")
    p.add_argument("url", help="a scratch SQLite path or PostgreSQL database")
    p.add_argument("variants", nargs="+")
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--prefill", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.command == "prefill":
        seconds = prefill_corpus(
            args.url,
            Corpus(args.count, seed=args.seed),
            progress=lambda n, s: emit({"prefilled": n, "s": round(s, 1)}),
        )
        emit({"prefill": args.count, "url": args.url, "s": round(seconds, 1)})
    elif args.command == "index":
        build_indexes(args.url, args.names)
    elif args.command == "sizes":
        table_sizes(args.url)
    elif args.command == "queries":
        measure_queries(
            args.url,
            Corpus(args.count),
            args.n,
            args.kind,
            args.seed,
            explain=args.explain,
            prepare_threshold=args.prepare_threshold,
        )
    else:
        measure_ingest(
            args.url,
            args.variants,
            events=args.events,
            batch=args.batch,
            rounds=args.rounds,
            prefill=args.prefill,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
