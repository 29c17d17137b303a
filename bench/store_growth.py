"""How much a batch grows the store, as `--max-store-bytes` measures it: the bound on how
far a store passes its cap (README, "Guarantees and limits").

Run as `python -m bench.store_growth --store URL [--batches N]`: batches of 1,000 events
(cut to `LOGAGG_MAX_BATCH_BYTES`, 2 MiB) are recorded straight into the store, for two
kinds of payload: 1 kB of one word, and 150 random words (every word new to the text
index: its worst case). Prints one JSON line per kind: the store's growth per message
byte, the largest for one batch and over the run. Use a fresh store (a new SQLite path, a
new PostgreSQL schema); PostgreSQL schemas are left for you to drop.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from contextlib import closing

from bridge.event import DEFAULT_MAX_EVENT_NODES, Event, parse_message
from bridge.settings import DEFAULT_MAX_BATCH_BYTES
from bridge.store import open_writer, parse_store_url

BATCH = 1000


def _body(i: int, kind: str, rng: random.Random) -> bytes:
    if kind == "one-word":
        payload: dict[str, object] = {"i": i, "pad": "x" * 1000}
    else:
        words = (
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(150)
        )
        payload = {"i": i, "msg": " ".join(words)}
    event = {"event_id": f"e{i}", "timestamp": "2026-11-26T12:00:00+00:00", "source": "s"}
    return json.dumps({**event, "payload": payload}).encode()


def _batch(start: int, kind: str, rng: random.Random) -> tuple[list[Event], int]:
    """Up to BATCH events whose bodies add up to at most the default batch budget."""
    events, size = [], 0
    for i in range(start, start + BATCH):
        body = _body(i, kind, rng)
        if size + len(body) > DEFAULT_MAX_BATCH_BYTES:
            break
        parsed = parse_message(
            "logs/growth",
            body,
            prefix="logs/",
            max_payload_bytes=len(body),
            max_nodes=DEFAULT_MAX_EVENT_NODES,
        )
        assert isinstance(parsed, Event)
        events.append(parsed)
        size += len(body)
    return events, size


def measure(url: str, kind: str, batches: int) -> dict[str, object]:
    rng = random.Random(1)
    with closing(open_writer(parse_store_url(url))) as store:
        first = before = store.used_bytes()
        worst, written, start = 0.0, 0, 0
        for _ in range(batches):
            events, size = _batch(start, kind, rng)
            start += len(events)
            store.record(events, [])
            after = store.used_bytes()
            worst = max(worst, (after - before) / size)
            before, written = after, written + size
    return {
        "store": url.split(":", 1)[0],
        "payload": kind,
        "batch_bytes": size,
        "worst_batch_growth": round(worst, 2),
        "overall_growth": round((before - first) / written, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a fresh store URL; {kind} is replaced")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    for kind in ("one-word", "random-words"):
        print(json.dumps(measure(args.store.replace("{kind}", kind), kind, args.batches)))


if __name__ == "__main__":
    main()
