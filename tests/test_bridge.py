"""The bridge end to end: a real Mosquitto, the real `logagg bridge` process, a real store."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bridge.store import open_reader, parse_store_url
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    LOGAGG,
    StartBridge,
    assert_exactly_once,
    make_stream,
    publish_raw,
    received_at_least,
    wait_for_stats,
)

pytestmark = pytest.mark.broker


def test_bridge_drops_and_counts_duplicates(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """5,000 events with 20% duplicates: exact counts, per topic too."""
    bridge_factory()
    stream = make_stream(5000, 0.2)
    publish_raw(broker.port, stream)
    stats = wait_for_stats(store_url, lambda s: s.received >= 5000)
    assert (stats.unique_processed, stats.duplicate_dropped, stats.rejected) == (4000, 1000, 0)
    assert sum(t.unique_processed for t in stats.topics.values()) == 4000
    assert set(stats.topics) == {f"t{i}" for i in range(5)}
    assert_exactly_once(store_url, stream)


def test_bridge_logs_each_duplicate_by_name(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """A duplicate is logged with its topic and event_id."""
    bridge = bridge_factory()
    (message,) = make_stream(1, 0.0)
    publish_raw(broker.port, [message, message])
    wait_for_stats(store_url, lambda s: s.received == 2)
    event_id = json.loads(message[1])["event_id"]
    bridge.stop()
    assert f"duplicate dropped: topic=t0 event_id={event_id}" in bridge.output()


def test_bridge_restart_keeps_dedup(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Dedup lives in the store: events re-sent after a restart are duplicates."""
    stream = make_stream(500, 0.0)
    first = bridge_factory()
    publish_raw(broker.port, stream)
    wait_for_stats(store_url, lambda s: s.received == 500)
    assert first.stop() == 0
    bridge_factory()
    publish_raw(broker.port, stream)
    stats = wait_for_stats(store_url, lambda s: s.received == 1000)
    assert (stats.unique_processed, stats.duplicate_dropped) == (500, 500)


# slow: restarts the bridge twice per MQTT version
@pytest.mark.slow
@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
def test_bridge_retained_event_is_counted_once_over_restarts(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str, mqtt_version: str
) -> None:
    """A retained event published before the bridge's first subscribe and one published
    live: each stored and counted once over three restarts, though the broker re-sends
    retained messages on every subscribe (MQTT 5: retain handling 1; 3.1.1: the inbox
    skips retained copies on a session the broker kept)."""
    early, live, *markers = make_stream(5, 0.0, seed=7)
    publish_raw(broker.port, [early], retain=True)  # no subscriber yet: kept as retained only
    bridge = bridge_factory(mqtt_version=mqtt_version)
    publish_raw(broker.port, [live], retain=True)
    publish_raw(broker.port, [markers[0]])
    stats = wait_for_stats(store_url, lambda s: s.received >= 3)
    assert (stats.received, stats.unique_processed, stats.duplicate_dropped) == (3, 3, 0)
    for restart, marker in enumerate(markers[1:], start=1):
        assert bridge.stop() == 0
        bridge = bridge_factory(mqtt_version=mqtt_version)
        # In order after whatever the subscribe re-sent: once it is in, any copy would be.
        publish_raw(broker.port, [marker])
        stats = wait_for_stats(store_url, received_at_least(3 + restart))
        assert (stats.received, stats.unique_processed, stats.duplicate_dropped) == (
            3 + restart,
            3 + restart,
            0,
        ), f"after restart {restart}"
    assert_exactly_once(store_url, [early, live, *markers])


def test_bridge_rejects_malformed_messages_and_keeps_going(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Bad input is recorded with a reason and acked; valid events around it are stored."""
    bridge = bridge_factory()
    good = make_stream(2, 0.0)
    bad = [
        ("logs/t0", b"\xff\xfe"),
        ("logs/t0", b"not json"),
        ("logs/t0", b'{"event_id": "x"}'),
        ("logs/t0", json.dumps({**json.loads(good[0][1]), "topic": "elsewhere"}).encode()),
        ("logs/t0", b"x" * 300_000),
    ]
    publish_raw(broker.port, [good[0], *bad, good[1]])
    stats = wait_for_stats(store_url, lambda s: s.received == 7)
    assert (stats.unique_processed, stats.rejected) == (2, 5)
    assert stats.rejected_by_code == {
        "not_utf8": 1,
        "not_json": 1,
        "schema": 1,
        "topic_mismatch": 1,
        "too_large": 1,
    }
    rejected = open_reader(parse_store_url(store_url)).rejected(after=0, limit=10)
    assert "timestamp: Field required" in rejected[2].reason
    assert bridge.process is not None
    assert bridge.process.poll() is None
    # Acked: a restart does not bring them back. The broker delivers the session's messages
    # in order, so any redelivered copy would be stored before this marker.
    bridge.stop()
    bridge_factory()
    (marker,) = make_stream(1, 0.0, seed=2)
    publish_raw(broker.port, [marker])
    assert wait_for_stats(store_url, lambda s: s.unique_processed == 3).received == 8


def test_bridge_stores_backlog_queued_while_it_was_down(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """The persistent session keeps what was published while the bridge was away."""
    bridge = bridge_factory()
    wait_for_stats(store_url, lambda s: s.uptime_s is not None)
    assert bridge.stop() == 0
    stream = make_stream(3000, 0.1)
    publish_raw(broker.port, stream)
    bridge_factory()
    wait_for_stats(store_url, lambda s: s.received >= 3000)
    assert_exactly_once(store_url, stream)


def test_bridge_acks_only_after_commit(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str, tmp_path: Path
) -> None:
    """Killed between receive and commit, the bridge gets the message back: no ack went out.

    A held write lock on the database keeps the bridge from committing; it is then
    SIGKILLed. Had it acked on receipt, the broker would not redeliver.
    """
    bridge = bridge_factory()
    wait_for_stats(store_url, lambda s: s.uptime_s is not None)
    db = store_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        stream = make_stream(50, 0.0)
        publish_raw(broker.port, stream)
        deadline = time.monotonic() + 20
        while "store unavailable" not in bridge.output():
            assert time.monotonic() < deadline, bridge.output()
            time.sleep(0.1)
        bridge.stop(signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()
    assert open_reader(parse_store_url(store_url)).stats().received == 0
    bridge_factory()
    wait_for_stats(store_url, lambda s: s.received >= 50)
    assert_exactly_once(store_url, stream)


# slow: waits out a lock through a bridge process; the fast set has the store's own test
# (test_store.py::test_sqlite_unwritable_store_raises_store_unavailable)
@pytest.mark.slow
def test_bridge_waits_out_a_locked_store_and_loses_nothing(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Store unavailable: the bridge holds the batch unacked, retries, then commits it."""
    bridge = bridge_factory()
    wait_for_stats(store_url, lambda s: s.uptime_s is not None)
    blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    stream = make_stream(200, 0.0)
    publish_raw(broker.port, stream)
    deadline = time.monotonic() + 20
    while "store unavailable" not in bridge.output():  # it has tried and is holding the batch
        assert time.monotonic() < deadline, bridge.output()
        time.sleep(0.1)
    blocker.rollback()
    blocker.close()
    wait_for_stats(store_url, lambda s: s.received >= 200)
    assert_exactly_once(store_url, stream)
    assert "store available again after" in bridge.output()


def test_ready_command_says_when_the_named_bridge_has_subscribed(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """`logagg ready` is a bridge's health check: 0 only while the bridge it names (by client
    id, as `logagg bridge` names itself) has subscribed and lives; another's does not count."""
    ready = [*LOGAGG, "ready", "--store", store_url, "--client-id"]
    assert subprocess.run([*ready, "ready-a"], capture_output=True).returncode == 1
    bridge = bridge_factory(client_id="ready-a")
    done = subprocess.run([*ready, "ready-a"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ready: bridge ready-a up" in done.stdout
    other = subprocess.run([*ready, "ready-b"], capture_output=True, text=True)
    assert other.returncode == 1
    assert "not ready: bridge ready-b has no heartbeat" in other.stderr
    bridge.stop()


def test_bridge_sigterm_finishes_cleanly(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """SIGTERM: the batch in hand is committed and acked, and the exit code is 0."""
    bridge = bridge_factory()
    publish_raw(broker.port, make_stream(100, 0.0))
    wait_for_stats(store_url, lambda s: s.received == 100)
    assert bridge.stop(signal.SIGTERM) == 0
    assert "bridge stopped after 100 committed messages" in bridge.output()
