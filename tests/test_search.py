"""Search, the store's side (issue 11): each store finds what the brute-force reference
finds, page after page, on random events and random queries, and its histogram adds up."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from bridge.event import Event
from bridge.query import Query, QueryError, matches, parse_query, reference_page
from bridge.store import StoredEvent, StoreWriter, open_writer, parse_store_url
from tests.conftest import PG_TEST_URL

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=3)
TOPICS = ["auth.prod", "auth/dev", "a/b/c", "a/b", "a/x/c", "billing.eu"]
SOURCES = ["api-1", "api-2", "worker", "Édge"]
# A small vocabulary so random queries hit: mixed case, diacritics, digits, a prefix family.
WORDS = ["timeout", "Timeout", "time", "timer", "café", "CAFE", "résumé", "user42", "disk"]
WORDS += ["full", "login", "failed", "ok", "naïve", "straße", "strasse", "retry", "x"]
LEVELS = ["info", "info", "warn", "error"]
STATUSES: list[Any] = [200, 200, 503, 503.0, "503", 404, None]
OFFSETS = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-7, minutes=-30))]
FILTERS = ["a/+/c", "a/#", "+/b", "a/b", "#", "auth.prod", "+", "a/+"]


def random_events(count: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    events = []
    for i in range(count):
        when = START + timedelta(
            seconds=rnd.randrange(3 * 86400), microseconds=rnd.randrange(10**6)
        )
        payload: dict[str, Any] = {
            "msg": " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(1, 8))),
            "level": rnd.choice(LEVELS),
        }
        status = rnd.choice(STATUSES)
        if status is not None:
            payload["http"] = {"status": status, "path": f"/v1/{rnd.choice(WORDS)}"}
        if rnd.random() < 0.2:
            payload["tags"] = [rnd.choice(WORDS), {"deep": rnd.choice(WORDS)}]
        if rnd.random() < 0.1:
            payload["level"] = {"nested": "error"}
        events.append(
            Event(
                topic=rnd.choice(TOPICS),
                event_id=f"{rnd.choice(WORDS)}-{i}",
                timestamp=when.astimezone(rnd.choice(OFFSETS)),
                source=rnd.choice(SOURCES),
                payload=payload,
            )
        )
    return events


@pytest.fixture(scope="module")
def pg_module_url(postgres_reachable: None) -> Iterator[str]:
    """A PostgreSQL schema for this module's store, dropped afterwards."""
    schema = f"logagg_search_{uuid.uuid4().hex[:12]}"
    yield f"{PG_TEST_URL}{'&' if '?' in PG_TEST_URL else '?'}schema={schema}"
    with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StoreWriter, list[StoredEvent]]]:
    """One store per backend, filled once with 400 random events (and their duplicates),
    and every stored event read back: the reference's input."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("pg_module_url"))
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('search') / 'store.db'}"
    store = open_writer(parse_store_url(url))
    events = random_events(400, seed=11)
    for start in range(0, len(events), 64):
        store.record(events[start : start + 64] + events[start : start + 3], [])
    everything = store.events(topic=None, after=0, limit=10_000)
    assert len(everything) == len(events)
    yield store, everything
    store.close()


def query_params() -> st.SearchStrategy[list[tuple[str, str]]]:
    moment = st.integers(0, 3 * 86400).map(
        lambda s: (
            (START + timedelta(seconds=s)).astimezone(timezone(timedelta(hours=2))).isoformat()
        )
    )
    word = st.sampled_from([*WORDS, "tim*", "caf*", "nothing", "user", "42"])
    clause = st.one_of(
        word,
        word.map(lambda w: f"-{w.rstrip('*')}"),
        st.lists(st.sampled_from(WORDS), min_size=2, max_size=3).map(
            lambda ws: f'"{" ".join(ws)}"'
        ),
    )
    field = st.sampled_from(
        [
            "level:error",
            "level:info",
            "http.status:503",
            'http.status:"503"',
            "http.status:404",
            "http.path:/v1/disk",
            "nope.path:1",
            "level.nested:error",
            "http:200",
        ]
    )
    optional = {
        "topic": st.sampled_from(TOPICS + FILTERS),
        "since": moment,
        "until": moment,
        "source": st.sampled_from(SOURCES),
        "q": st.lists(clause, min_size=1, max_size=3).map(" ".join),
        "order": st.sampled_from(["asc", "desc"]),
        "after": st.integers(0, 300).map(str),
    }
    chosen = st.fixed_dictionaries({}, optional=optional).map(lambda d: list(d.items()))
    fields = st.lists(field, max_size=2).map(lambda fs: [("field", f) for f in fs])
    limit = st.integers(1, 60).map(lambda n: [("limit", str(n))])
    return st.tuples(chosen, fields, limit).map(lambda t: t[0] + t[1] + t[2])


def parsed(params: list[tuple[str, str]]) -> Query | None:
    query = parse_query(params, now=NOW)
    return None if isinstance(query, QueryError) else query


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=query_params())
def test_every_page_is_what_brute_force_finds(
    stored: tuple[StoreWriter, list[StoredEvent]], params: list[tuple[str, str]]
) -> None:
    store, everything = stored
    query = parsed(params)
    if query is None:  # e.g. since after until, or only exclusions: the parser's tests
        return
    expected = [e for e in everything if matches(query, e)]
    expected.sort(key=lambda e: e.seq, reverse=query.order == "desc")
    seen: list[StoredEvent] = []
    for _ in range(len(everything) + 2):
        page = store.search(query)
        assert page == reference_page(query, everything)
        if not page:
            break
        seen += page
        follow = parsed([*params, ("next", query.next_cursor(page[-1].seq))])
        assert follow is not None
        query = follow
    assert seen == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=query_params(), interval_s=st.sampled_from([1, 60, 3600, 7 * 3600, 86400]))
def test_histogram_counts_what_the_query_matches(
    stored: tuple[StoreWriter, list[StoredEvent]], params: list[tuple[str, str]], interval_s: int
) -> None:
    store, everything = stored
    query = parsed(params)
    if query is None:
        return
    found = [e for e in everything if matches(query, e)]
    expected = Counter(
        int(datetime.fromisoformat(e.timestamp).timestamp() // interval_s) * interval_s
        for e in found
    )
    buckets = store.histogram(query, interval_s)
    assert [b.start for b in buckets] == sorted(b.start for b in buckets)
    assert {int(b.start.timestamp()): b.count for b in buckets} == dict(expected)
    assert all(b.start.tzinfo is not None and b.count > 0 for b in buckets)
    span = store.time_span(query)
    moments = [datetime.fromisoformat(e.timestamp) for e in found]
    assert span == ((min(moments), max(moments)) if moments else None)


def test_a_stored_event_is_found_at_once(
    stored: tuple[StoreWriter, list[StoredEvent]],
) -> None:
    """The index is written in the event's own transaction: no lag, no second step."""
    store, _ = stored
    event = Event(
        topic="fresh/topic",
        event_id="just-now",
        timestamp=NOW,
        source="probe",
        payload={"msg": "Zyzzyva appeared", "level": "error"},
    )
    store.record([event], [])
    query = parsed([("q", "zyzzyva"), ("field", "level:error"), ("topic", "fresh/+")])
    assert query is not None
    assert [e.event_id for e in store.search(query)] == ["just-now"]


def test_max_bytes_cuts_a_page_but_keeps_one(
    stored: tuple[StoreWriter, list[StoredEvent]],
) -> None:
    store, everything = stored
    query = parsed([("limit", "50")])
    assert query is not None
    assert store.search(query, max_bytes=1) == everything[:1]
    assert len(store.search(query, max_bytes=10**9)) == 50


def test_wildcard_free_topic_keeps_its_old_meaning(
    stored: tuple[StoreWriter, list[StoredEvent]],
) -> None:
    """`topic=a/b` is that topic only, as `/events?topic=` always was."""
    store, everything = stored
    query = parsed([("topic", "a/b"), ("limit", "1000")])
    assert query is not None
    assert store.search(query) == [e for e in everything if e.topic == "a/b"]
