"""The read side both SQL stores share: the same queries and paging, over each backend's
connection, placeholder and column types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Protocol

from bridge.retention import META_KEY, RetentionPolicy, policy_from_json
from bridge.store.base import (
    RetentionStats,
    SpaceReport,
    Stats,
    StoredEvent,
    StoredRate,
    StoredRejection,
    TopicStats,
)


class Rows(Protocol):
    """What `execute` returns in both drivers (sqlite3 and psycopg cursors)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, query: str, params: Any = ..., /) -> Rows: ...


@dataclass(frozen=True, slots=True)
class Retained:
    """Which events a read may return under the store's retention: those with seq above
    `after` and, when topics keep their events for different times, satisfying `clause`
    (SQL over `seq` and `topic`, with `params`). Every read raises its own `after` to this
    one, so expired rows not yet deleted are skipped by index, not read and filtered."""

    after: int = 0
    clause: str | None = None
    params: tuple[object, ...] = ()

    def sql(self, prefix: str = " AND ") -> str:
        return "" if self.clause is None else f"{prefix}{self.clause}"


EVERYTHING = Retained()


class SqlReader(ABC):
    """`StoreReader` for a SQL database: a backend says how to open a read transaction,
    its placeholder, how to read a payload's size, and how its rows become values."""

    _MARK: ClassVar[str]
    # The `events` columns a backend reads, in the order its `_event` takes them.
    _EVENT_COLUMNS: ClassVar[str]
    _PAYLOAD_SIZE: ClassVar[str]
    # `received_at` at or after the placeholder's instant (see `_instant`); the key of its
    # whole second; that key (in place of `{}`) as Unix seconds.
    _SINCE: ClassVar[str]
    _SECOND: ClassVar[str]
    _UNIX: ClassVar[str]
    # The per-topic and per-code counters, one row each, in order.
    _TOPIC_COUNTS: ClassVar[str] = (
        "SELECT topic, unique_processed, duplicate_dropped FROM topic_stats ORDER BY topic"
    )
    _CODE_COUNTS: ClassVar[str] = "SELECT code, count FROM rejection_stats ORDER BY code"

    @abstractmethod
    def _read(self) -> AbstractContextManager[Connection]:
        """One read-only transaction: every query of a call sees the same snapshot."""

    @abstractmethod
    def _live_uptimes(self, client_id: str | None) -> tuple[str, Any]:
        """The query for the uptimes of the bridges alive now (of `client_id` only, if
        given), on the store's clock, and its parameters."""

    @abstractmethod
    def _now(self, conn: Connection) -> float:
        """The clock that stamps `received_at`, now, in Unix seconds."""

    @abstractmethod
    def _instant(self, unix: float) -> object:
        """A Unix time as `_SINCE`'s parameter."""

    @abstractmethod
    def _event(self, row: Any) -> StoredEvent: ...

    def _horizon(self, conn: Connection) -> int | None:
        """The highest seq this read may return (None: any): the store's watermark where
        rows can become visible out of seq order (several writers)."""
        return None

    def _read_rejected(self) -> AbstractContextManager[Connection]:
        """A read of `rejected`, whose `_horizon` is that table's watermark (its seqs are
        its own)."""
        return self._read()

    @abstractmethod
    def _floor(self, conn: Connection, since: float) -> int:
        """The first seq received at or after Unix time `since` (one past the newest when
        none was): every event below it has expired for a retention of now - `since`."""

    @abstractmethod
    def _topic_list(self, topics: list[str]) -> tuple[str, object]:
        """SQL testing that `topic` is one of `topics`, and its parameter."""

    def _policy(self, conn: Connection) -> RetentionPolicy:
        row = conn.execute(
            f"SELECT value FROM meta WHERE key = {self._MARK}", (META_KEY,)
        ).fetchone()
        return policy_from_json(row[0] if row else None)

    def _retained(self, conn: Connection) -> Retained:
        """What the store's policy lets reads return now, in this read's snapshot."""
        policy = self._policy(conn)
        if not policy.finite:
            return EVERYTHING
        now = self._now(conn)
        floors: dict[float | None, int] = {None: 0}

        def floor(keep: float | None) -> int:
            if keep not in floors:
                assert keep is not None
                floors[keep] = self._floor(conn, now - keep)
            return floors[keep]

        if not policy.rules:
            return Retained(max(floor(policy.default_s) - 1, 0))
        groups: dict[int, list[str]] = {}
        for (topic,) in conn.execute("SELECT DISTINCT topic FROM topic_stats"):
            groups.setdefault(floor(policy.keep_s(topic)), []).append(topic)
        if len(groups) <= 1:
            return Retained(max(min(groups, default=floor(policy.default_s)) - 1, 0))
        cases, params = [], []
        for at, topics in sorted(groups.items()):
            test, param = self._topic_list(topics)
            cases.append(f"WHEN {test} THEN {self._MARK}")
            params += [param, at]
        clause = f"seq >= CASE {' '.join(cases)} ELSE {self._MARK} END"
        return Retained(min(groups) - 1, clause, (*params, floor(policy.default_s)))

    def _floors(self, conn: Connection, policy: RetentionPolicy) -> dict[str, int]:
        """Per topic with a finite retention, the seq below which its events expired."""
        if not policy.finite:
            return {}
        now = self._now(conn)
        by_keep: dict[float, int] = {}
        floors = {}
        for (topic,) in conn.execute("SELECT DISTINCT topic FROM topic_stats").fetchall():
            keep = policy.keep_s(topic)
            if keep is not None:
                if keep not in by_keep:
                    by_keep[keep] = self._floor(conn, now - keep)
                floors[topic] = by_keep[keep]
        return floors

    def _retention_stats(self, conn: Connection) -> RetentionStats:
        """The store's policy, its counters and the oldest event a read returns now."""
        retained = self._retained(conn)
        mark = self._MARK
        oldest = conn.execute(
            f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > {mark}{retained.sql()}"
            " ORDER BY seq LIMIT 1",
            (retained.after, *retained.params),
        ).fetchone()
        # A name may be split in per-writer rows, `name:slot` (PostgreSQL's `late`).
        counts: Counter[str] = Counter()
        for name, n in conn.execute("SELECT name, count FROM retention_counts").fetchall():
            counts[name.partition(":")[0]] += n
        return RetentionStats(
            policy=self._policy(conn),
            oldest_received_at=None if oldest is None else self._event(oldest).received_at,
            events_expired=counts.get("events_expired", 0),
            keys_held=counts.get("keys_made", 0) - counts.get("keys_forgotten", 0),
            keys_forgotten=counts.get("keys_forgotten", 0),
            late=counts.get("late", 0),
        )

    @abstractmethod
    def _rejection(self, row: Any) -> StoredRejection: ...

    def bridge_uptime(self, client_id: str) -> float | None:
        with self._read() as conn:
            row = conn.execute(*self._live_uptimes(client_id)).fetchone()
        return None if row is None else max(0.0, row[0])

    def space_reports(self) -> list[SpaceReport]:
        from bridge.store.space import read_reports

        with self._read() as conn:
            return [
                SpaceReport.from_json(client_id, value)
                for client_id, value in read_reports(conn, self._MARK)
                if conn.execute(*self._live_uptimes(client_id)).fetchone() is not None
            ]

    def stats(self) -> Stats:
        with self._read() as conn:
            live, params = self._live_uptimes(None)
            topics = conn.execute(self._TOPIC_COUNTS).fetchall()
            codes = conn.execute(self._CODE_COUNTS).fetchall()
            (uptime,) = conn.execute(
                f"SELECT max(uptime) FROM ({live}) AS live", params
            ).fetchone() or (None,)
            retention = self._retention_stats(conn)
        return make_stats(topics, codes, uptime, retention)

    def events(
        self,
        *,
        topic: str | None,
        after: int,
        limit: int,
        newest: bool = False,
        max_bytes: int | None = None,
    ) -> list[StoredEvent]:
        with self._read() as conn:
            retained = self._retained(conn)
            rows = read_page(
                conn,
                self._MARK,
                f"SELECT {self._EVENT_COLUMNS} FROM events",
                f"SELECT seq, {self._PAYLOAD_SIZE} FROM events",
                after=max(after, retained.after),
                limit=limit,
                newest=newest,
                topic=topic,
                max_bytes=max_bytes,
                retained=retained,
                upto=self._horizon(conn),
            )
        return [self._event(row) for row in rows]

    def newest_seq(self) -> int:
        with self._read() as conn:
            (newest,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            upto = self._horizon(conn)  # PostgreSQL: no seq past the watermark is final yet
        return int(newest) if upto is None else min(int(newest), upto)

    def rejected(self, *, after: int, limit: int, newest: bool = False) -> list[StoredRejection]:
        with self._read_rejected() as conn:
            rows = read_page(
                conn,
                self._MARK,
                "SELECT seq, mqtt_topic, code, reason, body, received_at FROM rejected",
                after=after,
                limit=limit,
                newest=newest,
                upto=self._horizon(conn),
            )
        return [self._rejection(row) for row in rows]

    def stored_per_second(self, *, seconds: float, after: int = 0) -> StoredRate:
        mark = self._MARK
        with self._read() as conn:
            now = self._now(conn)
            upto = self._horizon(conn)
            if upto is None:
                (newest,) = conn.execute("SELECT max(seq) FROM events").fetchone()
            else:
                (newest,) = conn.execute(
                    f"SELECT max(seq) FROM events WHERE seq <= {mark}", (upto,)
                ).fetchone()
            if newest is None or newest <= after:
                return StoredRate(now, {}, newest or 0)
            retained = self._retained(conn)
            if newest <= retained.after:
                return StoredRate(now, {}, newest)
            since = self._instant(now - seconds)
            start = first_recent(
                lambda seq: conn.execute(
                    f"SELECT seq, {self._SINCE} FROM events WHERE seq >= {mark}"
                    " ORDER BY seq LIMIT 1",
                    (since, seq),
                ).fetchall()[0],
                max(after, retained.after) + 1,
                newest + 1,
            )
            # Grouped by the cheap key, converted once per second rather than once per row.
            counts = conn.execute(
                f"SELECT {self._UNIX.format('second')}, n FROM ("
                f" SELECT {self._SECOND} AS second, count(*) AS n FROM events"
                f" WHERE seq >= {mark} AND seq <= {mark} AND {self._SINCE}{retained.sql()}"
                " GROUP BY second) AS seconds ORDER BY second",
                (start, newest, since, *retained.params),
            ).fetchall()
        return StoredRate(now, dict(counts), newest)


def make_stats(
    topic_rows: Iterable[tuple[str, int, int]],
    code_rows: Iterable[tuple[str, int]],
    uptime_s: float | None,
    retention: RetentionStats | None = None,
) -> Stats:
    """Stats from the counter tables, the oldest live bridge's uptime and retention."""
    topics = {t: TopicStats(u, d) for t, u, d in topic_rows}
    codes = dict(code_rows)
    return Stats(
        unique_processed=sum(t.unique_processed for t in topics.values()),
        duplicate_dropped=sum(t.duplicate_dropped for t in topics.values()),
        rejected=sum(codes.values()),
        topics=topics,
        rejected_by_code=codes,
        uptime_s=None if uptime_s is None else round(max(0.0, uptime_s), 3),
        retention=retention,
    )


def page(
    mark: str,
    *,
    after: int,
    limit: int,
    newest: bool,
    topic: str | None = None,
    through: int | None = None,
    upto: int | None = None,
    retained: Retained = EVERYTHING,
) -> tuple[str, list[object]]:
    """The `WHERE … ORDER BY seq … LIMIT` of a read by seq, and its parameters; `mark` is
    the driver's placeholder. With `newest` the rows come newest first: callers reverse.
    `through` is the seq where the page stops (see `page_end`); `upto` the read's
    watermark (see `SqlReader._horizon`); `retained` hides what has expired."""
    clause = f" WHERE seq > {mark}{retained.sql()}"
    params: list[object] = [after, *retained.params]
    if upto is not None:
        clause += f" AND seq <= {mark}"
        params.append(upto)
    if topic is not None:
        clause += f" AND topic = {mark}"
        params.append(topic)
    if through is not None:
        clause += f" AND seq {'>=' if newest else '<='} {mark}"
        params.append(through)
    return f"{clause} ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT {mark}", [*params, limit]


def page_end(sizes: Iterable[tuple[int, int]], max_bytes: int) -> int | None:
    """From `(seq, payload size)` of a page's rows in its order, the seq of the last row that
    keeps the page within `max_bytes` (the first row always: a page is never empty while
    rows remain), or None when there are no rows. Read before the rows themselves, so a
    reader never holds, nor parses, more than about `max_bytes` of payloads at once."""
    total, end = 0, None
    for seq, size in sizes:
        if end is not None and total + size > max_bytes:
            break
        total, end = total + size, seq
    return end


def read_page(
    conn: Connection,
    mark: str,
    select: str,
    sizes: str | None = None,
    *,
    after: int,
    limit: int,
    newest: bool,
    topic: str | None = None,
    max_bytes: int | None = None,
    upto: int | None = None,
    retained: Retained = EVERYTHING,
) -> list[Any]:
    """The rows of one read by seq, oldest first: `select` is the `SELECT … FROM table` of
    the rows, `sizes` that of `(seq, payload size)`, read first when there is a `max_bytes`."""
    window = partial(
        page,
        mark,
        after=after,
        limit=limit,
        newest=newest,
        topic=topic,
        upto=upto,
        retained=retained,
    )
    through = None
    if sizes is not None and max_bytes is not None:
        clause, params = window()
        through = page_end(conn.execute(sizes + clause, params), max_bytes)
    clause, params = window(through=through)
    rows = conn.execute(select + clause, params).fetchall()
    if newest:
        rows.reverse()
    return rows


def first_recent(probe: Callable[[int], tuple[int, bool]], lo: int, hi: int) -> int:
    """The seq where the recent rows begin, between `lo` and `hi` (one past the newest row),
    by bisection: O(log n) lookups by primary key instead of a scan of `received_at`.

    `probe(seq)` gives the first row at or after `seq` (there is one: `seq` is never past
    the newest row) and whether it is recent. Rows are stored in seq order, so `received_at`
    grows with seq; only a wall clock stepped back (SQLite) or a batch that was slow to
    commit (PostgreSQL: several bridges commit in any order) breaks that, by about as long
    as the step or the delay, at the window's edge.
    """
    while lo < hi:
        mid = (lo + hi) // 2
        seq, recent = probe(mid)
        if recent:
            hi = mid
        else:
            lo = min(seq + 1, hi)
    return lo
