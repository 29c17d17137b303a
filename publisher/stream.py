"""The event sequence a run sends: pure generation, reproducible from a seed.

Exactly `round(count * dup_ratio)` sends repeat an event sent earlier in the
run, so the number of distinct events is known in advance and can be checked
against the store. A repeat is the same `Message` object sent again: same
topic, event id and bytes, as a publisher retrying on its own would send.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Repeats are drawn from this many recent events: retries happen soon after the first send,
# and the run holds only this much however long it is.
HISTORY = 1000
# An out-of-order event is stamped up to this far in the past.
MAX_SHIFT = timedelta(minutes=5)
# `,"sent_at":1700000000.123456`, added at send time, counted in the payload size.
_SENT_AT_CHARS = 29

_LEVELS = ("debug", "info", "info", "info", "info", "warning", "error")
_MESSAGES = {
    "auth": (
        "login succeeded for user u{n}",
        "login failed for user u{n}: bad password",
        "token refreshed for session s{n}",
    ),
    "billing": (
        "invoice inv-{n} charged",
        "payment for invoice inv-{n} declined by card issuer",
        "refund issued for order o{n}",
    ),
    "api": (
        "GET /v1/orders/{n} 200",
        "POST /v1/orders 201",
        "GET /v1/users/{n} 404",
    ),
    "db": (
        "slow query on orders table",
        "connection pool at {n}% capacity",
        "checkpoint complete",
    ),
    "edge": (
        "cache miss for /static/app-{n}.js",
        "TLS handshake failed from 10.0.{n}.7",
        "rate limit applied to client c{n}",
    ),
}
_GENERIC = ("request {n} handled", "job {n} finished", "retrying operation {n}")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class Message:
    """One event on its way out.

    Its bytes are made at the first send, so `payload.sent_at` is when it first left and
    every repeat is byte-identical. `acked` is set when any copy is first acknowledged,
    which is what makes the distinct count exact.
    """

    topic: str
    event_id: str
    timestamp: datetime
    source: str
    payload: dict[str, Any]
    acked: bool = False
    _body: bytes | None = field(default=None, repr=False)

    def body(self) -> bytes:
        if self._body is None:
            event = {
                "topic": self.topic,
                "event_id": self.event_id,
                "timestamp": self.timestamp.isoformat(),
                "source": self.source,
                "payload": {**self.payload, "sent_at": time.time()},
            }
            self._body = json.dumps(event, separators=(",", ":")).encode()
        return self._body


def spread(rng: random.Random, n: int, k: int) -> Iterator[bool]:
    """Exactly `k` Trues among `n`, every placement equally likely, in constant memory
    (selection sampling, Knuth's Algorithm S). The benchmark's stream places its repeats
    with it too."""
    for remaining in range(n, 0, -1):
        pick = rng.random() * remaining < k
        k -= pick
        yield pick


def _payload(rng: random.Random, topic: str, seq: int, payload_bytes: int) -> dict[str, Any]:
    templates = _MESSAGES.get(topic.split(".")[0], _GENERIC)
    payload: dict[str, Any] = {
        "seq": seq,
        "level": rng.choice(_LEVELS),
        "message": rng.choice(templates).format(n=rng.randrange(1, 100)),
        "host": f"{topic.split('.')[0]}-{rng.randrange(1, 9)}",
        "duration_ms": round(rng.lognormvariate(3, 1), 1),
    }
    size = len(json.dumps(payload, separators=(",", ":"))) + _SENT_AT_CHARS
    pad = payload_bytes - size - len(',"pad":""')
    if pad > 0:
        payload["pad"] = "x" * pad
    return payload


def generate(
    *,
    count: int,
    topics: Sequence[str],
    dup_ratio: float,
    out_of_order: float,
    payload_bytes: int,
    source: str,
    run_id: str,
    seed: int | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Iterator[Message]:
    """`count` messages; event ids are `<run_id>-<n>`, so a fresh run id keeps runs apart
    even when they share a seed. Lazy: timestamps come from `clock` as each one is made."""
    rng = random.Random(seed)
    repeats = min(round(count * dup_ratio), count - 1)
    distinct = count - repeats
    shifted = spread(rng, distinct, round(distinct * out_of_order))
    # The first send cannot repeat anything.
    is_repeat = spread(rng, count - 1, repeats)
    history: deque[Message] = deque(maxlen=HISTORY)
    seq = 0
    for i in range(count):
        if i > 0 and next(is_repeat):
            yield rng.choice(history)
            continue
        timestamp = clock()
        if next(shifted):
            timestamp -= timedelta(seconds=rng.uniform(1, MAX_SHIFT.total_seconds()))
        topic = rng.choice(topics)
        message = Message(
            topic=topic,
            event_id=f"{run_id}-{seq}",
            timestamp=timestamp,
            source=source,
            payload=_payload(rng, topic, seq, payload_bytes),
        )
        history.append(message)
        seq += 1
        yield message
