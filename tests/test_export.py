"""Export (issue 12): `GET /events/export`, `logagg export` and `logagg rejected export`
on both stores: the lines a query finds in seq order, gzip, the bound at the start,
a client that leaves and a store that fails half-way."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api import ApiSettings
from bench.export import cli_export, http_export
from bench.prefill import prefill
from bench.scenarios import BenchConfig
from bridge.event import Event, Rejection
from bridge.query import Query, matches, parse_query
from bridge.store import (
    Refused,
    StoredEvent,
    StoreWriter,
    open_reader,
    open_writer,
    parse_store_url,
)
from bridge.store.export import export_pages
from supervise.mosquitto import Mosquitto
from tests.helpers import LOGAGG, logagg_cli, nowhere, random_events, serving

pytestmark = pytest.mark.timeout(120)

# Payloads with every kind of JSON value, as issue 12 asks the round trip to keep.
ODD_PAYLOADS: list[dict[str, Any]] = [
    {"nested": {"a": [1, {"b": [None, True, False, {"c": []}]}], "d": {}}},
    {"astral": "😀𝄞 \U0010fffd", "escapes": 'quote " backslash \\ nl \n tab \t bell \x07 \u2028'},
    {"big": 2**80, "negative": -(2**70), "int64": 2**63 - 1, "zero": 0},
    {"floats": [1.5, -0.25, 1e-300, 1.7976931348623157e308, 0.1, 123456.789]},
    {"null": None, "empty_object": {}, "empty_array": [], "empty_string": ""},
    {"": "empty key", "ключ": "значение", "東京": ["渋谷", "新宿"], "deep": [[[[["x"]]]]]},
]


def odd_events(topic: str = "odd/types") -> list[Event]:
    """One event per odd payload, with timestamps in several offsets and precisions."""
    stamps = [
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00.123456+05:30",
        "2026-12-01T10:00:01-07:00",
        "2026-12-01T10:00:02.5+00:00",
        "2026-12-01T10:00:03+14:00",
        "2026-12-01T10:00:04.000001-12:00",
    ]
    return [
        Event.model_validate(
            {
                "topic": topic,
                "event_id": f"odd-{i}",
                "timestamp": stamp,
                "source": "Édge-1",
                "payload": payload,
            }
        )
        for i, (stamp, payload) in enumerate(zip(stamps, ODD_PAYLOADS, strict=True))
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    found: str = request.getfixturevalue("pg_url")
    return found


@pytest.fixture
def stored(url: str) -> Iterator[tuple[StoreWriter, list[StoredEvent]]]:
    """2,500 random events (more than two pages) and the odd ones, with two rejections;
    the writer and every event stored."""
    store = open_writer(parse_store_url(url))
    try:
        refused = [
            Refused("logs/bad", b"{not json", Rejection("not_json", "body is not JSON")),
            Refused("logs/x", "ünïcode \x00".encode(), Rejection("schema", "payload: missing")),
        ]
        for start in range(0, 2500, 500):
            store.record(random_events(2500, seed=12)[start : start + 500], [])
        store.record(odd_events(), refused)
        everything = store.events(topic=None, after=0, limit=10_000)
        yield store, everything
    finally:
        store.close()


@pytest.fixture
def api(url: str, stored: tuple[StoreWriter, list[StoredEvent]]) -> Iterator[httpx.Client]:
    with serving(ApiSettings(broker=nowhere(), store=parse_store_url(url))) as client:
        yield client


def expected(everything: list[StoredEvent], params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    query = parse_query(params, now=datetime.now(UTC))
    assert isinstance(query, Query), query
    return [asdict(e) for e in everything if matches(query, e)]


def parsed_lines(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n") or body == b""
    # Split on newlines only: a payload may hold U+2028, where str.splitlines would split.
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


# Each query builds a store of 2,500 events on both stores: the fast set takes the first
# two (the filters themselves are held to brute force by tests/test_search.py).
QUERIES = [
    [],
    [("topic", "a/#")],
    *(
        pytest.param(query, marks=pytest.mark.slow)
        for query in [
            [("topic", "auth.prod"), ("q", "timeout")],
            [("since", "2026-11-29T00:00:00Z"), ("until", "2026-11-30T12:00:00+01:00")],
            [("field", "level:error"), ("source", "api-1")],
            [("after", "1200")],
            [("topic", "odd/types")],
        ]
    ),
]


@pytest.mark.parametrize("params", QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p))
def test_export_is_every_match_in_seq_order_as_events_has_them(
    api: httpx.Client, stored: tuple[StoreWriter, list[StoredEvent]], params: list[tuple[str, str]]
) -> None:
    """Each line is the event as /events has it (same keys, same values), every match of
    the filters once, in seq order, across pages; identity and gzip carry the same bytes."""
    plain = api.get("/events/export", params=tuple(params), headers={"accept-encoding": "identity"})
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"] == "application/x-ndjson"
    assert "content-encoding" not in plain.headers
    lines = parsed_lines(plain.content)
    assert lines == expected(stored[1], params)
    assert [list(line) for line in lines[:1]] in ([], [list(asdict(stored[1][0]))])
    with api.stream(
        "GET", "/events/export", params=tuple(params), headers={"accept-encoding": "gzip"}
    ) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding"
        compressed = b"".join(r.iter_raw())
    assert gzip.decompress(compressed) == plain.content


def test_export_of_odd_payloads_keeps_every_value(
    api: httpx.Client, stored: tuple[StoreWriter, list[StoredEvent]]
) -> None:
    """Nested values, astral and escaped characters, big integers, floats, null and empty
    containers come out as the store gives them to /events (PostgreSQL's jsonb writes a
    huge float as its integer digits, in /events as here)."""
    lines = parsed_lines(api.get("/events/export", params={"topic": "odd/types"}).content)
    assert [line["payload"] for line in lines] == [e.payload for e in stored[1][-6:]]
    assert [line["timestamp"] for line in lines] == [e.timestamp for e in stored[1][-6:]]
    assert lines[1]["payload"]["escapes"].endswith("\x07 \u2028")


@pytest.mark.parametrize("params", QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p))
def test_export_pages_are_keyset_pages_of_every_match(
    url: str, stored: tuple[StoreWriter, list[StoredEvent]], params: list[tuple[str, str]]
) -> None:
    """Small pages (the sidecar reads EXPORT_PAGE at a time) give the same lines: each page
    follows the last seq of the one before, none repeated, none skipped."""
    query = parse_query(params, now=datetime.now(UTC))
    assert isinstance(query, Query)
    with closing(open_reader(parse_store_url(url))) as reader:
        pages = list(export_pages(reader, query, page=300))
    assert all(len(p.lines) <= 300 for p in pages)
    lines = [json.loads(line) for p in pages for line in p.lines]
    assert lines == expected(stored[1], params)
    assert [p.last_seq for p in pages] == [json.loads(p.lines[-1])["seq"] for p in pages]


def test_export_refuses_what_events_refuses(api: httpx.Client) -> None:
    """A bad filter, a paging parameter or an unknown one is a 422 naming it, before any
    line is sent."""
    for params, name in [
        ({"since": "2026-12-01T10:00:00"}, "since"),
        ({"limit": "10"}, "limit"),
        ({"order": "desc"}, "order"),
        ({"topik": "a"}, "topik"),
    ]:
        answer = api.get("/events/export", params=params)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["query", name]


def test_export_stops_at_the_newest_event_stored_when_it_began(
    url: str, stored: tuple[StoreWriter, list[StoredEvent]]
) -> None:
    """Events stored while an export runs come after its end: the export is exactly what
    was stored when it began, each once, in seq order."""
    writer, everything = stored
    with closing(open_reader(parse_store_url(url))) as reader:
        query = parse_query([], now=datetime.now(UTC))
        assert isinstance(query, Query)
        pages = export_pages(reader, query, page=1000)
        first = next(pages)
        assert len(first.lines) == 1000
        writer.record(random_events(1500, seed=99), [])
        seqs = [json.loads(line)["seq"] for page in [first, *pages] for line in page.lines]
    assert seqs == [e.seq for e in everything]


def test_export_tells_a_gzip_reader_too_where_the_store_failed(
    url: str, api: httpx.Client, stored: tuple[StoreWriter, list[StoredEvent]]
) -> None:
    """The store gone after the first pages: the last line says why and where to resume,
    and the response ends unfinished (the transfer fails, the gzip stream has no end)."""
    grow(stored[0], seed=5)
    decoder = zlib.decompressobj(wbits=31)
    body: list[bytes] = []

    def read(chunks: Iterator[bytes]) -> None:
        body.extend(decoder.decompress(chunk) for chunk in chunks)

    with api.stream("GET", "/events/export", headers={"accept-encoding": "gzip"}) as response:
        chunks = response.iter_raw()
        body.append(decoder.decompress(next(chunks)))
        _break_store(url)
        with pytest.raises(httpx.RemoteProtocolError):
            read(chunks)
    assert not decoder.eof
    *events, last = b"".join(body).decode().split("\n")[:-1]
    error = json.loads(last)
    assert error["error"].startswith("store unavailable: ")
    assert error["resume_after"] == json.loads(events[-1])["seq"]
    assert all(line.startswith('{"seq":') for line in events)


def grow(store: StoreWriter, *, seed: int) -> None:
    """40,000 events more, enough to fill a socket's buffers: the sidecar stays pages ahead
    of a reader that stops, not the whole export (batches of a few thousand, as a bridge
    writes: a PostgreSQL session idle inside one transaction for 5 s is ended)."""
    events = random_events(40_000, seed=seed)
    for start in range(0, len(events), 4000):
        store.record(events[start : start + 4000], [])


def _break_store(url: str) -> None:
    """Make every further read of the store fail: the SQLite file moved away, the
    PostgreSQL events table dropped."""
    target = parse_store_url(url)
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        path.rename(path.with_suffix(".moved"))
        return
    assert not isinstance(target, type(None))
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        schema = url.rsplit("schema=", 1)[1]
        conn.execute(f'DROP TABLE "{schema}".events CASCADE')


# slow: waits for the server to notice a client gone, on both stores
@pytest.mark.slow
def test_export_client_that_leaves_stops_the_reading(
    api: httpx.Client,
    stored: tuple[StoreWriter, list[StoredEvent]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client gone half-way: no further page is read, the log says so, and the sidecar
    serves the next request."""
    grow(stored[0], seed=6)
    caplog.set_level(logging.INFO, logger="logagg.api.export")
    with api.stream("GET", "/events/export") as response:
        next(response.iter_raw())
    deadline = time.monotonic() + 20
    while not any("client gone" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    (gone,) = [r.getMessage() for r in caplog.records if "client gone" in r.getMessage()]
    exported = int(gone.split(": ")[1].split(" events")[0])
    assert 0 < exported < 42_506
    assert api.get("/events/export", params={"topic": "odd/types"}).status_code == 200


@pytest.mark.parametrize("where", ["--store", "--api-url"])
def test_export_cli_writes_what_the_route_sends(
    url: str, api: httpx.Client, tmp_path: Path, where: str
) -> None:
    """`logagg export` from the store or the sidecar writes the route's exact bytes, to
    stdout or -o FILE; --after resumes; a refused flag exits 2 naming it."""
    source = url if where == "--store" else str(api.base_url)
    params = {"topic": "a/#", "q": "timeout"}
    route = api.get("/events/export", params=params).content
    printed = logagg_cli("export", where, source, "--topic", "a/#", "-q", "timeout")
    assert printed.exit_code == 0, printed.stderr
    assert printed.stdout_bytes == route
    out = tmp_path / "out.ndjson"
    written = logagg_cli("export", where, source, "--after", "1000", "-o", str(out))
    assert written.exit_code == 0, written.stderr
    assert out.read_bytes() == api.get("/events/export", params={"after": 1000}).content
    refused = logagg_cli("export", where, source, "--since", "yesterday")
    assert refused.exit_code == 2
    assert "since" in refused.stderr


# slow: a second store failure mid-export; the fast set has it through the route (gzip reader)
@pytest.mark.slow
def test_export_cli_says_where_to_resume_when_the_store_fails(
    url: str, api: httpx.Client, stored: tuple[StoreWriter, list[StoredEvent]]
) -> None:
    """Through the sidecar, an export cut short exits 1 naming the --after that resumes it;
    its output holds whole events up to there, and no error line. (The command's stdout is
    a pipe read slowly, so the sidecar is held pages behind when the store goes.)"""
    grow(stored[0], seed=7)
    with subprocess.Popen(
        [*LOGAGG, "export", "--api-url", str(api.base_url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        head = proc.stdout.read(4096)
        _break_store(url)
        out, err = head + proc.stdout.read(), proc.stderr.read().decode()
        assert proc.wait(30) == 1, err
    lines = out.split(b"\n")
    assert lines[-1] == b""
    last = json.loads(lines[-2])
    assert 0 < last["seq"] < 42_506
    assert f"up to seq {last['seq']}: resume with --after {last['seq']}" in err
    assert all(line.startswith(b'{"seq":') for line in lines[:-1])


def test_rejected_export_writes_the_kept_messages(url: str, api: httpx.Client) -> None:
    """`logagg rejected export` from the store or the sidecar: each kept message with its
    MQTT topic, code, reason and body, oldest first."""
    for where, source in [("--store", url), ("--api-url", str(api.base_url))]:
        result = logagg_cli("rejected", "export", where, source)
        assert result.exit_code == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout_bytes.split(b"\n")[:-1]]
        assert [(r["mqtt_topic"], r["code"], r["body"]) for r in rows] == [
            ("logs/bad", "not_json", "{not json"),
            ("logs/x", "schema", "ünïcode \\x00"),
        ]
        assert set(rows[0]) == {"seq", "mqtt_topic", "code", "reason", "body", "received_at"}


# slow: stores 200,000 events through a real broker and bridge
@pytest.mark.slow
@pytest.mark.broker
def test_export_memory_stays_flat_over_200k_events(broker: Mosquitto, tmp_path: Path) -> None:
    """200,000 events (70 MB of NDJSON) out of `logagg export` and out of the sidecar,
    identity and gzip: the resident memory of each stays flat, its second half's peak within
    10 MB of its first half's, and grows by less than 40 MB in all (the pages in flight and
    what the allocator keeps of them; a buffered export would grow by the whole export)."""
    path = tmp_path / "big.db"
    prefill(path, 200_000, payload_bytes=300)
    url = f"sqlite:///{path}"
    cli = cli_export(url, 200_000)
    assert cli["samples"] >= 3
    assert cli["rss_growth_mb"] < 40, cli
    assert cli["rss_late_growth_mb"] < 10, cli
    served = http_export(BenchConfig(work=tmp_path, store=url), broker.url, 200_000)
    for encoding in ("identity", "gzip"):
        assert served[encoding]["samples"] >= 3
        assert served[encoding]["rss_growth_mb"] < 40, served
        assert served[encoding]["rss_late_growth_mb"] < 10, served
