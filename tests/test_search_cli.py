"""`logagg search` and `logagg tail` with a query, in process (Typer's CliRunner), against a
sidecar on a real store and against the store itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

import logagg.search
from api import ApiSettings
from bridge.event import Event
from bridge.query import Query, matches, parse_query
from bridge.store import StoredEvent, StoreWriter, open_writer, parse_store_url
from logagg.cli import app
from logagg.views import EVENT, follow, one_line
from tests.conftest import serving
from tests.test_api import nowhere
from tests.test_search import random_events


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[str, StoreWriter, list[StoredEvent]]]:
    """A store of 300 random events, its URL, its writer and every event in it."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_writer(parse_store_url(url))
    try:
        store.record(random_events(300, seed=21), [])
        yield url, store, store.events(topic=None, after=0, limit=1000)
    finally:
        store.close()


@pytest.fixture
def api_url(stored: tuple[str, StoreWriter, list[StoredEvent]]) -> Iterator[str]:
    config = ApiSettings(broker=nowhere(), store=parse_store_url(stored[0]))
    with serving(config) as client:
        yield str(client.base_url)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def brute_force(everything: list[StoredEvent], *params: tuple[str, str]) -> list[StoredEvent]:
    query = parse_query(params, now=datetime.now(UTC))
    assert isinstance(query, Query), query
    return [e for e in everything if matches(query, e)]


@pytest.mark.parametrize("where", ["--api-url", "--store"])
def test_search_prints_what_the_query_finds_page_after_page(
    stored: tuple[str, StoreWriter, list[StoredEvent]],
    api_url: str,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _, everything = stored
    monkeypatch.setattr(logagg.search, "PAGE", 7)  # many pages from few events
    origin = [where, api_url if where == "--api-url" else url]
    flags = ["--topic", "a/#", "-q", "tim*", "--field", "level:info"]
    flags += ["--since", "2026-11-28T00:00:00Z"]
    found = brute_force(
        everything,
        ("topic", "a/#"),
        ("q", "tim*"),
        ("field", "level:info"),
        ("since", "2026-11-28T00:00:00Z"),
    )
    assert len(found) > 14, "fewer than three pages prove little"

    every = run("search", *flags, "--all", *origin)
    assert every.exit_code == 0, every.output
    assert every.stdout.splitlines() == [one_line(e) for e in found]

    first = run("search", *flags, "--limit", "10", "--order", "desc", *origin)
    assert first.stdout.splitlines() == [one_line(e) for e in reversed(found)][:10]

    default = run("search", *origin)
    assert len(default.stdout.splitlines()) == 100

    ndjson = run("search", "--source", "worker", "--json", "--all", *origin)
    rows = [json.loads(line) for line in ndjson.stdout.splitlines()]
    from_worker = brute_force(everything, ("source", "worker"))
    assert [r["seq"] for r in rows] == [e.seq for e in from_worker]
    assert rows[0] == json.loads(EVENT.dump_json(from_worker[0]))


@pytest.mark.parametrize("where", ["--api-url", "--store"])
def test_search_exits_2_naming_a_refused_flag(
    stored: tuple[str, StoreWriter, list[StoredEvent]], api_url: str, where: str
) -> None:
    origin = [where, api_url if where == "--api-url" else stored[0]]
    for flags, named in [
        (["--since", "yesterday"], "since"),
        (["-q", "-debug"], "q"),
        (["--field", "level"], "field"),
        (["--order", "sideways"], "order"),
        (["--topic", "a/#/b"], "topic"),
    ]:
        done = run("search", *flags, *origin)
        assert done.exit_code == 2, (flags, done.output)
        assert done.stderr.startswith(f"error: {named}: "), done.stderr


def test_search_says_what_is_wrong_with_a_store_url(tmp_path: Path) -> None:
    done = run("search", "--store", "mysql://db")
    assert (done.exit_code, done.stderr.startswith("error: store: ")) == (2, True), done.stderr
    missing = run("search", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.exit_code == 1
    assert "does not exist yet" in missing.stderr


def test_tail_takes_the_filters(
    stored: tuple[str, StoreWriter, list[StoredEvent]], api_url: str
) -> None:
    _, _, everything = stored
    done = run("tail", "-n", "4", "-q", "timeout", "--field", "level:error", "--api-url", api_url)
    assert done.exit_code == 0, done.output
    found = brute_force(everything, ("q", "timeout"), ("field", "level:error"))
    assert done.stdout.splitlines() == [one_line(e) for e in found[-4:]]
    refused = run("tail", "--until", "2026-12-01T00:00:00", "--api-url", api_url)
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: until: ")


def test_tail_follow_sends_only_what_the_query_matches(
    stored: tuple[str, StoreWriter, list[StoredEvent]], api_url: str
) -> None:
    """`logagg tail -f -q …` reads the stream with the query (logagg/views.follow)."""
    _, store, _ = stored

    def stamped(event_id: str, msg: str) -> Event:
        return Event(
            topic="live",
            event_id=event_id,
            timestamp=datetime.now(UTC),
            source="t",
            payload={"msg": msg},
        )

    filters = [("q", "zebra"), ("topic", "live")]
    store.record([stamped("z0", "a zebra before the stream"), stamped("h0", "a horse")], [])
    with (
        httpx.Client(base_url=api_url, timeout=10) as client,
        closing(follow(client, filters, 1)) as events,
    ):
        assert next(events).event_id == "z0"  # the newest match, then what comes
        live = [
            stamped("h1", "a horse"),
            stamped("z1", "Zebras? no: ZEBRA"),
            stamped("z2", "zebra"),
        ]
        store.record(live, [])
        assert [next(events).event_id for _ in range(2)] == ["z1", "z2"]
