"""Hostile input through a real Mosquitto and a real bridge.

Random bytes, invalid UTF-8, deep nesting, huge strings, NaN, numbers where
strings belong, a wrong topic field, empty fields and oversize bodies, mixed with
valid events and their duplicates: the bridge stays up, stores every valid event
once, and counts every bad message as rejected with a reason.

`LOGAGG_FUZZ_COUNT` sets how many messages the full run sends (default 100,000, a slow
test); the fast set sends 5,000 of the same mix.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from bridge.event import MAX_DEPTH, MAX_NAME_LENGTH, Event, Rejection, parse_message
from bridge.store import open_reader, parse_store_url
from bridge.store.base import KEEP_REJECTED
from supervise.mosquitto import Mosquitto
from tests.helpers import Message, StartBridge, publish_raw, wait_for_stats

pytestmark = pytest.mark.broker

FUZZ_COUNT = int(os.environ.get("LOGAGG_FUZZ_COUNT", "100000"))
# Small, so oversize bodies are cheap to send; Mosquitto's own limit (1 MiB) is far above.
MAX_PAYLOAD = 8192
STAMP = "2026-11-26T12:00:00+00:00"


def _doc(rng: random.Random, **fields: object) -> bytes:
    doc: dict[str, object] = {
        "event_id": f"bad-{rng.getrandbits(64):x}",
        "timestamp": STAMP,
        "source": "fuzz",
        "payload": {"n": rng.random()},
    }
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def _nest(rng: random.Random, depth: int) -> bytes:
    return _doc(rng, payload="NEST").replace(b'"NEST"', b'{"k":[' * depth + b"1" + b"]}" * depth)


NAMES = ["event_id", "source"]
NAN = float("nan")

# Each maker returns (mqtt topic, body) for one bad message.
BAD: dict[str, Callable[[random.Random], Message]] = {
    "random bytes": lambda r: ("logs/fuzz", r.randbytes(r.randint(0, 300))),
    "invalid utf-8": lambda r: ("logs/fuzz", _doc(r).replace(b"fuzz", b"fu\xff\xfez")),
    "deep nesting": lambda r: ("logs/fuzz", _nest(r, r.randint(MAX_DEPTH, 3000))),
    "huge event_id": lambda r: ("logs/fuzz", _doc(r, event_id="x" * r.randint(201, 4000))),
    "huge topic": lambda r: ("logs/" + "t" * r.randint(MAX_NAME_LENGTH + 1, 1000), _doc(r)),
    "oversize": lambda r: ("logs/fuzz", _doc(r, payload={"x": "y" * r.randint(8200, 60_000)})),
    "NaN": lambda r: ("logs/fuzz", _doc(r, payload={"x": r.choice([NAN, 1e999, -1e999])})),
    "number for string": lambda r: ("logs/fuzz", _doc(r, **{r.choice(NAMES): r.random()})),
    "epoch timestamp": lambda r: ("logs/fuzz", _doc(r, timestamp=1764151200)),
    "no offset": lambda r: ("logs/fuzz", _doc(r, timestamp="2026-11-26T12:00:00")),
    "wrong topic field": lambda r: ("logs/fuzz", _doc(r, topic="elsewhere")),
    "empty field": lambda r: ("logs/fuzz", _doc(r, **{r.choice(NAMES): ""})),
    "missing field": lambda r: ("logs/fuzz", _doc(r, **{r.choice([*NAMES, "payload"]): ...})),
    "empty body": lambda r: ("logs/fuzz", b""),
    "not an object": lambda r: ("logs/fuzz", r.choice([b"[]", b'"x"', b"1", b"null"])),
    "NUL or surrogate": lambda r: (
        "logs/fuzz",
        _doc(r, source="SRC").replace(b'"SRC"', r.choice([b'"a\\u0000"', b'"\\ud800"'])),
    ),
    "empty topic": lambda r: ("logs/", _doc(r)),
}


def fuzz_stream(count: int, seed: int) -> tuple[list[Message], Counter[str], int]:
    """`count` messages, about half valid (a tenth of those repeats), the rest bad; with
    how many of each kind of bad message, and how many distinct valid events."""
    rng = random.Random(seed)
    kinds = list(BAD)
    stream: list[Message] = []
    bad: Counter[str] = Counter()
    valid: list[Message] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.45:
            body = _doc(rng, event_id=f"ok-{i}", payload={"i": i, "text": "é" * rng.randint(0, 50)})
            valid.append((f"logs/t{i % 7}", body))
            stream.append(valid[-1])
        elif roll < 0.5 and valid:
            stream.append(rng.choice(valid))
        else:
            kind = rng.choice(kinds)
            bad[kind] += 1
            stream.append(BAD[kind](rng))
    return stream, bad, len(valid)


def test_fuzz_stream_is_what_it_claims() -> None:
    """The generator's bad messages are bad and its valid ones valid, by the parser."""
    stream, bad, distinct = fuzz_stream(5000, seed=1)
    rejected = [m for m in stream if isinstance(parse(m), Rejection)]
    assert len(rejected) == sum(bad.values())
    assert len({m for m in stream if isinstance(parse(m), Event)}) == distinct
    assert set(bad) == set(BAD)


def parse(message: Message) -> Event | Rejection:
    return parse_message(*message, max_payload_bytes=MAX_PAYLOAD)


@pytest.mark.parametrize(
    "count", [5000, pytest.param(FUZZ_COUNT, id="full", marks=pytest.mark.slow)]
)
def test_fuzz_through_broker_and_bridge(
    broker: Mosquitto, bridge_factory: StartBridge, store_url: str, count: int
) -> None:
    """The bridge stays up; valid events stored once; every bad one rejected with a reason."""
    stream, bad, distinct = fuzz_stream(count, seed=42)
    bridge = bridge_factory(max_payload_bytes=str(MAX_PAYLOAD))
    started = time.monotonic()
    publish_raw(broker.port, stream)
    stats = wait_for_stats(store_url, lambda s: s.received >= len(stream), timeout=300)
    elapsed = time.monotonic() - started

    assert bridge.process is not None
    assert bridge.process.poll() is None, bridge.output()[-3000:]
    assert "Traceback" not in bridge.output()
    assert stats.received == len(stream)
    assert stats.rejected == sum(bad.values())
    codes = Counter(r.code for r in map(parse, stream) if isinstance(r, Rejection))
    assert stats.rejected_by_code == dict(codes)
    assert stats.unique_processed == distinct
    assert stats.duplicate_dropped == len(stream) - distinct - stats.rejected
    store = open_reader(parse_store_url(store_url))
    try:
        kept = store.rejected(after=0, limit=len(stream))
    finally:
        store.close()
    assert len(kept) == min(stats.rejected, KEEP_REJECTED)
    assert all(row.reason.strip() for row in kept)
    print(f"fuzz: {len(stream)} messages ({stats.rejected} bad) stored in {elapsed:.1f}s")
