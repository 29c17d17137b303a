"""Search over HTTP (issue 11): `/events` with every filter, `/events/histogram`, and
`/events/stream` with a query, against real stores filled with random events; every
refusal a 422 naming its parameter, hostile queries never a 500."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import ApiSettings
from api.stream import encoded, wanted
from bridge.event import Event
from bridge.query import Query, QueryError, matches, parse_query
from bridge.store import StoredEvent, StoreWriter, open_writer, parse_store_url
from logagg.views import server_sent_events
from tests.helpers import NOW, START, examples, nowhere, query_params, random_events, serving

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="module", params=BACKENDS)
def module_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_module_url"))
    return f"sqlite:///{tmp_path_factory.mktemp('search-api') / 'store.db'}"


@pytest.fixture(scope="module")
def everything(module_store_url: str) -> list[StoredEvent]:
    """The module's store, filled once with 400 random events (and duplicates): every
    stored event, the brute force's input."""
    store = open_writer(parse_store_url(module_store_url))
    try:
        events = random_events(400, seed=12)
        for start in range(0, len(events), 64):
            store.record(events[start : start + 64] + events[start : start + 2], [])
        return store.events(topic=None, after=0, limit=10_000)
    finally:
        store.close()


@pytest.fixture(scope="module")
def client(module_store_url: str, everything: list[StoredEvent]) -> Iterator[httpx.Client]:
    """A sidecar reading the module's store (no broker: reads never need one)."""
    config = ApiSettings(broker=nowhere(), store=parse_store_url(module_store_url))
    with serving(config) as served:
        yield served


def expected(params: list[tuple[str, str]], everything: list[StoredEvent]) -> list[StoredEvent]:
    """What a brute-force filter over every stored event finds, in the query's order."""
    query = parse_query(params, now=datetime.now(UTC))
    assert isinstance(query, Query), query
    found = [e for e in everything if matches(query, e)]
    return sorted(found, key=lambda e: e.seq, reverse=query.order == "desc")


def refused(answer: httpx.Response) -> str:
    """The parameter a 422 names (FastAPI's shape: detail[0].loc is ["query", name])."""
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert problem["loc"][0] == "query", problem
    assert problem["msg"], problem
    return str(problem["loc"][1])


def all_pages(client: httpx.Client, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every event of a query, following `next` until a page comes back empty."""
    seen: list[dict[str, Any]] = []
    cursor: list[tuple[str, str]] = []
    for _ in range(500):
        answer = client.get("/events", params=(*params, *cursor))
        assert answer.status_code == 200, answer.text
        page = answer.json()
        if not page["events"]:
            return seen
        seen += page["events"]
        assert page["next_after"] == page["events"][-1]["seq"]
        cursor = [("next", page["next"])]
    raise AssertionError("paging did not end")


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(params=query_params())
def test_events_pages_are_what_brute_force_finds(
    client: httpx.Client, everything: list[StoredEvent], params: list[tuple[str, str]]
) -> None:
    # Pages of at least 25: the paging is what is tested, not 400 round trips.
    params = [(k, str(max(int(v), 25)) if k == "limit" else v) for k, v in params]
    if isinstance(parse_query(params, now=NOW), QueryError):
        assert client.get("/events", params=tuple(params)).status_code == 422
        return
    seqs = [e["seq"] for e in all_pages(client, params)]
    assert seqs == [e.seq for e in expected(params, everything)]


@pytest.mark.parametrize(
    "params",
    [
        [("topic", "a/b")],
        [("topic", "a/#")],
        [("topic", "+/b"), ("order", "desc")],
        [("since", (START + timedelta(days=1)).isoformat()), ("until", "2026-11-30T13:00:00Z")],
        [("until", "2026-11-29T13:00:00%2B01:00".replace("%2B", "+"))],
        [("since", "3d")],
        [("source", "Édge")],
        [("q", "TIMEOUT")],
        [("q", "cafe -disk")],
        [("q", '"login failed"')],
        [("q", "tim*")],
        [("field", "level:error"), ("field", "http.status:503")],
        [("field", 'http.status:"503"')],
        [("after", "200"), ("limit", "7")],
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p),
)
def test_each_filter_finds_what_brute_force_finds(
    client: httpx.Client, everything: list[StoredEvent], params: list[tuple[str, str]]
) -> None:
    found = expected(params, everything)
    assert found, "a filter the sample never matches proves nothing"
    assert [e["seq"] for e in all_pages(client, params)] == [e.seq for e in found]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"topic": ""}, "topic"),
        ({"topic": "a/#/b"}, "topic"),
        ({"topic": "a+/b"}, "topic"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-12-01T14:02:00"}, "since"),
        ({"since": "9999d"}, "since"),
        ({"until": "2026-12-01 14:02:00 01:00"}, "until"),
        ({"since": "1h", "until": "2h"}, "since"),
        ({"source": ""}, "source"),
        ({"q": ""}, "q"),
        ({"q": "-debug"}, "q"),
        ({"q": "* ( )"}, "q"),
        ({"field": "level"}, "field"),
        ({"field": "a..b:1"}, "field"),
        ({"field": ":x"}, "field"),
        ({"order": "up"}, "order"),
        ({"after": "-1"}, "after"),
        ({"after": str(2**63)}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"next": "nope"}, "next"),
        ({"topc": "a"}, "topc"),
        ({"last": "0"}, "last"),
    ],
)
def test_each_refusal_is_a_422_naming_the_parameter(
    client: httpx.Client, params: dict[str, str], named: str
) -> None:
    assert refused(client.get("/events", params=params)) == named


def test_repeated_and_overlong_parameters_are_refused(client: httpx.Client) -> None:
    assert refused(client.get("/events", params=[("topic", "a"), ("topic", "b")])) == "topic"
    assert refused(client.get("/events", params=[("field", "level:info")] * 11)) == "field"
    for name in ("topic", "q", "source", "since", "field", "next"):
        assert refused(client.get("/events", params={name: "x" * 10_000})) == name


def test_a_cursor_is_bound_to_its_filters_and_order(client: httpx.Client) -> None:
    first = client.get("/events", params={"topic": "a/#", "limit": 2}).json()
    cursor = first["next"]
    assert client.get("/events", params={"topic": "a/#", "next": cursor}).status_code == 200
    other = client.get("/events", params={"topic": "a/b", "next": cursor})
    assert refused(other) == "next"
    assert refused(client.get("/events", params={"next": cursor})) == "next"
    desc = {"topic": "a/#", "order": "desc", "next": cursor}
    assert "order=asc" in client.get("/events", params=desc).json()["detail"][0]["msg"]
    edited = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    assert refused(client.get("/events", params={"topic": "a/#", "next": edited})) == "next"
    # `limit` may change between pages.
    more = client.get("/events", params={"topic": "a/#", "next": cursor, "limit": 5}).json()
    assert len(more["events"]) == 5
    assert more["events"][0]["seq"] > first["events"][-1]["seq"]


def test_last_gives_the_newest_matches_and_refuses_a_cursor(
    client: httpx.Client, everything: list[StoredEvent]
) -> None:
    params = [("q", "timeout"), ("last", "3")]
    newest = expected([("q", "timeout")], everything)[-3:]
    page = client.get("/events", params=tuple(params)).json()
    assert [e["seq"] for e in page["events"]] == [e.seq for e in newest]
    after = client.get("/events", params={"q": "timeout", "next": page["next"]}).json()
    assert after["events"] == []
    desc = client.get("/events", params=[*params, ("order", "desc")]).json()
    assert [e["seq"] for e in desc["events"]] == [e.seq for e in reversed(newest)]
    with_cursor = [*params, ("next", page["next"])]
    assert refused(client.get("/events", params=tuple(with_cursor))) == "last"


def test_hostile_queries_are_refused_or_found_never_a_500(
    client: httpx.Client, everything: list[StoredEvent]
) -> None:
    """SQL and FTS syntax is only text; a path that does not exist or names an object
    matches nothing."""
    hostile = [
        "'; DROP TABLE events; --",
        '" OR 1=1 --',
        'timeout"',
        '"unbalanced phrase',
        "NEAR(timeout disk) OR AND NOT",
        "col:timeout ^disk {x} [y]",
        "time* OR -café",
        "%_\\ LIKE '%'",
        "x" * 1024,
        "timeout " * 100,
        "a" + "\u0301" * 1000,
        "東京 ﬁle İstanbul",
    ]
    for q in hostile:
        answer = client.get("/events", params={"q": q, "limit": 1000})
        assert answer.status_code in (200, 422), (q, answer.text)
        if answer.status_code == 200:
            found = [e["seq"] for e in answer.json()["events"]]
            assert found == [e.seq for e in expected([("q", q), ("limit", "1000")], everything)]
    for field in ("nope.deeper.still:1", "http:200", "tags:x", "level.nested:error", "a:"):
        answer = client.get("/events", params={"field": field})
        assert answer.status_code in (200, 422), (field, answer.text)
        if answer.status_code == 200:
            found = [e["seq"] for e in answer.json()["events"]]
            assert found == [e.seq for e in expected([("field", field)], everything)]
    assert client.get("/events", params={"field": "http:200"}).json()["events"] == []
    assert client.get("/events", params={"q": "x" * 10_000}).status_code == 422


def test_an_empty_asc_page_has_a_cursor_to_poll(
    sidecar_store: tuple[httpx.Client, StoreWriter],
) -> None:
    """An `asc` page says `next` even when empty, and polling it finds what arrives later,
    unaffected by new events of other queries; an empty `desc` page has none."""
    client, store = sidecar_store
    store.record([stamped("old-1", "nothing here")], [])
    params = {"q": "needle", "topic": "t/+"}
    page = client.get("/events", params=params).json()
    assert (page["events"], page["next_after"]) == ([], None)
    assert page["next"]
    store.record([stamped("hay", "hay"), stamped("n1", "a needle"), stamped("n2", "needle")], [])
    polled = client.get("/events", params={**params, "next": page["next"]}).json()
    assert [e["event_id"] for e in polled["events"]] == ["n1", "n2"]
    again = client.get("/events", params={**params, "next": polled["next"]}).json()
    assert again["events"] == []
    assert again["next"]
    assert (
        client.get("/events", params={**params, "order": "desc", "q": "nothing"}).json()["next"]
        is not None
    )
    assert (
        client.get("/events", params={**params, "order": "desc", "q": "absent"}).json()["next"]
        is None
    )


# --- /events/histogram -----------------------------------------------------------------------


def histogram(client: httpx.Client, params: dict[str, str]) -> dict[str, Any]:
    answer = client.get("/events/histogram", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(params=query_params(), interval=st.sampled_from(["1h", "7h", "1d", "30m", None]))
def test_histogram_adds_up_to_the_query_total(
    client: httpx.Client,
    everything: list[StoredEvent],
    params: list[tuple[str, str]],
    interval: str | None,
) -> None:
    filters = [(k, v) for k, v in params if k not in ("order", "after", "limit")]
    if isinstance(parse_query(filters, now=NOW), QueryError):
        return
    asked = filters + ([("interval", interval)] if interval else [])
    answer = client.get("/events/histogram", params=tuple(asked))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    found = expected(filters, everything)
    assert body["total"] == sum(b["count"] for b in body["buckets"]) == len(found)
    if interval:
        assert body["interval"] == interval
    starts = [datetime.fromisoformat(b["start"]) for b in body["buckets"]]
    step = timedelta(seconds=parse_seconds(body["interval"]))
    assert all(b - a == step for a, b in itertools.pairwise(starts)), "not contiguous"
    for event in found:
        moment = datetime.fromisoformat(event.timestamp)
        assert any(s <= moment < s + step for s in starts)


def parse_seconds(interval: str) -> int:
    return int(interval[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[interval[-1]]


def test_histogram_fills_the_range_and_chooses_about_60_buckets(
    client: httpx.Client, everything: list[StoredEvent]
) -> None:
    hour = {"since": "2026-11-29T10:00:00Z", "until": "2026-11-29T11:00:00Z"}
    body = histogram(client, hour)
    assert body["interval"] == "1m"
    assert len(body["buckets"]) == 60
    assert body["buckets"][0]["start"] == "2026-11-29T10:00:00Z"
    assert body["buckets"][-1]["start"] == "2026-11-29T10:59:00Z"
    assert body["total"] == len(expected(list(hour.items()), everything))

    for since, until, interval, count in [
        ("2026-11-29T00:00:00Z", "2026-11-30T00:00:00Z", "30m", 48),
        ("2026-11-28T00:00:00Z", "2026-12-05T00:00:00Z", "3h", 56),
        ("2026-11-29T10:00:00Z", "2026-11-29T10:15:00Z", "15s", 60),
        ("2026-11-29T10:00:30Z", "2026-11-29T10:01:00Z", "1s", 30),
        ("2024-01-01T00:00:00Z", "2026-12-01T00:00:00Z", "1d", 1065),
    ]:
        body = histogram(client, {"since": since, "until": until})
        assert (body["interval"], len(body["buckets"])) == (interval, count), (since, until)

    # Without since and until, the range is the matches' own.
    whole = histogram(client, {"topic": "a/b"})
    matched = expected([("topic", "a/b")], everything)
    assert whole["total"] == len(matched)
    first, last = min(e.timestamp for e in matched), max(e.timestamp for e in matched)
    assert whole["buckets"][0]["count"] > 0
    assert whole["buckets"][-1]["count"] > 0
    assert datetime.fromisoformat(whole["buckets"][0]["start"]) <= datetime.fromisoformat(first)
    last_start = datetime.fromisoformat(whole["buckets"][-1]["start"])
    assert last_start <= datetime.fromisoformat(last) < last_start + timedelta(hours=2)
    assert 20 <= len(whole["buckets"]) <= 61, whole["interval"]

    # With since alone, the range reaches now, or the latest match if it is stamped later.
    asked = datetime.now(UTC)
    recent = histogram(client, {"since": "20h", "interval": "1h"})
    found = expected([("since", "20h")], everything)
    assert recent["total"] == len(found) > 0
    starts = [datetime.fromisoformat(b["start"]) for b in recent["buckets"]]
    assert starts[0] <= asked - timedelta(hours=20) < starts[0] + timedelta(hours=1)
    latest = max([asked, *(datetime.fromisoformat(e.timestamp) for e in found)])
    assert starts[-1] <= latest < starts[-1] + timedelta(hours=1) + timedelta(seconds=5)

    nothing = histogram(client, {"q": "absentword"})
    assert nothing == {"interval": "1s", "buckets": [], "total": 0}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"interval": "0s"}, "interval"),
        ({"interval": "2d"}, "interval"),
        ({"interval": "90000s"}, "interval"),
        ({"interval": "1w"}, "interval"),
        ({"interval": "1.5h"}, "interval"),
        (
            {"interval": "1s", "since": "2026-11-01T00:00:00Z", "until": "2026-11-02T00:00:00Z"},
            "interval",
        ),
        ({"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T00:00:00Z"}, "interval"),
        ({"limit": "5"}, "limit"),
        ({"order": "desc"}, "order"),
        ({"q": "-x"}, "q"),
        ({"field": "nope"}, "field"),
    ],
)
def test_histogram_refusals_name_the_parameter(
    client: httpx.Client, params: dict[str, str], named: str
) -> None:
    assert refused(client.get("/events/histogram", params=params)) == named


def test_histogram_interval_is_written_in_its_largest_unit(client: httpx.Client) -> None:
    day = {"since": "2026-11-29T00:00:00Z", "until": "2026-11-30T00:00:00Z"}
    assert histogram(client, {**day, "interval": "3600s"})["interval"] == "1h"
    assert histogram(client, {**day, "interval": "90s"})["interval"] == "90s"
    assert histogram(client, {**day, "interval": "1440m"})["interval"] == "1d"


def test_histogram_at_the_edges_of_time(client: httpx.Client) -> None:
    """Buckets at year 1 and 9999 are counted, not overflowed into a 500."""
    early = {"since": "0001-01-01T00:00:00Z", "until": "0001-01-01T00:01:00Z"}
    assert histogram(client, {**early, "interval": "1s"})["total"] == 0
    assert refused(client.get("/events/histogram", params={**early, "interval": "7s"})) == (
        "interval"
    )
    late = {"since": "9999-12-31T23:59:00Z", "until": "9999-12-31T23:59:59.999999Z"}
    assert len(histogram(client, {**late, "interval": "1s"})["buckets"]) == 60


# --- Stores written during the test: polling, streams, timeouts --------------------------------


@pytest.fixture(params=BACKENDS)
def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each backend."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def sidecar_store(fresh_store_url: str) -> Iterator[tuple[httpx.Client, StoreWriter]]:
    """A sidecar on a store this test writes to directly (no broker, no bridge)."""
    url = parse_store_url(fresh_store_url)
    store = open_writer(url)
    try:
        with serving(ApiSettings(broker=nowhere(), store=url)) as served:
            yield served, store
    finally:
        store.close()


def stamped(event_id: str, msg: str, topic: str = "t/a", **payload: Any) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp=datetime.now(UTC),
        source="probe",
        payload={"msg": msg, **payload},
    )


def sse(response: httpx.Response) -> Iterator[tuple[str | None, dict[str, Any] | None]]:
    """`(id, event)` of each Server-Sent Event; an id alone gives None."""
    for event_id, data in server_sent_events(response.iter_lines()):
        yield event_id, None if data is None else json.loads(data)


STREAM_SAMPLE = encoded(
    [
        StoredEvent(n, e.topic, e.event_id, e.timestamp.isoformat(), e.source, e.payload, "")
        for n, e in enumerate(random_events(300, seed=13), 1)
    ]
)


@settings(max_examples=examples(200), deadline=None)
@given(params=query_params())
def test_a_streams_filter_is_matches(params: list[tuple[str, str]]) -> None:
    """The stream's shortcuts (a topic compared as a string, text decided on a shared
    document) take exactly the frames `matches` takes."""
    filters = [
        (k, v) for k, v in params if k in ("topic", "since", "until", "source", "q", "field")
    ]
    query = parse_query(filters, now=NOW)
    if isinstance(query, QueryError):
        return
    want = wanted(query)
    taken = [f.seq for f in STREAM_SAMPLE if want is None or want(f)]
    assert taken == [f.seq for f in STREAM_SAMPLE if matches(query, f.event)]


def test_stream_with_a_query_sends_only_matches_and_resumes(
    sidecar_store: tuple[httpx.Client, StoreWriter],
) -> None:
    client, store = sidecar_store
    store.record([stamped("before", "a failure before", level="error")], [])
    params = {"q": "failure", "field": "level:error", "topic": "t/+"}
    with client.stream("GET", "/events/stream", params=params, timeout=10) as response:
        assert response.status_code == 200
        events = sse(response)
        start, nothing = next(events)
        assert nothing is None
        assert start is not None
        store.record(
            [
                stamped("e1", "a failure", level="error"),
                stamped("w1", "a failure", level="warn"),
                stamped("o1", "a failure", topic="other", level="error"),
                stamped("i1", "all fine", level="error"),
                stamped("e2", "FAILURE again", topic="t/b", level="error"),
            ],
            [],
        )
        started = time.monotonic()
        got = [next(events) for _ in range(2)]
        assert time.monotonic() - started < 5
    assert [e["event_id"] for _, e in got if e] == ["e1", "e2"]
    first_seq = got[0][0]

    # Resumed from Last-Event-ID, the stream searches the store from there.
    resumed = {"Last-Event-ID": "0"}
    with client.stream("GET", "/events/stream", params=params, headers=resumed) as response:
        events = sse(response)
        got = [next(events) for _ in range(3)]
    assert [e["event_id"] for _, e in got if e] == ["before", "e1", "e2"]
    assert first_seq is not None
    with client.stream(
        "GET", "/events/stream", params=params, headers={"Last-Event-ID": first_seq}
    ) as response:
        _, after_first = next(sse(response))
    assert after_first is not None
    assert after_first["event_id"] == "e2"


def test_stream_last_counts_matches_only(sidecar_store: tuple[httpx.Client, StoreWriter]) -> None:
    client, store = sidecar_store
    store.record([stamped(f"x{i}", "noise" if i % 2 else "signal") for i in range(10)], [])
    with client.stream("GET", "/events/stream", params={"q": "signal", "last": 2}) as response:
        events = sse(response)
        got = [next(events) for _ in range(3)]
    assert got[0][1] is None
    assert [e["event_id"] for _, e in got[1:] if e] == ["x6", "x8"]


def test_stream_refuses_a_bad_query(sidecar_store: tuple[httpx.Client, StoreWriter]) -> None:
    client, _ = sidecar_store
    assert refused(client.get("/events/stream", params={"q": "-x"})) == "q"
    assert refused(client.get("/events/stream", params={"limit": "5"})) == "limit"
    assert refused(client.get("/events/stream", params={"since": "2026"})) == "since"


def test_query_timeout_is_a_503_with_the_reason(fresh_store_url: str) -> None:
    """A field no event has reads every payload: given 1 ms, the read is stopped."""
    url = parse_store_url(fresh_store_url)
    store = open_writer(url)
    try:
        events = random_events(10_000, seed=3)
        for start in range(0, len(events), 1000):
            store.record(events[start : start + 1000], [])
        config = ApiSettings(broker=nowhere(), store=url, query_timeout_s=0.001)
        with serving(config) as client:
            for path in ("/events", "/events/histogram"):
                answer = client.get(path, params={"field": "nowhere:1"})
                assert answer.status_code == 503, (path, answer.status_code)
                assert "timeout" in answer.json()["detail"], answer.text
    finally:
        store.close()
