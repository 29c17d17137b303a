"""SQL pieces of search that do not depend on the backend: a query's filters as
conditions with the driver's placeholder (`mark`), the topics a filter names, the seq
window a page reads, and the time arithmetic (µs since the epoch, UTC) every store keys on.

Nothing here puts user text into SQL: values are parameters, and the SQL text comes from
the shape of the query only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bridge.query import FieldFilter, Query, TopicFilter
from bridge.store.reading import Connection

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_US = 60_000_000
# In SQLite's and PostgreSQL's integer types: no seq is above it.
NO_SEQ_ABOVE = 2**63 - 1


def micros(moment: datetime) -> int:
    """`moment` as whole µs since the epoch, UTC: how the stores sort and bucket time."""
    since = moment - EPOCH  # its fields, not `// timedelta(…)`: 3 times faster, as exact
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


@dataclass(slots=True)
class Conditions:
    """SQL conditions joined by AND, and their parameters in order."""

    mark: str
    clauses: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def add(self, clause: str, *params: object) -> None:
        """`clause` with one `{}` per parameter, where the placeholder goes."""
        self.clauses.append(clause.format(*[self.mark] * len(params)))
        self.params += params

    def extend(self, other: Conditions) -> None:
        self.clauses += other.clauses
        self.params += other.params

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses) or "TRUE"


FieldCondition = Callable[[Conditions, FieldFilter], None]


def row_conditions(query: Query, mark: str, field_condition: FieldCondition) -> Conditions:
    """What each event row must satisfy besides its topic, text and seq window: the time
    range on `ts`, the source, the fields (`field_condition` says how, per backend)."""
    where = Conditions(mark)
    if query.since is not None:
        where.add("ts >= {}", micros(query.since))
    if query.until is not None:
        where.add("ts < {}", micros(query.until))
    if query.source is not None:
        where.add("source = {}", query.source)
    for wanted in query.fields:
        field_condition(where, wanted)
    return where


def named_topics(conn: Connection, mark: str, topic: TopicFilter) -> list[str]:
    """The stored topics `topic` names: itself when it has no wildcard; else the per-topic
    counters' topics, narrowed by LIKE and decided by `TopicFilter.matches`."""
    if not topic.wildcard:
        return [topic.text]
    rows = conn.execute(
        f"SELECT topic FROM topic_stats WHERE topic LIKE {mark} ESCAPE '\\' ORDER BY topic",
        (topic.like_pattern(),),
    )
    return [name for (name,) in rows if topic.matches(name)]


def seq_window(query: Query, first: int | None = None, last: int | None = None) -> tuple[int, int]:
    """(low, high): the page reads seqs with low < seq < high. From `after`, the cursor's
    position and, when the time range is known to lie between them, seqs `first`..`last`."""
    low, high = query.after, NO_SEQ_ABOVE
    if query.position is not None:
        if query.order == "desc":
            high = min(high, query.position)
        else:
            low = max(low, query.position)
    if first is not None:
        low = max(low, first - 1)
    if last is not None:
        high = min(high, last + 1)
    return low, high


def minutes(query: Query) -> tuple[int | None, int | None]:
    """The first and last minute (since the epoch) the query's time range touches."""
    since = None if query.since is None else micros(query.since) // MINUTE_US
    until = None if query.until is None else (micros(query.until) - 1) // MINUTE_US
    return since, until


def bucket(column: str, width_us: int) -> str:
    """SQL for the start (µs) of the `width_us` bucket holding `column`, floored (integer
    division in SQL rounds toward zero, wrong before 1970)."""
    width_us = int(width_us)
    return (
        f"(({column}) / {width_us} - CASE WHEN ({column}) % {width_us} < 0 THEN 1 ELSE 0 END)"
        f" * {width_us}"
    )
