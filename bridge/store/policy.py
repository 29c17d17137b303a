"""What both stores' retention shares: the policy's place in `meta` (written by the
bridges, read by all) and the purge's rhythm of short transactions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bridge.event import Event
from bridge.retention import META_KEY, RetentionPolicy
from bridge.store.reading import Connection

logger = logging.getLogger("logagg.bridge.store")


@dataclass(frozen=True, slots=True)
class Pace:
    """How the purge's steps go: each transaction aims at about `step_s` (the most a batch
    waits on it), the first doing `first` rows and the next sized from how long that took;
    after each the purge rests `rest` times as long as it took."""

    step_s: float
    first: int
    rest: float


# PostgreSQL: batches no longer wait for a chunk (`postgres_retention`), but a chunk still
# takes a backend's CPU and writes WAL that the batches' commits flush: 10 ms chunks, each
# followed by a rest as long, so the purge has at most half of what it shares. On 1 M
# expired events under a 1,000/s stream the purge ran at 9,000-16,000 events/s, ten times
# the stream, the stream's p99 at its no-purge level (BENCHMARKS.md, "PostgreSQL: batches
# past the purge"). When every batch took the fence, these rests were what let batches
# through (50 ms chunks back to back: p99 148-524 ms).
POSTGRES_PACE = Pace(step_s=0.01, first=100, rest=1.0)
# SQLite: one write lock, and the purge's Python (the text its index forgets) shares the
# bridge's GIL: 5 ms steps, each followed by a rest as long, so live batches wait at most one
# short step and get at least half the time; the purge goes at about half its unhindered
# rate (less since each step checkpoints the WAL: ~1,900-2,000 events/s under a 1,000/s
# stream on 200,000 expired events, the stream's p99 15-16 ms; BENCHMARKS.md).
SQLITE_PACE = Pace(step_s=0.005, first=100, rest=1.0)


def declare_policy(
    conn: Connection, mark: str, policy: RetentionPolicy, where: object
) -> RetentionPolicy:
    """Write a starting bridge's retention policy into the store's meta, where readers
    and every bridge's purge find it: the last bridge started wins, and says so when it
    changes what the store held."""
    row = conn.execute(f"SELECT value FROM meta WHERE key = {mark}", (META_KEY,)).fetchone()
    if row is None or row[0] != policy.to_json():
        if row is not None:
            logger.warning("%s: retention policy now %s", where, policy.describe())
        conn.execute(
            f"INSERT INTO meta (key, value) VALUES ({mark}, {mark})"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (META_KEY, policy.to_json()),
        )
    return policy


def chunks(
    step: Callable[[int], int | None],
    stopping: Callable[[], bool],
    pace: Pace = POSTGRES_PACE,
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Run `step(limit)` (one transaction doing at most `limit` rows) at `pace` until it
    does less than asked or `stopping()`; None as soon as a step says another bridge
    purges."""
    done, limit = 0, pace.first
    while not stopping():
        began = time.monotonic()
        n = step(limit)
        if n is None:
            return None
        done += n
        if n < limit:
            break
        took = time.monotonic() - began
        limit = max(20, min(4 * limit, int(limit * pace.step_s / max(took, 1e-3))))
        if pace.rest:
            sleep(took * pace.rest)
    return done


def overdue(events: Sequence[Event], policy: RetentionPolicy, now: datetime) -> list[Event]:
    """Those of `events` that arrive with a `timestamp` already past their retention."""
    return [
        e
        for e in events
        if (keep := policy.keep_s(e.topic)) is not None
        and (now - e.timestamp).total_seconds() > keep
    ]


def late(events: Sequence[Event], policy: RetentionPolicy, now: datetime) -> int:
    """How many of `events` arrived with a `timestamp` already past their retention."""
    return len(overdue(events, policy, now))
