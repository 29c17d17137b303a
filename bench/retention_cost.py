"""What retention costs the store: the purge's rate, and ingest with retention on and off.

Run as `python -m bench.retention_cost [--store URL] [--backlog N] [--rounds R]`: on a
fresh store (a SQLite file in a temporary directory, or a fresh schema of the
PostgreSQL URL given, dropped after), N events stored and expired are purged, timed;
then batches of 1,000 events are recorded through `StoreWriter.record`, alternately with
no retention and with a 30-day retention whose keys are checked on every batch (the N
keys the purge kept), R rounds each. Prints one JSON line: the purge's events/s, each
round's ingest events/s and the ratio of the medians (on / off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from bridge.event import Event
from bridge.retention import make_policy
from bridge.store import PostgresUrl, StoreOptions, StoreWriter, open_writer, parse_store_url

BATCH = 1000
BATCHES = 40


def _events(tag: str, count: int) -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(
            topic="bulk",
            event_id=f"{tag}-{i}",
            timestamp=now,
            source="bench",
            payload={"msg": f"request {i} served in {i % 97} ms", "n": i},
        )
        for i in range(count)
    ]


def _writer(url: str, retention_s: float | None) -> StoreWriter:
    policy = make_policy(retention_s, [])
    return open_writer(parse_store_url(url), StoreOptions(retention=policy))


def _purge_rate(url: str, backlog: int) -> float:
    """Events/s of one purge pass over `backlog` expired events."""
    store = _writer(url, None)
    try:
        for start in range(0, backlog, 5000):
            store.record(_events(f"old{start}", min(5000, backlog - start)), [])
    finally:
        store.close()
    time.sleep(1.1)
    store = _writer(url, 1.0)
    try:
        started = time.perf_counter()
        purged = store.purge(lambda: False)
        return purged.events / (time.perf_counter() - started)
    finally:
        store.close()


def _ingest_rate(url: str, retention_s: float | None) -> float:
    store = _writer(url, retention_s)
    try:
        store.purge(lambda: False)  # with retention: from here every batch checks its keys
        started = time.perf_counter()
        for _ in range(BATCHES):
            store.record(_events(uuid.uuid4().hex[:8], BATCH), [])
        return BATCHES * BATCH / (time.perf_counter() - started)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a postgresql:// URL (default: a SQLite file)")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        schema = f"logagg_retention_{uuid.uuid4().hex[:8]}"
        url = (
            f"{args.store}{'&' if '?' in args.store else '?'}schema={schema}"
            if args.store
            else f"sqlite:///{Path(work) / 'store.db'}"
        )
        try:
            purge = _purge_rate(url, args.backlog)
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for r in range(args.rounds):
                for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    rates[name].append(_ingest_rate(url, 30 * 86_400.0 if name == "on" else None))
        finally:
            parsed = parse_store_url(url)
            if isinstance(parsed, PostgresUrl):
                with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(
        json.dumps(
            {
                "store": "postgresql" if args.store else "sqlite",
                "purge_events_per_s": round(purge),
                "ingest_off": [round(x) for x in rates["off"]],
                "ingest_on": [round(x) for x in rates["on"]],
                "ratio_on_off": round(ratio, 2),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
        )
    )


if __name__ == "__main__":
    main()
