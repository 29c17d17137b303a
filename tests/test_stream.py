"""The newest rows and the live stream: `?last=` on /events and /rejected, `/events/stream`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

import api.stream
from logagg.views import server_sent_events
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    Sidecar,
    StartBridge,
    event,
    nowhere,
    publish_raw,
    wait_for_stats,
)


def read_events(response: httpx.Response, count: int) -> Iterator[tuple[str | None, str | None]]:
    """The first `count` Server-Sent Events (id-only ones included), comments and retry skipped."""
    for n, item in enumerate(server_sent_events(response.iter_lines()), 1):
        yield item
        if n == count:
            return


@pytest.fixture
def stored(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    sidecar: Sidecar,
    store_url: str,
) -> tuple[httpx.Client, list[int]]:
    """A sidecar over five stored events (a0..a4 on topic a, b0 on topic b between them)."""
    bridge_factory()
    client = sidecar(broker.url)
    batch = [event("a0", "a"), event("a1", "a"), event("b0", "b"), event("a2", "a")]
    assert client.post("/publish", json=[*batch, event("a3", "a")]).json() == {"accepted": 5}
    wait_for_stats(store_url, lambda s: s.unique_processed == 5)
    seqs = [e["seq"] for e in client.get("/events").json()["events"]]
    return client, seqs


@pytest.mark.broker
def test_events_last_gives_the_newest_oldest_first(stored: tuple[httpx.Client, list[int]]) -> None:
    client, seqs = stored
    page = client.get("/events", params={"last": 2}).json()
    assert [e["event_id"] for e in page["events"]] == ["a2", "a3"]
    assert page["next_after"] == seqs[-1]
    only_a = client.get("/events", params={"last": 3, "topic": "a"}).json()["events"]
    assert [e["event_id"] for e in only_a] == ["a1", "a2", "a3"]
    assert len(client.get("/events", params={"last": 100}).json()["events"]) == 5
    assert client.get("/events", params={"last": 0}).status_code == 422


@pytest.mark.broker
def test_stream_resumes_after_last_event_id(stored: tuple[httpx.Client, list[int]]) -> None:
    """A reconnecting EventSource sends the last seq it saw; the stream goes on from there,
    first with what is stored, then live."""
    client, seqs = stored
    headers = {"Last-Event-ID": str(seqs[1])}
    with client.stream("GET", "/events/stream", headers=headers, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "retry: 1000"
        events = server_sent_events(lines)
        got = [next(events) for _ in range(3)]
        assert [i for i, _ in got] == [str(s) for s in seqs[2:]]
        assert [json.loads(d or "")["event_id"] for _, d in got] == ["b0", "a2", "a3"]

        started = time.monotonic()
        assert client.post("/publish", json=event("a4", "a")).json() == {"accepted": 1}
        seq, data = next(events)
        assert time.monotonic() - started < 2
        live = json.loads(data or "")
        assert (live["event_id"], live["payload"]) == ("a4", {"msg": "hello a4"})
        assert seq == str(live["seq"])


@pytest.mark.broker
def test_stream_after_and_last_and_topic(stored: tuple[httpx.Client, list[int]]) -> None:
    """`after=` starts like Last-Event-ID; `last=N` sends an id first (where a reconnect would
    resume), then the newest N; the header wins over the query."""
    client, seqs = stored

    def first(
        count: int, headers: dict[str, str] | None = None, **params: str | int
    ) -> list[tuple[str | None, str | None]]:
        with client.stream(
            "GET", "/events/stream", params=params, headers=headers, timeout=10
        ) as response:
            return list(read_events(response, count))

    after = first(1, after=seqs[3])
    assert after[0][0] == str(seqs[4])

    newest = first(3, last=2)
    assert newest[0] == (str(seqs[2]), None)
    assert [json.loads(d or "")["event_id"] for _, d in newest[1:]] == ["a2", "a3"]

    topic_b = first(2, topic="b", last=5)
    assert topic_b[0][1] is None  # an id alone: just before the first event sent
    assert int(topic_b[0][0] or "") < int(topic_b[1][0] or "")
    assert json.loads(topic_b[1][1] or "")["event_id"] == "b0"

    header_wins = first(1, after=0, headers={"Last-Event-ID": str(seqs[3])})
    assert header_wins[0][0] == str(seqs[4])

    assert client.get("/events/stream", headers={"Last-Event-ID": "x"}).status_code == 422


def test_stream_waits_for_the_store_with_keep_alive_comments(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the bridge created the store the stream stays open, a comment now and then
    keeping proxies from closing it (every 15 s; 0.2 s here)."""
    monkeypatch.setattr(api.stream, "PING_S", 0.2)
    client = sidecar(nowhere())
    with client.stream("GET", "/events/stream", timeout=10) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)] == ["retry: 1000", "", ": ping", ""]


@pytest.mark.broker
def test_rejected_last_gives_the_newest(
    client: httpx.Client, broker: Mosquitto, store_url: str
) -> None:
    publish_raw(broker.port, [("logs/x", f"bad {i}".encode()) for i in range(5)])
    wait_for_stats(store_url, lambda s: s.rejected == 5)
    page = client.get("/rejected", params={"last": 2}).json()
    assert [r["body"] for r in page["rejected"]] == ["bad 3", "bad 4"]
