"""Search's answers from a parsed query and a store (issue 11): a page with its `next`
cursor, and a histogram with its empty buckets filled in. The routes and
`logagg search --store` share them, so both page and count the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from bridge.query import Query, QueryError
from bridge.store import Bucket, StoredEvent, StoreReader

# Automatic histogram intervals, in seconds: round ones, from 1 s to 1 day.
LADDER = (
    *(1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800),
    *(3600, 7200, 10800, 21600, 43200, 86400),
)
MAX_INTERVAL_S = LADDER[-1]
# An automatic interval gives at most this many buckets (at least a third as many) over
# the range, unless the range is longer than this many days; no histogram has more than
# MAX_BUCKETS, empty ones included.
TARGET_BUCKETS = 60
MAX_BUCKETS = 10_000
INTERVAL_PATTERN = r"^[0-9]{1,6}[smhd]$"
_INTERVAL = re.compile(INTERVAL_PATTERN)
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICRO


class InvalidQuery(Exception):
    """A query refused with its reason (`error` names the parameter): a 422."""

    def __init__(self, error: QueryError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class Page:
    """A page of events and the cursor for the following one (None: there is none to ask
    for: a `desc` query read to its end)."""

    events: list[StoredEvent]
    next: str | None


def page(
    store: StoreReader, query: Query, *, max_bytes: int | None, last: int | None = None
) -> Page:
    """The page `query` asks for; with `last`, the newest `last` matching events instead
    (in `query`'s order), so that an `asc` page's `next` follows what comes after them.
    An empty `asc` page still has a `next`: polling it finds the events still to come."""
    if last is None:
        rows = store.search(query, max_bytes=max_bytes)
    else:
        newest = store.search(replace(query, order="desc", limit=last), max_bytes=max_bytes)
        rows = newest if query.order == "desc" else newest[::-1]
    if rows:
        return Page(rows, query.next_cursor(rows[-1].seq))
    if query.order == "asc":
        at = query.after if query.position is None else query.position
        return Page(rows, query.next_cursor(at))
    return Page(rows, None)


@dataclass(frozen=True, slots=True)
class Histogram:
    interval_s: int
    buckets: list[Bucket]

    @property
    def interval(self) -> str:
        return interval_text(self.interval_s)

    @property
    def total(self) -> int:
        return sum(b.count for b in self.buckets)


def parse_interval(text: str) -> int | str:
    """`text` (`30s`, `5m`, `1h`, `1d`) in seconds, or why it is refused."""
    if not _INTERVAL.fullmatch(text):
        return "must be a whole number of s, m, h or d, as in 30s, 5m, 1h, 1d"
    seconds = int(text[:-1]) * _UNIT_S[text[-1]]
    if not 1 <= seconds <= MAX_INTERVAL_S:
        return "must be from 1s to 1d"
    return seconds


def interval_text(seconds: int) -> str:
    """`seconds` in its largest whole unit: 60 is `1m`, 90 is `90s`."""
    unit = next(u for u, size in _UNIT_S.items() if seconds % size == 0)
    return f"{seconds // _UNIT_S[unit]}{unit}"


def auto_interval(span: timedelta) -> int:
    """The smallest interval of the ladder that covers `span` in TARGET_BUCKETS buckets."""
    return next((s for s in LADDER if span <= timedelta(seconds=s * TARGET_BUCKETS)), LADDER[-1])


def histogram(store: StoreReader, query: Query, interval_s: int | None) -> Histogram | QueryError:
    """The counts per bucket of `interval_s` (None: chosen from the ladder) of the events
    matching `query`, from the first bucket of its range to the last, empty ones included.

    The range is [since, until); a bound not given is the matches' earliest or latest
    timestamp, and with `since` alone it reaches now (later, if events are stamped in the
    future), so that every match is in a bucket: the total is the query's match count."""
    span = None if query.since and query.until else store.time_span(query)
    # In microseconds since the epoch: the latest timestamp plus one may not be a datetime.
    if query.since is not None:
        start = _micros(query.since)
    elif span is not None:
        start = _micros(span[0])
    else:  # nothing matches, and no `since` to start the empty buckets at
        return Histogram(interval_s or LADDER[0], [])
    if query.until is not None:
        end = _micros(query.until)
    else:
        ends = [start + 1] + ([_micros(span[1]) + 1] if span else [])
        end = max(*ends, _micros(query.now)) if query.since is not None else max(ends)
    interval = interval_s or auto_interval(timedelta(microseconds=end - start))
    step = interval * 1_000_000
    first = start // step * step
    last = (end - 1) // step * step
    count = (last - first) // step + 1
    if count > MAX_BUCKETS:
        return QueryError(
            "interval",
            f"the range holds {count:,} buckets of {interval_text(interval)}, limit"
            f" {MAX_BUCKETS:,}: take a longer interval or a shorter range (since, until)",
        )
    if first < _FIRST_MICROS:
        return QueryError(
            "interval", f"the first {interval_text(interval)} bucket would start before year 1"
        )
    counts = dict.fromkeys(range(first, last + 1, step), 0)
    counts.update((_micros(b.start), b.count) for b in store.histogram(query, interval))
    return Histogram(interval, [Bucket(_moment(at), n) for at, n in sorted(counts.items())])


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def _moment(micros: int) -> datetime:
    return _EPOCH + micros * _MICRO
