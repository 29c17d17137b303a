"""Issue 9, "no poison batch": memory stays bounded under events built to cost the most,
measured from /proc on the real broker, bridge and sidecar (bench/adversarial.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.adversarial import BRIDGE_TARGET_MB, SIDECAR_TARGET_MB, measure
from bench.probe import peak_rss_mb, rss_mb
from supervise.mosquitto import Mosquitto
from tests.helpers import StartBridge, publish_raw, wait_for_stats

pytestmark = pytest.mark.broker


# Slow: it drains a backlog of maximal events and posts 16 MiB bodies from four clients, all
# measured from /proc (~10 s on an idle machine).
@pytest.mark.slow
def test_adversarial_corpus_keeps_bridge_and_sidecar_memory_bounded(tmp_path: Path) -> None:
    """A backlog of maximal events (1 in 20 over the node limit) is drained exactly once,
    the poison counted as rejected; 4 readers page through it all and 4 clients post
    16 MiB bodies at once: bridge RSS <= 200 MB, sidecar <= 400 MB, counts exact (checked
    inside `measure`, which raises on any difference)."""
    result = measure(40, tmp_path)
    assert result["over_the_limits"] == 2
    bridge, sidecar = result["bridge_rss_mb"], result["sidecar_rss_mb"]
    assert bridge["baseline"] < bridge["peak"] <= BRIDGE_TARGET_MB, result
    assert sidecar["baseline"] < sidecar["peak"] <= SIDECAR_TARGET_MB, result


def test_bridge_reads_a_backlog_a_byte_budget_at_a_time(
    broker: Mosquitto,
    bridge_factory: StartBridge,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog queued while the bridge was down arrives ahead of its SUBACK, up to the
    receive maximum (2,000 messages: 500 MB at 256 KiB each); the bridge still holds only
    its byte budget (here 64 KiB a batch): 30 MB of backlog raise its RSS by under 15 MB."""
    monkeypatch.setenv("LOGAGG_MAX_BATCH_BYTES", str(64 * 1024))
    first = bridge_factory()
    time.sleep(0.5)
    assert first.process is not None
    baseline = rss_mb(first.process.pid)
    first.stop()
    head = {"timestamp": "2026-12-01T00:00:00Z", "source": "test"}
    backlog = [
        ("logs/big", json.dumps({**head, "event_id": str(i), "payload": {"s": "x" * 250_000}}))
        for i in range(120)
    ]
    publish_raw(broker.port, [(topic, body.encode()) for topic, body in backlog])
    second = bridge_factory(wait=False)
    stats = wait_for_stats(store_url, lambda s: s.received == 120)
    assert (stats.unique_processed, stats.rejected) == (120, 0)
    assert second.process is not None
    assert peak_rss_mb(second.process.pid) - baseline < 15
