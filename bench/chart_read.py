"""`python -m bench.chart_read`: what the dashboard's chart costs on a large store.

A SQLite store prefilled with `--events` old events (`bench.prefill`), then `--recent` events
stored by `record()` and spread over the last 5 minutes, as a busy store looks when a
dashboard opens. Times `stored_per_second` (medians of 7) for the whole window (a page
opening), for a poll with `after` (200 new events) and for an idle poll, against the same
count by a scan of `received_at`, which has no index. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.prefill import prefill
from bench.stream import TOPICS
from bridge.event import Event
from bridge.store import Durability, StoreOptions, open_reader, open_writer, parse_store_url
from bridge.store.base import iso_utc

WINDOW_S = 300
BATCH = 1000


def _median_ms(call: Callable[[], object]) -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def _store_recent(path: Path, count: int) -> None:
    """`count` events through `record()`, then their `received_at` spread over the window."""
    stamp = datetime(2026, 11, 26, tzinfo=UTC)
    url = parse_store_url(f"sqlite:///{path}")
    with closing(open_writer(url, StoreOptions(durability=Durability.OFF))) as store:
        for start in range(0, count, BATCH):
            store.record(
                [
                    Event(
                        topic=TOPICS[n % len(TOPICS)],
                        event_id=f"recent-{n}",
                        timestamp=stamp,
                        source="bench",
                        payload={"n": n},
                    )
                    for n in range(start, min(start + BATCH, count))
                ],
                [],
            )
    now = datetime.now(UTC)
    with closing(sqlite3.connect(path)) as conn, conn:
        seqs = conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT ?", (count,))
        conn.executemany(
            "UPDATE events SET received_at = ? WHERE seq = ?",
            [
                (iso_utc(now - timedelta(seconds=WINDOW_S * k / count)), seq)
                for k, (seq,) in enumerate(seqs.fetchall())
            ],
        )


def measure(path: Path, events: int, recent: int) -> dict[str, object]:
    prefill(path, events, payload_bytes=100)
    _store_recent(path, recent)
    with closing(open_reader(parse_store_url(f"sqlite:///{path}"))) as reader:
        window = reader.stored_per_second(seconds=WINDOW_S)
        counted = sum(window.counts.values())
        newest = window.next_after
        figures: dict[str, object] = {
            "events": events + recent,
            "recent": recent,
            "counted": counted,
            "window_ms": _median_ms(lambda: reader.stored_per_second(seconds=WINDOW_S)),
            "poll_200_new_ms": _median_ms(
                lambda: reader.stored_per_second(seconds=WINDOW_S, after=newest - 200)
            ),
            "poll_idle_ms": _median_ms(
                lambda: reader.stored_per_second(seconds=WINDOW_S, after=newest)
            ),
        }
    since = iso_utc(datetime.now(UTC) - timedelta(seconds=WINDOW_S))
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        figures["scan_ms"] = _median_ms(
            lambda: conn.execute(
                "SELECT substr(received_at, 1, 19) AS second, count(*) FROM events"
                " WHERE received_at >= ? GROUP BY second",
                (since,),
            ).fetchall()
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="old events")
    parser.add_argument("--recent", type=int, default=30_000, help="events of the last 5 min")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logagg-chart-") as work:
        print(json.dumps(measure(Path(work) / "store.db", args.events, args.recent)))


if __name__ == "__main__":
    main()
