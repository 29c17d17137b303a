"""Memory under an adversarial corpus: events each within the limits, built to cost the
most once parsed, against the real broker, bridge and sidecar; prints one JSON line with
the peak RSS of each (VmHWM, from /proc) next to a baseline measured in the same run.

    python -m bench.adversarial                 # BENCHMARKS.md's figures
    python -m bench.adversarial --count 200     # the size tests/test_adversarial.py runs

The corpus (each kind at the defaults' limits: 10,000 nodes, 256 KiB, 64 levels):
- `dense`: `{"a": [{}, {}, …]}`, one object per node (73 bytes each once parsed);
- `objects`: `[{"a": {}}, …]`, the most memory per byte of text (~30x);
- `deep`: arrays nested to the depth limit, side by side up to the node limit;
- `strings`: one string as long as the size limit allows;
- `keys`: one object with a key per node.
Plus `poison`: 1 message in 20 is the issue's 255 KiB of 85,000 empty objects, over the
node limit: rejected `too_complex`, counted, never parsed.

The bridge meets the corpus as a backlog queued while it was down (the poison batch of
issue 9: the broker redelivers it whole); the sidecar gets 4 concurrent readers paging
`GET /events?limit=1000` through all of it, then 4 concurrent 16 MiB `POST /publish`
bodies of long strings and nested objects, up to the body node limit.

Then, apart, issue 9's rejection flood (`--flood`, 2,000 messages on 60 KB topics): what
it adds to the store's files and to the bridge's log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from api.settings import DEFAULT_MAX_BODY_NODES
from bench.flood import Flood
from bench.probe import peak_rss_mb, rss_mb
from bench.procs import BenchError, Child, start_api, start_bridge
from bench.soak import store_stats
from bridge.event import (
    DEFAULT_MAX_EVENT_NODES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_DEPTH,
    Event,
    parse_message,
)
from bridge.store import Stats, open_reader, parse_store_url
from supervise.mosquitto import Mosquitto, free_port

BRIDGE_TARGET_MB = 200.0
SIDECAR_TARGET_MB = 400.0
MAX_BODY_BYTES = 16 * 1024 * 1024
READERS = 4
POISON_EVERY = 20
# The root and the event's 4 fields (payload among them): the rest is the payload's.
FIELD_NODES = 5
TIMEOUT_S = 120.0


def _compact(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _event(event_id: str, payload: object, **fields: str) -> str:
    """An event's compact JSON, built as text: the generator must not cost what it tests."""
    head = {"event_id": event_id, "timestamp": "2026-12-01T00:00:00Z", "source": "adversarial"}
    return _compact({**head, **fields})[:-1] + ',"payload":' + _compact(payload) + "}"


def _nested(depth: int) -> list[Any]:
    doc: list[Any] = []
    for _ in range(depth - 1):
        doc = [doc]
    return doc


def _payloads(nodes: int, size: int) -> dict[str, object]:
    """One payload of each kind, as large as `nodes` nodes and `size` bytes of event allow."""
    room = nodes - FIELD_NODES - 1  # the payload object itself
    # payload (1) + "a"'s array (1) + chains of MAX_DEPTH - 2 levels: the deepest a field holds.
    chain = MAX_DEPTH - 2
    return {
        "dense": {"a": [{}] * (room - 1)},
        "objects": {"a": [{"a": {}}] * ((room - 1) // 2)},
        "deep": {"a": [_nested(chain)] * ((room - 1) // chain)},
        "strings": {"s": "x" * (size - 200)},
        "keys": {f"k{i:05}": 0 for i in range(room)},
    }


def corpus(count: int, run: str) -> Iterator[tuple[str, bytes]]:
    """`count` MQTT messages (topic, body), the kinds in turn, 1 in POISON_EVERY over the
    node limit. Every kind is checked against the bridge's parser: within the limits."""
    kinds = {
        kind: _event("{id}", payload)
        for kind, payload in _payloads(DEFAULT_MAX_EVENT_NODES, DEFAULT_MAX_PAYLOAD_BYTES).items()
    }
    kinds["poison"] = _event("{id}", {"a": [{}] * 85_000})
    for kind, text in kinds.items():
        parsed = parse_message(f"logs/{kind}", text.replace("{id}", "check").encode())
        if isinstance(parsed, Event) == (kind == "poison"):
            raise BenchError(f"corpus kind {kind} is not what it should be: {parsed!r:.200}")
    valid = itertools.cycle([k for k in kinds if k != "poison"])
    for i in range(count):
        kind = "poison" if i % POISON_EVERY == POISON_EVERY - 1 else next(valid)
        yield f"logs/{kind}", kinds[kind].replace("{id}", f"{run}-{i}", 1).encode()


def maximal_body(index: int) -> bytes:
    """A `POST /publish` body just under 16 MiB and the body node limit: events of long
    strings and `{"a": {}}` objects, each event within its own limits."""
    events = MAX_BODY_BYTES // DEFAULT_MAX_PAYLOAD_BYTES - 1
    per_event = min(DEFAULT_MAX_BODY_NODES // events, DEFAULT_MAX_EVENT_NODES) - FIELD_NODES - 4
    objects = per_event // 2
    filler = DEFAULT_MAX_PAYLOAD_BYTES - 9 * objects - 400
    payload = _compact({"a": [{"a": {}}] * objects, "s": "y" * filler})
    texts = (_event(f"post-{index}-{i}", "PAYLOAD", topic="posted") for i in range(events))
    return ("[" + ",".join(texts) + "]").replace('"PAYLOAD"', payload).encode()


def _wait_stats(store_url: str, done: Callable[[Stats], bool], watch: Child) -> Stats:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        watch.check_alive()
        stats = store_stats(store_url)
        if stats is not None and done(stats):
            return stats
        if time.monotonic() > deadline:
            raise BenchError(f"the store did not get there in {TIMEOUT_S:g}s: {stats}")
        time.sleep(0.1)


def _read_all(api_url: str) -> int:
    """Page through every stored event as a client would; returns how many it read."""
    read, after = 0, 0
    with httpx.Client(base_url=api_url, timeout=60) as client:
        while True:
            page = client.get("/events", params={"limit": 1000, "after": after})
            page.raise_for_status()
            body = page.json()
            if not body["events"]:
                return read
            read += len(body["events"])
            after = body["next_after"]


def _post(api_url: str, body: bytes) -> int:
    with httpx.Client(base_url=api_url, timeout=120) as client:
        answer = client.post("/publish", content=body, headers={"content-type": "application/json"})
    if answer.status_code != 200:
        raise BenchError(f"POST /publish: {answer.status_code} {answer.text[:300]}")
    accepted: int = answer.json()["accepted"]
    return accepted


def measure(count: int, out: Path) -> dict[str, Any]:
    """The whole run in `out`; raises BenchError if a count is wrong or a process dies."""
    store_url = f"sqlite:///{out / 'logagg.db'}"
    run = os.urandom(4).hex()
    with ExitStack() as stack:
        broker = Mosquitto(free_port(), out / "mosquitto")
        broker.start()
        stack.callback(broker.stop)
        # Once to take the session (and a baseline), then down while the backlog queues.
        with start_bridge(broker.url, store_url, "adv-bridge", "normal", out / "bridge.log") as b:
            time.sleep(1)
            bridge_baseline = rss_mb(b.pid)
        flood = Flood(broker.port, window=100)
        poison = 0
        for topic, body in corpus(count, run):
            poison += topic == "logs/poison"
            flood.send(topic, body)
        flood.flush()
        flood.close()
        bridge = stack.enter_context(
            start_bridge(broker.url, store_url, "adv-bridge", "normal", out / "bridge.log")
        )
        started = time.monotonic()
        stats = _wait_stats(store_url, lambda s: s.received >= count, bridge)
        drain_s = time.monotonic() - started
        if (stats.unique_processed, stats.rejected) != (count - poison, poison):
            raise BenchError(f"{count} sent, {poison} over the limits; the store says {stats}")
        bridge_backlog_peak = peak_rss_mb(bridge.pid)

        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        api = stack.enter_context(start_api(broker.url, store_url, api_port, out / "api.log"))
        api_baseline = rss_mb(api.pid)
        with ThreadPoolExecutor(READERS) as pool:
            reads = list(pool.map(_read_all, [api_url] * READERS))
        if reads != [count - poison] * READERS:
            raise BenchError(f"readers read {reads} events, {count - poison} are stored")
        api_read_peak = peak_rss_mb(api.pid)
        bodies = [maximal_body(i) for i in range(READERS)]
        with ThreadPoolExecutor(READERS) as pool:
            accepted = list(pool.map(_post, [api_url] * READERS, bodies))
        api_peak = peak_rss_mb(api.pid)
        posted = sum(accepted)
        stats = _wait_stats(store_url, lambda s: s.received >= count + posted, bridge)
        if (stats.unique_processed, stats.rejected) != (count - poison + posted, poison):
            raise BenchError(f"{posted} more published over HTTP; the store says {stats}")
        bridge_peak = peak_rss_mb(bridge.pid)
    return {
        "messages": count,
        "over_the_limits": poison,
        "corpus_mb": round(sum(len(b) for _, b in corpus(count, run)) / 2**20, 1),
        "drain_s": round(drain_s, 2),
        "bridge_rss_mb": {
            "baseline": bridge_baseline,
            "peak_backlog": bridge_backlog_peak,
            "peak": bridge_peak,
        },
        "posted": {"requests": READERS, "body_mb": round(len(bodies[0]) / 2**20, 2)},
        "sidecar_rss_mb": {"baseline": api_baseline, "peak_reads": api_read_peak, "peak": api_peak},
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "within_targets": bridge_peak <= BRIDGE_TARGET_MB and api_peak <= SIDECAR_TARGET_MB,
    }


def rejection_flood(count: int, out: Path) -> dict[str, Any]:
    """Issue 9's rejection flood: `count` messages on 60 KB topics, each refused (a topic
    is at most 200 characters). What it adds to the store's files and to the bridge's log."""
    store_path = out / "flood.db"
    store_url = f"sqlite:///{store_path}"
    log = out / "bridge-flood.log"
    with ExitStack() as stack:
        broker = Mosquitto(free_port(), out / "mosquitto-flood")
        broker.start()
        stack.callback(broker.stop)
        bridge = stack.enter_context(
            start_bridge(broker.url, store_url, "adv-flood", "normal", log)
        )
        _wait_stats(store_url, lambda s: True, bridge)
        store_before = sum(p.stat().st_size for p in out.glob("flood.db*"))
        log_before = log.stat().st_size
        started = time.monotonic()
        flood = Flood(broker.port, window=100)
        topic = "logs/" + "t" * 60_000
        for i in range(count):
            flood.send(topic, _event(str(i), {}).encode())
        flood.flush()
        flood.close()
        stats = _wait_stats(store_url, lambda s: s.received >= count, bridge)
        seconds = time.monotonic() - started
        if stats.rejected != count:
            raise BenchError(f"{count} refused messages sent; the store says {stats}")
        reader = open_reader(parse_store_url(store_url))
        stack.callback(reader.close)
        largest = max(
            len(r.mqtt_topic.encode()) + len(r.reason.encode()) + len(r.body.encode())
            for r in reader.rejected(after=0, limit=1000)
        )
    return {
        "messages": count,
        "topic_bytes": len(topic),
        "seconds": round(seconds, 2),
        "store_added_mb": round(
            (sum(p.stat().st_size for p in out.glob("flood.db*")) - store_before) / 2**20, 2
        ),
        "log_added_kb": round((log.stat().st_size - log_before) / 1024, 1),
        "largest_row_bytes": largest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adversarial", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="MQTT messages in the backlog")
    parser.add_argument(
        "--flood", type=int, default=2000, help="messages of the rejection flood (issue 9)"
    )
    parser.add_argument("--out", type=Path, help="keep the logs and store here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="logagg-adversarial-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = measure(args.count, out)
        result["rejection_flood"] = rejection_flood(args.flood, out)
    print(json.dumps(result), flush=True)
    return 0 if result["within_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
