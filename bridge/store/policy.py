"""What both stores' retention shares: the policy's place in `meta` (written by the
bridges, read by all) and the purge's rhythm of short transactions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from bridge.event import Event
from bridge.retention import META_KEY, RetentionPolicy
from bridge.store.reading import Connection

logger = logging.getLogger("logagg.bridge.store")
# Each purge step aims at about this long (the most a batch waits on its transaction); the
# first takes PURGE_FIRST_STEP rows, the next are sized from how long that took.
PURGE_STEP_S = 0.02
PURGE_FIRST_STEP = 200
# After each step the purge rests this many times as long as the step took: live batches
# get the store's write lock (and, on SQLite, the bridge process's GIL) at least half the
# time, and a backlog is still purged at half the rate the purge alone would reach.
PURGE_REST = 1.0


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
    rest: Callable[[float], None] = time.sleep,
) -> int | None:
    """Run `step(limit)` (one transaction doing at most `limit` rows) until it does less
    than asked or `stopping()`, resting `PURGE_REST` times each step's time after it; None
    as soon as a step says another bridge purges."""
    done, limit = 0, PURGE_FIRST_STEP
    while not stopping():
        began = time.monotonic()
        n = step(limit)
        if n is None:
            return None
        done += n
        if n < limit:
            break
        took = time.monotonic() - began
        limit = max(20, min(4 * limit, int(limit * PURGE_STEP_S / max(took, 1e-3))))
        rest(took * PURGE_REST)
    return done


def late(events: Sequence[Event], policy: RetentionPolicy, now: datetime) -> int:
    """How many of `events` arrived with a `timestamp` already past their retention."""
    n = 0
    for e in events:
        keep = policy.keep_s(e.topic)
        if keep is not None and (now - e.timestamp).total_seconds() > keep:
            n += 1
    return n
