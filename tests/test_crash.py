"""No loss under crashes: the bridge SIGKILLed mid-stream, the broker restarted mid-stream."""

from __future__ import annotations

import signal
import time

import pytest

from supervise.mosquitto import Mosquitto
from tests.helpers import (
    AUTOSAVE_S,
    StartBridge,
    assert_exactly_once,
    distinct,
    make_stream,
    publish_raw,
    stream_with_kills,
    wait_for_stats,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_bridge_sigkilled_twice_mid_stream_stores_each_event_once(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """20,000 events, 30% duplicates, two SIGKILLs while the stream flows: exactly once."""
    stream = make_stream(20_000, 0.3, seed=7)
    stream_with_kills(broker, bridge_factory, store_url, stream, [3_000, 9_000])


def test_broker_restarted_mid_stream_loses_nothing(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """A graceful broker restart while the bridge drains a backlog: it reconnects, resumes
    its session, and every event is stored once."""
    bridge = bridge_factory()
    bridge.stop()
    backlog = make_stream(10_000, 0.2, seed=3)
    publish_raw(broker.port, backlog)
    bridge = bridge_factory(wait=False)
    wait_for_stats(store_url, lambda s: s.received >= 1_000, timeout=60)
    broker.stop(signal.SIGTERM)
    broker.start()
    later = make_stream(2_000, 0.2, seed=4)
    publish_raw(broker.port, later)
    everything = backlog + later
    wait_for_stats(store_url, lambda s: s.unique_processed >= distinct(everything), timeout=120)
    assert_exactly_once(store_url, everything)
    assert "broker unreachable" in bridge.output()


def test_broker_sigkilled_keeps_what_it_saved(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str
) -> None:
    """Mosquitto saves its queue every `autosave_interval` (2 s in our config): a backlog
    older than that survives a SIGKILL of the broker. (What arrived since the last save is
    lost: Mosquitto's own window, documented in the README.)"""
    bridge = bridge_factory()
    bridge.stop()
    backlog = make_stream(5_000, 0.2, seed=11)
    publish_raw(broker.port, backlog)
    time.sleep(AUTOSAVE_S + 1.5)
    broker.stop(signal.SIGKILL)
    broker.start()
    bridge_factory()
    wait_for_stats(store_url, lambda s: s.unique_processed >= distinct(backlog), timeout=60)
    assert_exactly_once(store_url, backlog)
