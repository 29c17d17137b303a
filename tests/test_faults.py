"""Fault injection (issue #4): the bridge killed at random instants, the broker SIGKILLed with
the publisher reconnecting, the store's disk full or its files read-only, a consumer slower
than its publisher, and a short soak.

Each test streams events with duplicates, injects the fault, lets the system recover, and
checks from the store that every distinct event is stored exactly once and that
received = unique + duplicates + rejected. Sizes are set by environment variables: the
defaults keep CI short, and the documented full runs are

    LOGAGG_FAULT_EVENTS=100000 LOGAGG_FAULT_BACKPRESSURE_S=60 pytest -m faults
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from api import ApiSettings
from bridge.store import open_reader, parse_store_url
from publisher.run import run_publisher
from publisher.settings import PublisherSettings
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    AUTOSAVE_S,
    StartBridge,
    assert_exactly_once,
    distinct,
    make_stream,
    publish_raw,
    serving,
    stream_with_kills,
    wait_for_stats,
)

pytestmark = [pytest.mark.broker, pytest.mark.faults]

# 100,000 is the documented run and the default (about 10 s here); smaller for a quick look.
FAULT_EVENTS = int(os.environ.get("LOGAGG_FAULT_EVENTS", "100000"))
# 60 s is the documented full run of the slow-consumer test.
BACKPRESSURE_S = float(os.environ.get("LOGAGG_FAULT_BACKPRESSURE_S", "15"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_bridge_killed_at_five_random_instants(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """LOGAGG_FAULT_EVENTS events (100,000 in the full run), 30% duplicates; the bridge is
    SIGKILLed at 5 seeded random points of the stream and restarted each time: every distinct
    event is stored exactly once."""
    rng = random.Random(404)
    stream = make_stream(FAULT_EVENTS, 0.3, seed=404)
    want = distinct(stream)
    kills = sorted(rng.sample(range(len(stream) // 20, len(stream) * 9 // 10), 5))
    started = time.monotonic()
    stats = stream_with_kills(broker, bridge_factory, store_url, stream, kills)
    print(
        f"\n{len(stream)} events, kills at {kills}: {time.monotonic() - started:.1f}s,"
        f" {stats.duplicate_dropped - (len(stream) - want)} redelivered copies dropped"
    )


@pytest.mark.parametrize("session_saved", [True, False], ids=["saved-session", "fresh-session"])
def test_broker_sigkilled_mid_stream_measures_acknowledged_loss(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    session_saved: bool,
) -> None:
    """The shipped config (autosave_interval 2), the bridge live, the broker SIGKILLed mid-stream
    and restarted; `run_publisher` reconnects and resends whatever was not PUBACKed.

    Guaranteed, and asserted: nothing is stored twice, nothing is stored that was not
    published, and the counters agree. Not guaranteed: what the broker acknowledged but had
    neither delivered to the bridge nor saved can be lost; that figure is measured and printed
    (distinct events acknowledged by the broker minus distinct events stored). Measured here
    (20,000 events at 4,000/s, 30% duplicates):

    - saved-session (the bridge up for longer than one autosave before the kill): 0 of
      14,000 lost in each of 5 runs: a live bridge takes delivery within milliseconds and
      commits what it holds before reconnecting.
    - fresh-session (killed within 2 s of the bridge's first subscribe, before any autosave):
      505, 724, 802 and 1,394 of 14,000 lost in 4 runs (4-10%): the restarted broker has no
      record of the bridge's subscription, so what is published before the bridge reconnects
      and resubscribes (its reconnect back-off) goes to no subscriber.
    """
    count = 20_000
    bridge = bridge_factory()
    if session_saved:  # up past one autosave: its session and subscription are on disk
        time.sleep(AUTOSAVE_S + 1)
    settings = PublisherSettings(
        broker=broker.url, count=count, rate=4000, dup_ratio=0.3, seed=17, ack_timeout_s=60
    )
    result: list[object] = []
    publisher = threading.Thread(target=lambda: result.append(run_publisher(settings)))
    publisher.start()
    try:
        wait_for_stats(store_url, lambda s: s.received >= count // 3, timeout=60)
        broker.stop(signal.SIGKILL)
        time.sleep(0.5)
        broker.start()
    finally:
        publisher.join(timeout=120)
    assert not publisher.is_alive()
    (summary,) = result
    acked = summary.distinct  # type: ignore[attr-defined]
    assert acked == count - round(count * 0.3)  # the publisher resent until all were PUBACKed
    # Quiet: nothing more arrives for 3 s.
    last = -1
    while True:
        now = wait_for_stats(store_url, lambda s: True).received
        if now == last:
            break
        last = now
        time.sleep(3)
    store = open_reader(parse_store_url(store_url))
    try:
        stats = store.stats()
        stored = store.events(topic=None, after=0, limit=count + 1)
    finally:
        store.close()
    keys = [(e.topic, e.event_id) for e in stored]
    assert len(keys) == len(set(keys)), "an event was stored twice"
    assert {e.source for e in stored} == {settings.source}
    assert stats.unique_processed == len(stored) <= acked
    assert stats.received == stats.unique_processed + stats.duplicate_dropped + stats.rejected
    assert stats.rejected == 0
    lost = acked - len(stored)
    print(
        f"\nbroker SIGKILL, session saved={session_saved}: {acked} distinct acknowledged,"
        f" {len(stored)} stored, {lost} lost"
    )
    assert "broker unreachable" in bridge.output()


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full; the file is the space to free later."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 4096)
    return filler


def test_store_disk_full_holds_messages_and_resumes(
    tmpfs: Callable[[str], Path],
    broker: Mosquitto,
    bridge_factory: StartBridge,
) -> None:
    """The store's filesystem fills up (SQLITE_FULL): the bridge holds the batch unacked, logs
    the reason once per interval rather than per retry, and once space is freed it resumes
    with every event stored exactly once.

    /healthz says so meanwhile: 503, `store_space` naming the full disk (the sidecar sees
    it itself: the bridge's heartbeat, a write, has stopped too, as `bridge` says)."""
    tiny_disk = tmpfs("16m")
    url = f"sqlite:///{tiny_disk / 'logagg.db'}"
    bridge = bridge_factory(store=url)
    first = make_stream(1_000, 0.2, seed=21)
    publish_raw(broker.port, first)
    wait_for_stats(url, lambda s: s.received >= len(first))
    filler = fill(tiny_disk)
    second = make_stream(5_000, 0.3, seed=22)
    publish_raw(broker.port, second)  # the broker takes them: the bridge holds, unacked
    deadline = time.monotonic() + 60
    while "store full for" not in bridge.output():
        assert time.monotonic() < deadline, bridge.output()[-3000:]
        time.sleep(0.2)
    held_from = time.monotonic()
    with serving(
        ApiSettings(broker=broker.url, store=parse_store_url(url), bridge_alive_s=2)
    ) as api:
        time.sleep(3)  # past the 2 s liveness window asked for here
        health = api.get("/healthz")
        uptime = api.get("/stats").json().get("uptime_s")
    assert health.status_code == 503
    assert f"the disk of {tiny_disk / 'logagg.db'} is full" in health.json()["store_space"]
    assert "cannot write the store" in health.json()["bridge"]
    assert uptime is None
    filler.unlink()
    everything = first + second
    wait_for_stats(url, lambda s: s.unique_processed >= distinct(everything), timeout=90)
    held_s = time.monotonic() - held_from
    assert_exactly_once(url, everything)
    log = bridge.output()
    assert "store has room again" in log
    # At most one line per 30 s of failure (plus the first), however many retries there were.
    assert 1 <= log.count("store full for") <= 1 + int(held_s // 30) + 1
    assert "database or disk is full" in log


def test_store_files_read_only_holds_messages_and_resumes(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    immutable: Callable[[list[Path], bool], None],
) -> None:
    """The database and its WAL made immutable (`chattr +i`: `chmod 0444` does not stop root):
    writes fail with SQLITE_IOERR, the bridge holds the batch unacked and says why; once the
    files are writable again, every event is stored exactly once. (The -shm file is left
    alone: SQLite maps it into memory, and an immutable -shm kills the writer with SIGBUS.)"""
    bridge = bridge_factory()
    first = make_stream(1_000, 0.2, seed=31)
    publish_raw(broker.port, first)
    wait_for_stats(store_url, lambda s: s.received >= len(first))
    db = Path(store_url.removeprefix("sqlite:///"))
    immutable([db, db.with_name(db.name + "-wal")], True)
    second = make_stream(3_000, 0.3, seed=32)
    publish_raw(broker.port, second)
    deadline = time.monotonic() + 60
    while "store unavailable, holding" not in bridge.output():
        assert time.monotonic() < deadline, bridge.output()[-3000:]
        time.sleep(0.2)
    time.sleep(2)  # a few retries
    immutable([db, db.with_name(db.name + "-wal")], False)
    everything = first + second
    wait_for_stats(store_url, lambda s: s.unique_processed >= distinct(everything), timeout=60)
    assert_exactly_once(store_url, everything)
    log = bridge.output()
    assert "disk I/O error" in log
    assert "store available again" in log
    assert log.count("store unavailable, holding") == 1


def test_slow_consumer_keeps_memory_bounded_and_drops_nothing(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Publishing at full speed into a bridge that fsyncs every 5-message batch, for
    LOGAGG_FAULT_BACKPRESSURE_S seconds (60 in the full run): the backlog waits in the broker,
    the bridge's RSS stays bounded (< 200 MB, no steady growth), and after a normal bridge
    drains the rest, every event is stored exactly once. Measured: bridge RSS 44-46 MB
    throughout; Mosquitto 9 -> 18-24 MB in 15 s, 9 -> 25 MB in 60 s (580,000 published)."""
    bridge = bridge_factory(durability="full", batch_size="5")
    assert bridge.process is not None
    assert broker.process is not None
    bridge_pid, broker_pid = bridge.process.pid, broker.process.pid
    samples: list[tuple[float, float, float]] = []
    published: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(0.5):
            samples.append((time.monotonic() - t0, rss_mb(bridge_pid), rss_mb(broker_pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    deadline = time.monotonic() + BACKPRESSURE_S
    seed = 100
    try:
        while time.monotonic() < deadline:
            chunk = make_stream(5_000, 0.2, seed=seed)
            publish_raw(broker.port, chunk)
            published += chunk
            seed += 1
    finally:
        stop.set()
        sampler.join()
    stored_during = wait_for_stats(store_url, lambda s: True).received
    bridge.stop()
    bridge_factory()  # a normal bridge drains what waits in the broker
    want = distinct(published)
    wait_for_stats(store_url, lambda s: s.unique_processed >= want, timeout=120)
    assert_exactly_once(store_url, published)
    bridge_rss = [b for _, b, _ in samples]
    broker_rss = [m for _, _, m in samples]
    third = max(len(samples) // 3, 1)
    print(
        f"\n{BACKPRESSURE_S:.0f}s: published {len(published)}, stored {stored_during} meanwhile;"
        f" bridge RSS {min(bridge_rss):.0f}-{max(bridge_rss):.0f} MB"
        f" (first third max {max(bridge_rss[:third]):.0f}, last third max"
        f" {max(bridge_rss[-third:]):.0f}); mosquitto RSS {broker_rss[0]:.0f}->"
        f"{broker_rss[-1]:.0f} MB"
    )
    assert stored_during < len(published), "the bridge kept up: no backpressure was tested"
    assert max(bridge_rss) < 200
    # No steady growth: the last third peaks within 20 MB of the first third's peak.
    assert max(bridge_rss[-third:]) <= max(bridge_rss[:third]) + 20
    # Mosquitto holds the backlog (max_queued_messages/bytes cap it); here it stays well below.
    assert max(broker_rss) < 1024


def test_soak_short_run_holds_rate_without_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.soak` for 15 s (the documented run is 10 minutes): MQTT and HTTP
    publishers together, no errors, every acknowledged event stored."""
    from bench.soak import main

    assert main(["--minutes", "0.25", "--rate", "400", "--dup-ratio", "0.2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["errors"] == 0
    assert result["stored"] == result["distinct_acknowledged"] > 0
    assert result["events_per_s_held"] > 200
