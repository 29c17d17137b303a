"""Search in SQLite: how a `Query` reads the events, and what `record` writes so it can.

Every page is read in seq order through an access path that already yields seqs in
order, so `LIMIT` stops early and a cursor seeks instead of skipping (page 1,000 costs
what page 1 does):
- with `q`: the FTS5 table `text.events_fts` (rowid = seq; attached from its own file,
  `bridge.store.sqlite_text`) drives, in rowid order; each hit is joined to its event for
  the other filters;
- else with topics: `(topic, seq)` per topic, merged (a UNION ALL of per-topic pages);
- else: the events table by seq.
A time range narrows the seqs read first: `minute_seqs` holds, per minute of `timestamp`,
the first and last seq of the events in it, so [since, until) lies within the seqs of
its minutes. Events mostly arrive in time order, so that window is tight; one arriving
late only widens its minute's window, never hides an event. Each row then checks `ts`
(µs since the epoch, UTC) exactly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from bridge.query import (
    FieldFilter,
    Query,
    document_text,
    render_fts5,
    searchable,
)
from bridge.store.base import Bucket
from bridge.store.reading import EVERYTHING, Retained, page_end
from bridge.store.search_sql import (
    MINUTE_US,
    Conditions,
    bucket,
    from_micros,
    minutes,
    named_topics,
    row_conditions,
    seq_window,
)

SEARCH_SCHEMA = """
CREATE INDEX IF NOT EXISTS events_topic_ts ON events (topic, ts);
CREATE TABLE IF NOT EXISTS minute_seqs (
    minute INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
"""
# Topics past this many are filtered row by row instead of merged page by page.
_MAX_MERGED_TOPICS = 64
_MINUTE_SEQS = (
    "INSERT INTO minute_seqs (minute, first_seq, last_seq) VALUES (?, ?, ?)"
    " ON CONFLICT (minute) DO UPDATE SET first_seq = min(first_seq, excluded.first_seq),"
    " last_seq = max(last_seq, excluded.last_seq)"
)


def index_text(event_id: str, source: str, payload: dict[str, Any]) -> str:
    """What `events_fts` holds for an event: its tokens, as `bridge.query` makes them."""
    return document_text(searchable(event_id, source, payload))


def note_minutes(conn: sqlite3.Connection, stamped: Sequence[tuple[int, int]]) -> None:
    """Widen `minute_seqs` to cover these (seq, ts) pairs, in the caller's transaction (so
    an event and its place in the time index are committed together or not at all)."""
    spans: dict[int, tuple[int, int]] = {}
    for seq, ts in stamped:
        minute = ts // MINUTE_US
        first, last = spans.get(minute, (seq, seq))
        spans[minute] = (min(first, seq), max(last, seq))
    conn.executemany(_MINUTE_SEQS, [(m, f, la) for m, (f, la) in spans.items()])


def _field(where: Conditions, wanted: FieldFilter) -> None:
    """`json_type` tells a number from a string or a literal (`json_extract` alone gives
    SQL values, in which 503 and "503" compare equal, and true is 1)."""
    path = "$" + "".join(f'."{key}"' for key in wanted.path)
    value = wanted.value
    if isinstance(value, Decimal):
        where.add(
            "(json_type(payload, {}) IN ('integer', 'real') AND json_extract(payload, {}) = {})",
            path,
            path,
            _number(value),
        )
    elif isinstance(value, str):
        where.add(
            "(json_type(payload, {}) = 'text' AND json_extract(payload, {}) = {})",
            path,
            path,
            value,
        )
    else:
        where.add("json_type(payload, {}) = {}", path, json.dumps(value))


def _number(value: Decimal) -> int | float:
    """An integer compares exactly with SQLite's 64-bit integers; anything else as a double."""
    if value == value.to_integral_value() and abs(value) < 2**63:
        return int(value)
    return float(value)


def _select(
    conn: sqlite3.Connection,
    query: Query,
    columns: str,
    *,
    page: bool,
    through: int | None = None,
    retained: Retained = EVERYTHING,
) -> tuple[str, list[object]] | None:
    """The SQL reading `columns` of the events `query` matches, and its parameters: with
    `page`, in the query's order, at most its limit, and up to seq `through` if given;
    else unordered (for aggregates); only what `retained` lets reads see. None when
    nothing can match."""
    query = replace(query, after=max(query.after, retained.after))
    window = _window(conn, query)
    topics = None if query.topic is None else named_topics(conn, "?", query.topic)
    if window is None or topics == []:
        return None
    low, high = window
    desc = query.order == "desc"
    if through is not None:
        low, high = (max(low, through - 1), high) if desc else (low, min(high, through + 1))
    direction = "DESC" if desc else "ASC"
    limit: list[object] = [query.limit] if page else []
    rows = _retained_rows(query, retained)
    where = Conditions("?")
    if query.text is not None:
        where.add("events_fts MATCH {}", render_fts5(query.text))
        where.add("f.rowid > {}", low)
        where.add("f.rowid < {}", high)
        if topics is not None:
            where.add("topic IN (SELECT value FROM json_each({}))", json.dumps(topics))
        where.extend(rows)
        order = f" ORDER BY f.rowid {direction} LIMIT ?" if page else ""
        return (
            (
                f"SELECT {columns} FROM text.events_fts AS f CROSS JOIN events AS e"
                " ON e.seq = f.rowid"
                f" WHERE {where.sql}{order}"
            ),
            where.params + limit,
        )
    order = f" ORDER BY seq {direction} LIMIT ?" if page else ""
    if topics is not None and len(topics) <= _MAX_MERGED_TOPICS:
        branches, params = [], []
        for topic in topics:
            where = Conditions("?")
            where.add("topic = {}", topic)
            where.add("seq > {}", low)
            where.add("seq < {}", high)
            where.extend(rows)
            branches.append(f"SELECT {columns} FROM events WHERE {where.sql}{order}")
            params += where.params + limit
        if len(branches) == 1:
            return branches[0], params
        merged = " UNION ALL ".join(f"SELECT * FROM ({branch})" for branch in branches)
        return merged + order, params + limit
    where.add("seq > {}", low)
    where.add("seq < {}", high)
    if topics is not None:  # `+`: filter each row, not read the topics' index out of order
        where.add("+topic IN (SELECT value FROM json_each({}))", json.dumps(topics))
    where.extend(rows)
    return f"SELECT {columns} FROM events WHERE {where.sql}{order}", where.params + limit


def _retained_rows(query: Query, retained: Retained) -> Conditions:
    """`row_conditions`, and what retention hides when topics keep events differently."""
    rows = row_conditions(query, "?", _field)
    if retained.clause is not None:
        rows.clauses.append(retained.clause)
        rows.params += retained.params
    return rows


def _window(conn: sqlite3.Connection, query: Query) -> tuple[int, int] | None:
    """The seqs the page may read (low < seq < high), narrowed to the minutes of the time
    range when there is one; None when no event has a timestamp in those minutes."""
    first_minute, last_minute = minutes(query)
    if first_minute is None and last_minute is None:
        return seq_window(query)
    where = Conditions("?")
    if first_minute is not None:
        where.add("minute >= {}", first_minute)
    if last_minute is not None:
        where.add("minute <= {}", last_minute)
    first, last = conn.execute(
        f"SELECT min(first_seq), max(last_seq) FROM minute_seqs WHERE {where.sql}", where.params
    ).fetchone()
    if first is None:
        return None
    low, high = seq_window(query, first, last)
    return (low, high) if low + 1 < high else None


def search_rows(
    conn: sqlite3.Connection,
    query: Query,
    columns: str,
    size: str,
    max_bytes: int | None,
    retained: Retained = EVERYTHING,
) -> list[Any]:
    """The rows (`columns`, `seq` first) of the page `query` asks for; with `max_bytes`,
    the (seq, `size`) of its rows are read first, and the page stops where they add up."""
    through = None
    if max_bytes is not None:
        sizes = _select(conn, query, f"seq, {size}", page=True, retained=retained)
        if sizes is None:
            return []
        through = page_end(conn.execute(*sizes), max_bytes)
        if through is None:
            return []
    select = _select(conn, query, columns, page=True, through=through, retained=retained)
    return [] if select is None else conn.execute(*select).fetchall()


def bounded_rows(
    conn: sqlite3.Connection,
    query: Query,
    columns: str,
    max_bytes: int,
    retained: Retained = EVERYTHING,
) -> list[Any]:
    """The rows (`columns`: `seq`, then text) of the page `query` asks for, up to the first
    whose texts add up to `max_bytes` characters: read one at a time, so SQLite makes no
    row past it (one query, where `search_rows` reads the sizes first)."""
    select = _select(conn, query, columns, page=True, retained=retained)
    if select is None:
        return []
    rows, total = [], 0
    for row in conn.execute(*select):
        rows.append(row)
        total += len(row[-1])
        if total >= max_bytes:
            break
    return rows


def histogram(
    conn: sqlite3.Connection, query: Query, interval_s: int, retained: Retained = EVERYTHING
) -> list[Bucket]:
    select = _select(conn, replace(query, position=None), "ts", page=False, retained=retained)
    if select is None:
        return []
    sql, params = select
    start = bucket("ts", interval_s * 1_000_000)
    rows = conn.execute(
        f"SELECT {start} AS start, count(*) FROM ({sql}) GROUP BY start ORDER BY start", params
    )
    return [Bucket(from_micros(at), count) for at, count in rows]


def time_span(
    conn: sqlite3.Connection, query: Query, retained: Retained = EVERYTHING
) -> tuple[datetime, datetime] | None:
    """With topic and time filters only, the ends of each topic's range in `(topic, ts)`
    (two index seeks a topic); else the ends of what `_select` reads."""
    query = replace(query, position=None)
    if query.text is None and query.source is None and not query.fields and not query.after:
        if query.topic is None:
            topics = [name for (name,) in conn.execute("SELECT topic FROM topic_stats")]
        else:
            topics = named_topics(conn, "?", query.topic)
        where = _retained_rows(query, retained)
        if retained.after:
            where.add("seq > {}", retained.after)
        where.clauses.insert(0, "topic = t.value")
        ends = f"SELECT {{}}(ts) FROM events WHERE {where.sql}"
        sql = (
            f"SELECT min(first), max(last) FROM (SELECT ({ends.format('min')}) AS first,"
            f" ({ends.format('max')}) AS last FROM json_each(?) AS t)"
        )
        params = [*where.params, *where.params, json.dumps(topics)]
    else:
        select = _select(conn, query, "ts", page=False, retained=retained)
        if select is None:
            return None
        inner, params = select
        sql = f"SELECT min(ts), max(ts) FROM ({inner})"
    first, last = conn.execute(sql, params).fetchone()
    return None if first is None else (from_micros(first), from_micros(last))
