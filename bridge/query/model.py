"""The query over stored events: one typed value, parsed from the strings HTTP query
parameters and CLI flags give, with an error naming the parameter when it is refused.

Every filter is optional and all of them must hold. Results come in seq order (arrival,
as `/events` has always read), oldest first unless `order=desc`; a page's `next` cursor
continues it. `matches` and `reference_page` are the brute-force semantics the stores'
translations are tested against.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from bridge.event import _UNSTORABLE_CHAR, MAX_NAME_LENGTH
from bridge.query.cursor import MAX_SEQ, Cursor, decode_cursor, filters_digest
from bridge.query.fields import MAX_FIELDS, FieldFilter, parse_field
from bridge.query.text import Phrase, TextQuery, document, parse_text, searchable, text_matches
from bridge.query.times import parse_time
from bridge.query.topic import TopicFilter, parse_topic

Order = Literal["asc", "desc"]
T = TypeVar("T")
# As GET /events: `limit` defaults to 100; the sidecar's `read_limit_max` (default 1000)
# is passed as `max_limit`.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMETERS = ("topic", "since", "until", "source", "q", "field", "order", "after", "next", "limit")
# No parameter's text is longer, whatever its own bounds.
MAX_PARAMETER_CHARS = 1024


@dataclass(frozen=True, slots=True)
class QueryError:
    """Why a query was refused: `parameter` is its name, as the client sent it."""

    parameter: str
    reason: str

    def __str__(self) -> str:
        return f"{self.parameter}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. `since` and `until` are in UTC, resolved against `now` (the first
    page's clock, which its cursors carry); `position` is the seq a cursor continues from."""

    now: datetime
    topic: TopicFilter | None = None
    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None
    text: TextQuery | None = None
    fields: tuple[FieldFilter, ...] = ()
    order: Order = "asc"
    after: int = 0
    limit: int = DEFAULT_LIMIT
    position: int | None = None

    def canonical(self) -> str:
        """The filters and order, one way of writing them: what a cursor is bound to."""
        return json.dumps(
            [
                self.topic and self.topic.text,
                self.since and self.since.isoformat(),
                self.until and self.until.isoformat(),
                self.source,
                self.text and [_phrases(self.text.include), _phrases(self.text.exclude)],
                [[f.path, _typed(f.value)] for f in self.fields],
                self.order,
                self.after,
            ]
        )

    def next_cursor(self, last_seq: int) -> str:
        """The `next` of a page of this query whose last event is `last_seq`."""
        digest = filters_digest(self.canonical())
        return Cursor(last_seq, self.order == "desc", self.now, digest).encode()


def _phrases(phrases: Sequence[Phrase]) -> list[tuple[tuple[str, ...], bool]]:
    return [(p.tokens, p.prefix) for p in phrases]


def _typed(value: str | Decimal | bool | None) -> list[str]:
    if isinstance(value, Decimal):  # 503, 503.0 and 5.03e2 are one filter
        return ["number", str(value.normalize())]
    return ["string", value] if isinstance(value, str) else ["json", json.dumps(value)]


def parse_query(
    params: Iterable[tuple[str, str]],
    *,
    now: datetime,
    max_limit: int = MAX_LIMIT,
    default_limit: int = DEFAULT_LIMIT,
) -> Query | QueryError:
    """The query `params` (name, value pairs, as in a query string; only `field` may be
    repeated) make, or the first thing wrong with them. `now` resolves relative times,
    unless a cursor carries the clock of the query's first page."""
    given: dict[str, str] = {}
    field_texts: list[str] = []
    for name, value in params:
        if name not in PARAMETERS:
            return QueryError(
                name, f"is not a query parameter (these are: {', '.join(PARAMETERS)})"
            )
        if len(value) > MAX_PARAMETER_CHARS:
            return QueryError(name, f"is {len(value)} characters, limit {MAX_PARAMETER_CHARS}")
        if _UNSTORABLE_CHAR.search(value):
            return QueryError(name, "must not contain NUL or unpaired surrogates")
        if name == "field":
            field_texts.append(value)
            if len(field_texts) > MAX_FIELDS:
                return QueryError(name, f"given more than {MAX_FIELDS} times")
        elif name in given:
            return QueryError(name, "given more than once")
        else:
            given[name] = value
    cursor: Cursor | None = None
    if "next" in given:
        decoded = decode_cursor(given["next"])
        if isinstance(decoded, str):
            return QueryError("next", decoded)
        cursor, now = decoded, decoded.now
    query = _parse_filters(given, field_texts, now, max_limit, default_limit)
    if isinstance(query, QueryError) or cursor is None:
        return query
    if cursor.descending != (query.order == "desc"):
        return QueryError(
            "next",
            f"was made for the other order: pass order={'desc' if cursor.descending else 'asc'}",
        )
    if cursor.digest != filters_digest(query.canonical()):
        return QueryError(
            "next", "was made for other filters: pass the same filters as the first page"
        )
    return replace(query, position=cursor.seq)


def _parse_filters(
    given: dict[str, str], field_texts: list[str], now: datetime, max_limit: int, default_limit: int
) -> Query | QueryError:
    """Each parameter in the order of PARAMETERS: the first refused is the one named."""
    if isinstance(topic := _optional(given, "topic", parse_topic), QueryError):
        return topic
    if isinstance(since := _optional(given, "since", partial(parse_time, now=now)), QueryError):
        return since
    if isinstance(until := _optional(given, "until", partial(parse_time, now=now)), QueryError):
        return until
    source = given.get("source")
    if source is not None and not 0 < len(source) <= MAX_NAME_LENGTH:
        return QueryError("source", f"must be 1 to {MAX_NAME_LENGTH} characters")
    if isinstance(text := _optional(given, "q", parse_text), QueryError):
        return text
    fields = []
    for field_text in field_texts:
        if isinstance(parsed := parse_field(field_text), str):
            return QueryError("field", parsed)
        fields.append(parsed)
    order = given.get("order", "asc")
    if order not in ("asc", "desc"):
        return QueryError("order", "must be asc or desc")
    after = _integer(given.get("after", "0"), 0, MAX_SEQ)
    if isinstance(after, str):
        return QueryError("after", after)
    limit = _integer(given["limit"], 1, max_limit) if "limit" in given else default_limit
    if isinstance(limit, str):
        return QueryError("limit", limit)
    if since is not None and until is not None and since >= until:
        return QueryError("since", f"{since.isoformat()} is not before until ({until.isoformat()})")
    return Query(
        now=now,
        topic=topic,
        since=since,
        until=until,
        source=source,
        text=text,
        fields=tuple(fields),
        order="desc" if order == "desc" else "asc",
        after=after,
        limit=limit,
    )


def _optional(
    given: dict[str, str], name: str, parse: Callable[[str], T | str]
) -> T | QueryError | None:
    if name not in given:
        return None
    parsed = parse(given[name])
    return QueryError(name, parsed) if isinstance(parsed, str) else parsed


def _integer(text: str, low: int, high: int) -> int | str:
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(high)):
        return f"must be a whole number from {low} to {high}"
    value = int(text)
    return value if low <= value <= high else f"must be from {low} to {high}"


class Searchable(Protocol):
    """What the matcher reads of a stored event (as `StoredEvent` holds it)."""

    @property
    def seq(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


E = TypeVar("E", bound=Searchable)


def matches(query: Query, event: Searchable) -> bool:
    """Whether `event` passes every filter of `query` (paging aside): the reference the
    stores' translations must agree with."""
    moment = datetime.fromisoformat(event.timestamp)
    return (
        event.seq > query.after
        and (query.topic is None or query.topic.matches(event.topic))
        and (query.since is None or query.since <= moment)
        and (query.until is None or moment < query.until)
        and (query.source is None or event.source == query.source)
        and all(f.matches(event.payload) for f in query.fields)
        and (
            query.text is None
            or text_matches(
                query.text, document(searchable(event.event_id, event.source, event.payload))
            )
        )
    )


def reference_page(query: Query, events: Iterable[E]) -> list[E]:
    """The page `query` asks for from `events`, by brute force: matching events in seq
    order, after the cursor's position, at most `limit`."""
    found = sorted((e for e in events if matches(query, e)), key=lambda e: e.seq)
    if query.order == "desc":
        found.reverse()
    if query.position is not None:
        position = query.position
        found = [
            e for e in found if (e.seq < position if query.order == "desc" else e.seq > position)
        ]
    return found[: query.limit]
