"""The benchmark's publisher: paho-mqtt on one thread, QoS 1, a bounded window, optional pacing.

Run as `python -m bench.flood --port P --count N …`; prints one JSON line:
`{"sent": acknowledged sends, "distinct": distinct events, "seconds": …}`.

No network thread: `publish()` writes straight to the socket when paho has no
loop thread, and `loop()` reads the PUBACKs (and doubles as the pacing sleep).
paho 2.2 stalls silently past 65,535 unacknowledged QoS 1 messages and its own
in-flight cap halves the rate, so paho's cap is off and `--window` bounds what
is outstanding instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.stream import PREFIX, StreamSpec, drafts

DEFAULT_WINDOW = 1000
STALL_TIMEOUT_S = 30.0


class FloodError(Exception):
    """The broker refused us or stopped acknowledging."""


class Flood:
    """One paho client driven from this thread; `send` blocks only while the window is full."""

    def __init__(self, port: int, window: int) -> None:
        self.window = window
        self.outstanding = 0
        self.acked = 0
        self._progress = time.monotonic()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-flood-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self._client.max_inflight_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", port, keepalive=60)
        self._wait(lambda: self._client.is_connected(), "no CONNACK")

    def _on_publish(
        self, _c: paho.Client, _u: Any, _mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        if reason.is_failure:
            raise FloodError(f"broker refused a message: {reason}")
        self.outstanding -= 1
        self.acked += 1
        self._progress = time.monotonic()

    def _wait(self, done: Callable[[], bool], what: str, until: float | None = None) -> None:
        """Read PUBACKs until `done()`, or until the monotonic time `until` if given."""
        while not done():
            timeout = 0.01 if until is None else min(0.01, max(0.0, until - time.monotonic()))
            rc = self._client.loop(timeout)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise FloodError(f"connection lost: {paho.error_string(rc)}")
            if until is not None and time.monotonic() >= until:
                return
            if time.monotonic() - self._progress > STALL_TIMEOUT_S:
                raise FloodError(f"{what} for {STALL_TIMEOUT_S:g}s")

    def send(self, topic: str, body: bytes) -> None:
        if self.outstanding >= self.window:
            self._wait(lambda: self.outstanding < self.window, "broker acknowledged nothing")
        self.outstanding += 1
        info = self._client.publish(topic, body, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise FloodError(f"publish failed: {paho.error_string(info.rc)}")

    def pause_until(self, when: float) -> None:
        """Pace: read PUBACKs meanwhile, so the window drains while we wait."""
        self._wait(lambda: False, "", until=when)

    def flush(self) -> None:
        self._progress = time.monotonic()
        self._wait(lambda: self.outstanding == 0, "broker acknowledged nothing")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop(0.1)


def flood(port: int, spec: StreamSpec, *, rate: float, window: int) -> dict[str, Any]:
    client = Flood(port, window)
    try:
        start = time.monotonic()
        for i, draft in enumerate(drafts(spec)):
            if rate > 0:
                due = start + i / rate
                if due > time.monotonic():
                    client.pause_until(due)
            client.send(PREFIX + draft.topic, draft.body(time.time()))
        client.flush()
        seconds = time.monotonic() - start
    finally:
        client.close()
    return {
        "sent": client.acked,
        "distinct": spec.distinct,
        "seconds": round(seconds, 3),
        "rate": round(client.acked / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dup-ratio", type=float, default=0.0)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = unpaced")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    args = parser.parse_args(argv)
    spec = StreamSpec(args.count, args.dup_ratio, args.payload_bytes, args.seed)
    try:
        summary = flood(args.port, spec, rate=args.rate, window=args.window)
    except FloodError as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
