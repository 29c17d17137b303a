"""What the broker says about itself: Mosquitto's `$SYS/broker/…` counters, read by the sidecar.

Mosquitto acknowledges a message to its publisher and may then drop it without
telling anyone but these counters: past `max_queued_messages`/`max_queued_bytes`
for a client that is offline or not acknowledging (`publish/messages/dropped`).
logagg cannot stop that, so it shows it: `/stats`, `/metrics`, `/healthz` and
the dashboard say how many the broker dropped and how full its queue is against
the limits it was configured with (which the broker does not publish: they are
settings here, defaulting to those of `supervise/mosquitto.conf`).

A connection of its own, not the publishing one: that one connects on demand and
exists for PUBACKs (its watcher expects no message), while this one must stay
subscribed whether or not anyone publishes, reconnecting on its own. QoS 0 and a
clean session: Mosquitto retains its `$SYS` values, so every (re)subscribe brings
the latest at once, and they update every `sys_interval` (10 s by default).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import aiomqtt

from api.settings import ApiSettings
from bridge.backoff import Backoff
from bridge.broker import make_client

logger = logging.getLogger("logagg.api.broker_stats")

# At this share of either queue limit, /healthz warns: the broker drops past the limit.
QUEUE_WARN_AT = 0.8
CONNECT_TIMEOUT_S = 10.0

DROPPED = "$SYS/broker/publish/messages/dropped"
STORED_MESSAGES = "$SYS/broker/store/messages/count"
STORED_BYTES = "$SYS/broker/store/messages/bytes"
RETAINED = "$SYS/broker/retained messages/count"
UPTIME = "$SYS/broker/uptime"  # "123 seconds"
TOPICS = (DROPPED, STORED_MESSAGES, STORED_BYTES, RETAINED, UPTIME)


@dataclass(frozen=True, slots=True)
class BrokerReport:
    """The broker's latest counters; None while there is no reading (not connected yet, a
    broker without `$SYS`, `sys_interval 0`, or an ACL that hides it)."""

    dropped: int | None
    queued_messages: int | None
    queued_bytes: int | None
    max_messages: int
    max_bytes: int
    uptime_s: int | None

    @property
    def known(self) -> bool:
        return self.dropped is not None and self.queued_bytes is not None

    def warning(self) -> str | None:
        """What an operator must hear about: drops so far, or a queue near its limit."""
        if self.dropped:
            since = "it started" if self.uptime_s is None else f"it started, {self.uptime_s}s ago"
            return (
                f"the broker dropped {self.dropped} acknowledged messages since {since}:"
                " a client's queue went over its limit"
            )
        for used, limit, unit in (
            (self.queued_messages, self.max_messages, "messages"),
            (self.queued_bytes, self.max_bytes, "bytes"),
        ):
            if used is not None and limit and used >= QUEUE_WARN_AT * limit:
                return (
                    f"the broker holds {used} of its {limit} queued {unit}"
                    f" ({100 * used / limit:.0f}%): past the limit it drops new messages"
                )
        return None

    def stats_fields(self) -> dict[str, int | str | None]:
        """The `broker_*` fields of `/stats`."""
        return {
            "broker_dropped": self.dropped,
            "broker_queued_messages": self.queued_messages,
            "broker_queued_bytes": self.queued_bytes,
            "broker_queue_max_messages": self.max_messages,
            "broker_queue_max_bytes": self.max_bytes,
            "broker_uptime_s": self.uptime_s,
            "broker_warning": self.warning(),
        }


def _number(topic: str, payload: bytes) -> int | None:
    text = payload.decode("ascii", "replace").strip()
    if topic == UPTIME:
        text = text.removesuffix("seconds").strip()
    return int(text) if text.isdigit() else None


class BrokerStats:
    """Subscribes to the broker's `$SYS` counters and keeps the latest of each."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._values: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def report(self) -> BrokerReport:
        values = dict(self._values)  # one snapshot: the loop thread replaces entries
        stored, retained = values.get(STORED_MESSAGES), values.get(RETAINED, 0)
        return BrokerReport(
            dropped=values.get(DROPPED),
            # The store holds the queued messages and the retained ones ($SYS's among them).
            queued_messages=None if stored is None else max(stored - retained, 0),
            queued_bytes=values.get(STORED_BYTES),
            max_messages=self._settings.broker_queue_max_messages,
            max_bytes=self._settings.broker_queue_max_bytes,
            uptime_s=values.get(UPTIME),
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broker-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))

    async def _run(self) -> None:
        backoff = Backoff()
        client = make_client(
            self._settings.address,
            self._settings.credentials,
            identifier=f"logagg-api-stats-{uuid.uuid4().hex[:12]}",
            timeout=CONNECT_TIMEOUT_S,
            logger=logging.getLogger("logagg.api.mqtt"),
        )
        while True:
            try:
                async with client:
                    await client.subscribe([(topic, 0) for topic in TOPICS])
                    backoff.reset()
                    async for message in client.messages:
                        topic = message.topic.value
                        if isinstance(message.payload, bytes):
                            value = _number(topic, message.payload)
                            if value is not None:
                                self._values[topic] = value
            except aiomqtt.MqttError as exc:
                # Counters from a broker we cannot reach are not current: say "unknown".
                self._values = {}
                delay = backoff.delay()
                logger.info("broker $SYS counters unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
