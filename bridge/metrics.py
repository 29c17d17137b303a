"""The bridge's own Prometheus metrics, served with `--metrics-port` (off by default).

They say how the bridge is doing (batches, commit latency, the broker link,
store retries); what happened to the events is counted by the store, and the
sidecar serves that. Everything is observed once per batch, never per message,
so the receive path costs the same with or without them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

logger = logging.getLogger("logagg.bridge.metrics")

# Up to the largest batch size the settings allow (10,000).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
# From a one-message commit on a fast disk to a store that makes the bridge wait.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsUnavailable(Exception):
    """The metrics port could not be opened."""


class BridgeMetrics:
    """One registry per bridge, so tests can run several in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._received = Counter(
            "logagg_bridge_messages_received",
            "MQTT messages taken into a batch",
            registry=self.registry,
        )
        self._committed = Counter(
            "logagg_bridge_messages_committed",
            "Messages whose batch the store committed",
            registry=self.registry,
        )
        self._acked = Counter(
            "logagg_bridge_messages_acked",
            "PUBACKs sent after commit (a message from a lost connection is redelivered instead)",
            registry=self.registry,
        )
        self._store_retries = Counter(
            "logagg_bridge_store_retries",
            "Batch writes retried because the store was unavailable",
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "logagg_bridge_batch_size_messages",
            "Messages per committed batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._commit_duration = Histogram(
            "logagg_bridge_commit_duration_seconds",
            "Time to parse and commit one batch (the successful attempt)",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self._connected = Gauge(
            "logagg_bridge_broker_connected",
            "1 while subscribed to the broker, 0 while reconnecting",
            registry=self.registry,
        )

        self._store_full = Gauge(
            "logagg_bridge_store_full",
            "1 while the store has no room (its cap reached, or its disk full): nothing is"
            " written or acknowledged",
            registry=self.registry,
        )

    def received(self, messages: int) -> None:
        self._received.inc(messages)

    def committed(self, messages: int, seconds: float) -> None:
        self._committed.inc(messages)
        self._batch_size.observe(messages)
        self._commit_duration.observe(seconds)

    def acked(self, messages: int) -> None:
        self._acked.inc(messages)

    def store_retry(self) -> None:
        self._store_retries.inc()

    def store_full(self, full: bool) -> None:
        self._store_full.set(1 if full else 0)

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)


@contextmanager
def serving(registry: CollectorRegistry, host: str, port: int) -> Iterator[None]:
    """Serve `registry` at http://host:port/metrics for the duration; port 0 serves nothing."""
    if not port:
        yield
        return
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    logger.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
