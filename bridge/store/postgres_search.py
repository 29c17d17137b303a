"""A `Query` in PostgreSQL's terms: the WHERE of its filters, and the page, histogram and
time span read with it. Every value is a bound parameter; the SQL text depends only on
which filters are present (and how many field keys and topics), never on what they say.

- Text: `tsv @@ %s::tsquery`, the column `record` writes from Python's tokens (see
  `bridge.query.text`), GIN-indexed; a cast, so no parser or dictionary runs.
- Fields: `payload -> k1 -> k2 = %s::jsonb`. `->` with a text key yields NULL on an
  array, so arrays are not entered; jsonb compares numbers as numbers (`503.0 = 503`),
  never a number with a string, and `true`/`null` only with themselves.
- A wildcard topic: the topics of `topic_stats` narrowed by LIKE and decided by
  `TopicFilter.matches`, then `topic = ANY(%s)` through the (topic, …) indexes.
- A time range without a topic also bounds `seq` (see `seq_bounds`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from bridge.query import FieldFilter, Query, render_tsquery
from bridge.store.reading import EVERYTHING, Retained

# Topics that LIKE finds for a wildcard filter, which `TopicFilter.matches` then decides.
TOPICS_LIKE = "SELECT DISTINCT topic FROM topic_stats WHERE topic LIKE %s ESCAPE '\\'"
_SPAN = "date_bin('5 minutes', {moment}, 'epoch'::timestamptz)"
# The seqs of the events in table `rows` (with `seq` and `timestamp`) merged into
# `time_seqs` per span, in the writer's own `slot` (an integer: see `postgres.SLOTS`), so
# bridges writing the same 5 minutes do not queue on one row; spans in order: two writers
# that share a slot lock them in that order, so they never deadlock.
COUNT_SPANS = (
    "INSERT INTO time_seqs AS t (start, slot, low, high)"
    f" SELECT {_SPAN.format(moment='timestamp')}, {{slot}}, min(seq), max(seq) FROM {{rows}}"
    " GROUP BY 1 ORDER BY 1"
    " ON CONFLICT (start, slot) DO UPDATE SET low = least(t.low, excluded.low),"
    " high = greatest(t.high, excluded.high)"
)


@dataclass(frozen=True, slots=True)
class Where:
    """A `WHERE …` clause and its parameters, in order."""

    sql: str
    params: tuple[object, ...]


def where(
    query: Query,
    topics: Sequence[str] | None,
    *,
    paged: bool,
    seqs: tuple[int, int] | None = None,
    upto: int | None = None,
    retained: Retained = EVERYTHING,
) -> Where:
    """The filters of `query` (`topics`: a wildcard topic's resolved list); `paged` adds
    the cursor's position, which a histogram or time span ignores; `seqs` are the bounds
    `seq_bounds` found for its time range; `upto` the read's watermark; `retained` hides
    what has expired."""
    clauses: list[str] = ["seq > %s"]
    params: list[object] = [max(query.after, retained.after)]
    if retained.clause is not None:
        clauses.append(retained.clause)
        params += retained.params
    if upto is not None:
        clauses.append("seq <= %s")
        params.append(upto)
    if query.position is not None and paged:
        clauses.append("seq < %s" if query.order == "desc" else "seq > %s")
        params.append(query.position)
    if seqs is not None:
        clauses.append("seq BETWEEN %s AND %s")
        params += seqs
    if query.topic is not None:
        if query.topic.wildcard:
            clauses.append("topic = ANY(%s::text[])")
            params.append(list(topics or ()))
        else:
            clauses.append("topic = %s")
            params.append(query.topic.text)
    if query.since is not None:
        clauses.append("timestamp >= %s")
        params.append(query.since)
    if query.until is not None:
        clauses.append("timestamp < %s")
        params.append(query.until)
    if query.source is not None:
        clauses.append("source = %s")
        params.append(query.source)
    if query.text is not None:
        clauses.append("tsv @@ %s::tsquery")
        params.append(render_tsquery(query.text))
    for found in query.fields:
        clauses.append("payload" + " -> %s::text" * len(found.path) + " = %s::jsonb")
        params += [*found.path, json_value(found)]
    return Where(" WHERE " + " AND ".join(clauses), tuple(params))


def seq_bounds(query: Query) -> Where | None:
    """For a time range without a topic: the query of the lowest and highest seq of the
    5-minute spans it overlaps, from `time_seqs`, which every insert keeps up to date.

    Pages follow seq, and a LIMIT over `ORDER BY seq` with a time filter is a trap: the
    planner, taking time and seq as independent, walks the seq index from the newest
    event and filters on time through every event after the range (for a day a week
    ago: millions). Bounding seq as well turns that walk into one over the range's own
    events, whatever the range's width, for the price of reading a row per 5 minutes. The
    bounds hold every event in range (they may hold more: an event that arrived late
    widens its span's). With a topic the (topic, timestamp) index already bounds the
    work to that topic's events in range, and the planner uses it.
    """
    if query.topic is not None or (query.since is None and query.until is None):
        return None
    clauses: list[str] = []
    params: list[object] = []
    if query.since is not None:
        clauses.append(f"start >= {_SPAN.format(moment='%s')}")
        params.append(query.since)
    if query.until is not None:
        clauses.append("start < %s")
        params.append(query.until)
    return Where(
        "SELECT min(low), max(high) FROM time_seqs WHERE " + " AND ".join(clauses), tuple(params)
    )


def json_value(found: FieldFilter) -> str:
    """The filter's value as jsonb input: a number as written by Decimal (valid JSON)."""
    if isinstance(found.value, Decimal):
        return str(found.value)
    return json.dumps(found.value)


def page_sql(
    columns: str, query: Query, filters: Where, max_bytes: int | None, out: str | None = None
) -> str:
    """The page's rows in its order. With `max_bytes`, the page stops before the payload
    that would take it past that many bytes (the first row always comes): the server
    sums the sizes, so a reader never receives more than about `max_bytes`. `out` is what
    the sized page gives of `columns` (default: the same expressions again; an export
    names its line and its payload, and takes the line)."""
    order = "DESC" if query.order == "desc" else "ASC"
    rows = f"SELECT {columns} FROM events{filters.sql} ORDER BY seq {order} LIMIT %s"
    if max_bytes is None:
        return rows
    return (
        f"SELECT {out or columns} FROM (SELECT *, row_number() OVER w AS n,"
        f" sum(octet_length(payload::text)) OVER w AS running FROM ({rows}) AS page"
        f" WINDOW w AS (ORDER BY seq {order})) AS sized"
        f" WHERE n = 1 OR running <= %s ORDER BY seq {order}"
    )


def histogram_sql(filters: Where) -> str:
    """Counts per bucket of `%s` seconds, aligned on the Unix epoch, oldest first."""
    return (
        "SELECT date_bin(make_interval(secs => %s), timestamp, 'epoch'::timestamptz) AS start,"
        f" count(*) FROM events{filters.sql} GROUP BY start ORDER BY start"
    )


def span_sql(filters: Where) -> str:
    return f"SELECT min(timestamp), max(timestamp) FROM events{filters.sql}"
