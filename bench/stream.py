"""The benchmark's event stream: cheap to make, so the publisher measures the broker, not itself.

Each event is rendered once, up to its `sent_at`; the sender appends the send
time, so every copy carries the moment it left and latency can be measured
from the stored payload. Exactly `round(count * dup_ratio)` sends repeat an
event sent earlier (drawn from the recent ones, as retries are), so the
number of distinct events is known in advance and checked against the store.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from publisher.stream import spread

TOPICS = tuple(f"bench{i}" for i in range(5))
PREFIX = "logs/"
# Repeats are drawn from this many recent events: retries happen soon after the first send.
HISTORY = 1000


@dataclass(frozen=True, slots=True)
class StreamSpec:
    count: int
    dup_ratio: float
    payload_bytes: int
    seed: int = 1

    @property
    def repeats(self) -> int:
        return min(round(self.count * self.dup_ratio), self.count - 1)

    @property
    def distinct(self) -> int:
        return self.count - self.repeats


@dataclass(frozen=True, slots=True)
class Draft:
    """One event rendered up to its send time: `head + b"<sent_at>}}"` is the MQTT body."""

    topic: str
    head: bytes

    def body(self, sent_at: float) -> bytes:
        return b"%s%.6f}}" % (self.head, sent_at)


def drafts(spec: StreamSpec, *, with_topic: bool = False) -> Iterator[Draft]:
    """The stream, lazily: event ids are `<run>-<n>` like `logagg publish`'s, the run drawn
    from the seed and the clock so two runs never collide in one store. `with_topic` puts
    the `topic` field in the body, as HTTP needs."""
    rng = random.Random(spec.seed)
    # The clock mixed into the 12 hex digits kept (it only reaches a UUID's low bits).
    run = f"{(rng.getrandbits(48) ^ time.time_ns()) % 16**12:012x}"
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    pad = "x" * max(0, spec.payload_bytes - len('{"n":0,"pad":"","sent_at":0000000000.000000}'))
    is_repeat = spread(rng, spec.count - 1, spec.repeats)
    history: deque[Draft] = deque(maxlen=HISTORY)
    n = 0
    for i in range(spec.count):
        if i > 0 and next(is_repeat):
            yield rng.choice(history)
            continue
        topic = TOPICS[n % len(TOPICS)]
        fields = {"topic": topic} if with_topic else {}
        fields |= {"event_id": f"{run}-{n}", "timestamp": stamp, "source": "bench"}
        head = json.dumps(fields, separators=(",", ":"))[:-1]
        draft = Draft(topic, f'{head},"payload":{{"n":{n},"pad":"{pad}","sent_at":'.encode())
        history.append(draft)
        n += 1
        yield draft
