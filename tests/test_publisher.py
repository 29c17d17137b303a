"""The publisher: the stream it generates, pacing, and runs through a real broker and bridge."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.event import Event, parse_message
from publisher import (
    Message,
    PublishError,
    PublisherSettings,
    generate,
    run_publisher,
)
from publisher.run import Pacer
from publisher.stream import MAX_SHIFT
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import StartBridge, wait_for_stats

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    """Whatever thread a test starts (paho's, a server's), the test stops."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


def stream(**overrides: Any) -> list[Message]:
    spec: dict[str, Any] = {
        "count": 1000,
        "topics": ["auth.prod", "billing.prod", "api.prod"],
        "dup_ratio": 0.2,
        "out_of_order": 0.1,
        "payload_bytes": 100,
        "source": "test",
        "run_id": "run",
        "seed": 7,
        "clock": lambda: NOW,
    }
    return list(generate(**{**spec, **overrides}))


def content(messages: list[Message]) -> list[tuple[str, str, datetime, dict[str, Any]]]:
    return [(m.topic, m.event_id, m.timestamp, m.payload) for m in messages]


def settings(**overrides: Any) -> PublisherSettings:
    return PublisherSettings(**{"seed": 1, "ack_timeout_s": 20.0, **overrides})


# The stream, without a broker.


def test_stream_exact_count_repeats_and_distinct_ids() -> None:
    """1,000 sends at 20%: exactly 800 distinct ids, and each repeat is an event sent before."""
    messages = stream()
    assert len(messages) == 1000
    first: dict[str, Message] = {}
    for m in messages:
        # A repeat is the very object sent first: same topic, id, content and bytes.
        assert first.setdefault(m.event_id, m) is m
    assert len(first) == 800


def test_stream_edge_ratios() -> None:
    """The first send is never a repeat; ratio 0 repeats nothing."""
    assert len(stream(count=1, dup_ratio=0.9)) == 1
    assert len({m.event_id for m in stream(count=10, dup_ratio=0.9)}) == 1
    assert len({m.event_id for m in stream(count=10, dup_ratio=0.0)}) == 10


def test_stream_same_seed_same_stream() -> None:
    """A seed fixes the stream; another seed gives another."""
    assert content(stream(seed=3)) == content(stream(seed=3))
    assert content(stream(seed=3)) != content(stream(seed=4))


def test_stream_out_of_order_exact_fraction() -> None:
    """10% of the 800 distinct events are stamped in the past, at most MAX_SHIFT back."""
    distinct = {m.event_id: m for m in stream()}.values()
    early = [m for m in distinct if m.timestamp < NOW]
    assert len(early) == 80
    assert all(m.timestamp >= NOW - MAX_SHIFT for m in early)
    assert all(m.timestamp == NOW for m in distinct if m not in early)


def test_stream_messages_are_valid_events() -> None:
    """Every message parses as an Event, UTC, with log-like fields, `seq` and `sent_at`."""
    messages = stream(count=200, payload_bytes=300, clock=lambda: datetime.now(UTC))
    before = time.time()
    first_sends = {m.event_id: m.body() for m in messages}
    for m in messages:
        assert m.body() == first_sends[m.event_id]  # a repeat goes out byte for byte
    for m in {m.event_id: m for m in messages}.values():
        event = parse_message(f"logs/{m.topic}", m.body())
        assert isinstance(event, Event), event
        assert event.timestamp.utcoffset() == timedelta(0)
        assert {"seq", "level", "message", "sent_at"} <= set(event.payload)
        assert event.payload["sent_at"] >= before  # stamped when first sent, not when made
        assert len(json.dumps(event.payload, separators=(",", ":"))) == pytest.approx(300, abs=15)


def test_settings_topics_from_commas_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--topics a,b` and LOGAGG_TOPICS=a,b both work; an MQTT wildcard is refused."""
    assert PublisherSettings(topics="a.prod, b.prod").topics == ["a.prod", "b.prod"]  # type: ignore[arg-type]
    monkeypatch.setenv("LOGAGG_TOPICS", "x,y")
    assert PublisherSettings().topics == ["x", "y"]
    with pytest.raises(ValidationError, match="topics"):
        PublisherSettings(topics="ok,bad/#")  # type: ignore[arg-type]


def test_pacer_spaces_sends_evenly_and_does_not_burst_after_a_stall() -> None:
    """At 10/s each send is 0.1 s after the last; after a 1 s stall, no catch-up burst."""
    now = [0.0]
    sent: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pacer = Pacer(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
        sent.append(now[0])
    now[0] += 1.0  # e.g. waiting for the broker
    for _ in range(3):
        pacer.wait()
        sent.append(now[0])
    assert sent == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 1.4, 1.5, 1.6])


# Through a real broker and the real bridge.


@pytest.mark.broker
def test_publish_mqtt_matches_the_store(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Two runs of 2,000 with the same seed: the store counts exactly what the summaries say,
    so ids do not collide across runs."""
    bridge_factory()
    runs = [run_publisher(settings(broker=broker.url, count=2000, dup_ratio=0.2)) for _ in range(2)]
    for summary in runs:
        assert (summary.sent, summary.distinct, summary.duplicates) == (2000, 1600, 400)
    stats = wait_for_stats(store_url, lambda s: s.received >= 4000)
    assert stats.unique_processed == sum(s.distinct for s in runs)
    assert stats.duplicate_dropped == sum(s.duplicates for s in runs)
    assert stats.rejected == 0


# slow: restarts the broker
@pytest.mark.slow
@pytest.mark.broker
def test_publish_survives_a_broker_restart(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """The broker goes away mid-stream and comes back: the run completes, and every event
    it counts is stored once (resends may add duplicates, never events)."""
    bridge_factory()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_publisher, settings(broker=broker.url, count=6000, rate=3000))
        time.sleep(0.7)
        broker.stop()
        time.sleep(1.0)
        broker.start()
        summary = run.result(timeout=60)
    assert (summary.sent, summary.distinct) == (6000, 4800)
    stats = wait_for_stats(store_url, lambda s: s.unique_processed >= summary.distinct)
    assert stats.unique_processed == summary.distinct
    assert stats.duplicate_dropped >= summary.duplicates


@pytest.mark.broker
def test_publish_gives_up_without_over_reporting(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """The broker goes away for good: the run stops after the ack timeout, and what it says
    was sent is in the store once the broker is back."""
    bridge_factory()
    config = settings(broker=broker.url, count=20_000, rate=4000, ack_timeout_s=2.0)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_publisher, config)
        time.sleep(0.5)
        broker.stop()
        error = run.exception(timeout=30)
    assert isinstance(error, PublishError), error
    assert "acknowledged nothing" in str(error)
    summary = error.summary
    assert summary is not None
    assert 0 < summary.sent < 20_000
    broker.start()
    stats = wait_for_stats(store_url, lambda s: s.unique_processed >= summary.distinct)
    # A message whose PUBACK was lost may be stored without being counted: never the reverse.
    assert stats.unique_processed >= summary.distinct


@pytest.mark.broker
def test_publish_unreachable_broker_fails_in_bounded_time() -> None:
    """Nothing listening: PublishError after the ack timeout, nothing counted."""
    started = time.monotonic()
    with pytest.raises(PublishError, match="could not connect") as caught:
        run_publisher(settings(broker=f"mqtt://127.0.0.1:{free_port()}", ack_timeout_s=1.5))
    assert time.monotonic() - started < 10
    assert caught.value.summary is not None
    assert caught.value.summary.sent == 0


@pytest.mark.broker
def test_publish_refused_by_the_broker_counts_nothing(tmp_path: Path) -> None:
    """An ACL that forbids publishing: nothing counts as sent. Mosquitto 2.0 answers with a
    PUBACK saying "Not authorized" and then resets the connection, which often discards
    that PUBACK unread; so the run ends on the refusal or on the ack timeout."""
    acl = tmp_path / "acl"
    acl.write_text("topic read logs/#\n")
    broker = Mosquitto(free_port(), tmp_path / "mosquitto", extra_config=f"acl_file {acl}\n")
    broker.start()
    try:
        with pytest.raises(PublishError, match=r"Not authorized|acknowledged nothing") as caught:
            run_publisher(settings(broker=broker.url, count=100, ack_timeout_s=3.0))
    finally:
        broker.stop()
    assert caught.value.summary is not None
    assert caught.value.summary.sent == 0


@pytest.mark.broker
def test_publish_rate_is_paced(broker: Mosquitto) -> None:
    """200 events at 400/s take about half a second (loosely: this is not a benchmark)."""
    summary = run_publisher(settings(broker=broker.url, count=200, rate=400))
    assert summary.sent == 200
    assert 0.4 <= summary.elapsed_s <= 1.5


@pytest.mark.broker
def test_cli_publish_json(broker: Mosquitto, bridge_factory: StartBridge, store_url: str) -> None:
    """`logagg publish --json` prints an exact summary, and the store agrees with it."""
    bridge_factory()
    done = subprocess.run(
        [sys.executable, "-m", "logagg", "publish", "--broker", broker.url, "--count", "300",
         "--dup-ratio", "0.1", "--topics", "cli.a,cli.b", "--seed", "5", "--json",
         "--no-progress"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == 300
    assert (summary["distinct"], summary["duplicates"]) == (270, 30)
    assert summary["error"] is None
    assert summary["events_per_s"] > 0
    stats = wait_for_stats(store_url, lambda s: s.received >= 300)
    assert set(stats.topics) == {"cli.a", "cli.b"}
    assert stats.unique_processed == 270


def test_cli_publish_failure_still_prints_json() -> None:
    """Nothing to connect to: exit 1, and the JSON says nothing was sent, and why."""
    done = subprocess.run(
        [sys.executable, "-m", "logagg", "publish", "--broker",
         f"mqtt://127.0.0.1:{free_port()}", "--ack-timeout", "1", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["sent"] == 0
    assert "could not connect" in summary["error"]


# Through HTTP: a stand-in for the sidecar, until api/ has an end-to-end test of its own.


class FakeSidecar:
    """Keeps to the sidecar's contract for `POST /publish`: a JSON event or array, each
    validated with the bridge's schema (422 otherwise), 413 past `max_batch` events,
    503 to the first `unavailable` requests, then 200 `{"accepted": n}`."""

    def __init__(self, unavailable: int = 0, max_batch: int = 10_000) -> None:
        self.unavailable = unavailable
        self.max_batch = max_batch
        self.requests = 0
        self.accepted: list[Event] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sidecar = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                events = body if isinstance(body, list) else [body]
                sidecar.requests += 1
                if self.path != "/publish":
                    self._answer(404, {"detail": "not found"})
                elif len(events) > sidecar.max_batch:
                    self._answer(413, {"detail": f"more than {sidecar.max_batch} events"})
                elif sidecar.requests <= sidecar.unavailable:
                    self._answer(503, {"detail": "broker unreachable"})
                else:
                    try:
                        parsed = [Event.model_validate(e) for e in events]
                    except ValidationError as exc:
                        self._answer(422, {"detail": str(exc)})
                        return
                    sidecar.accepted += parsed
                    self._answer(200, {"accepted": len(parsed)})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib signature)
                pass

        return Handler

    def __enter__(self) -> FakeSidecar:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_publish_http_resends_on_503_and_counts_what_was_accepted() -> None:
    """Two 503s, then 200s: every batch is accepted once, and the counts match."""
    with FakeSidecar(unavailable=2) as sidecar:
        config = settings(via="http", api_url=sidecar.url, count=1000, http_batch_size=300)
        summary = run_publisher(config)
    assert (summary.sent, summary.distinct, summary.duplicates) == (1000, 800, 200)
    assert sidecar.requests == 2 + 4
    assert len(sidecar.accepted) == 1000
    assert len({e.event_id for e in sidecar.accepted}) == 800


def test_publish_http_gives_up_on_413() -> None:
    """A refusal that resending cannot change stops the run at once, nothing counted."""
    with FakeSidecar(max_batch=100) as sidecar:
        config = settings(via="http", api_url=sidecar.url, count=1000, http_batch_size=300)
        with pytest.raises(PublishError, match=r"413.*smaller --batch-size") as caught:
            run_publisher(config)
    assert sidecar.requests == 1
    assert caught.value.summary is not None
    assert caught.value.summary.sent == 0
