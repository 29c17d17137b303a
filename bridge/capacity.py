"""The disk cap (`--max-store-bytes`) and a full disk: when the bridge stops writing, and
how it says so.

When the store reaches the cap, or its disk is full (SQLite's SQLITE_FULL, PostgreSQL's
53100), the bridge writes nothing and acknowledges nothing: the batch in hand waits, the
broker keeps the rest of the backlog (as when the store is down), and no event is
deleted to make room. It says so in its log (once with the figures, then every
`STORE_LOG_EVERY_S`), and in the store's `meta` (`bridge.store.space`), where the
sidecar reads it for /healthz, /stats, /metrics and the dashboard. It retries on its
own and resumes once the measure is below the cap again (rows deleted, a VACUUM, a larger
cap on restart) or the disk has room.

How far a store can pass the cap: the measure is taken before a batch is written, and a
batch is written only while the last measure is below the cap. SQLite measures before
every batch (it costs microseconds), so it passes the cap by at most one batch;
PostgreSQL measures at most once a second or per `POSTGRES_MEASURE_BYTES` of messages
committed, so by at most that much plus one batch, as stored (rows, indexes, text index).

Once the files reach the cap, the room inside them that new rows fill first (PostgreSQL's
free space map after a vacuum: `StoreWriter.reusable_bytes`) is subtracted. Reading it
scans the map, so it is read again only after `REUSABLE_COST_TIMES` its last read's
duration (at least a second); in between, the messages this bridge committed since are
taken from it (message bytes: a floor of what they fill, so the store can pass the cap
by up to that interval's writes as stored).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bridge.store import StoreFull, StoreUnavailable, StoreWriter
from bridge.store.base import SpaceReport

logger = logging.getLogger("logagg.bridge")

# A cap's measure is taken again at least this often while messages are written.
MEASURE_EVERY_S = 1.0
# The free space map is read again after this many times its last read took (at most
# 1/20 of the writer thread's time spent on it).
REUSABLE_COST_TIMES = 20
# While the store is full or unavailable, the bridge says so again at most this often.
STORE_LOG_EVERY_S = 30.0
HOW_TO_RESUME = (
    "the broker keeps the backlog, nothing is dropped; writing resumes by itself once there"
    " is room (retention deletes rows, a VACUUM, more disk, a larger --max-store-bytes)"
)


def size_text(size: int) -> str:
    """`size` in decimal units, as `--max-store-bytes` takes them: 20.0 GB, 512.3 kB."""
    amount = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


@dataclass(slots=True)
class Space:
    """The cap and what the bridge knows of the store's room. `check` runs on the writer
    thread before each batch; `holding` and `resumed` on the loop, as the commit fails
    and succeeds again."""

    max_bytes: int | None
    # Bytes of messages committed between two measures (0: measure before every batch).
    measure_every_bytes: int
    used: int | None = None
    full: str | None = None
    _measured_at: float = -float("inf")
    _since_measured: int = 0
    # The free space map's last reading, when it may be read again, messages since.
    reusable: int = 0
    _reusable_due: float = -float("inf")
    _since_reusable: int = 0
    _full_since: float = 0.0
    _next_log: float = 0.0
    # Whether the store holds no report of ours (a previous run's is removed at the first beat).
    _cleared: bool = False

    def check(self, store: StoreWriter, batch_bytes: int) -> None:
        """Raise StoreFull, naming the figures, if the store has reached the cap."""
        if self.max_bytes is None:
            return
        if (
            self.full is not None
            or self._since_measured >= self.measure_every_bytes
            or time.monotonic() - self._measured_at >= MEASURE_EVERY_S
        ):
            self.measure(store)
        if self.used is not None and self.used >= self.max_bytes:
            raise StoreFull(
                f"the store reached its cap: {size_text(self.used)} used"
                f" ({self.used} bytes) of --max-store-bytes {size_text(self.max_bytes)}"
            )
        self._since_measured += batch_bytes
        self._since_reusable += batch_bytes

    def measure(self, store: StoreWriter) -> None:
        """Measure now (writer thread); a store that cannot be measured keeps the last one.
        At the cap, the room inside the files is taken off (see the module's docstring)."""
        try:
            used = store.used_bytes()
            if self.max_bytes is not None and used >= self.max_bytes:
                used -= self._reusable(store)
        except StoreUnavailable as exc:
            logger.debug("cannot measure the store: %s", exc)
            return
        self.used = used
        self._measured_at, self._since_measured = time.monotonic(), 0

    def _reusable(self, store: StoreWriter) -> int:
        """The room inside the files, read at most every REUSABLE_COST_TIMES its cost."""
        began = time.monotonic()
        if began >= self._reusable_due:
            self.reusable = store.reusable_bytes()
            took = time.monotonic() - began
            self._reusable_due = began + max(MEASURE_EVERY_S, REUSABLE_COST_TIMES * took)
            self._since_reusable = 0
        return max(0, self.reusable - self._since_reusable)

    def holding(self, exc: StoreFull, messages: int) -> None:
        """The commit found no room: log it when it starts, then every STORE_LOG_EVERY_S."""
        now = time.monotonic()
        if self.full is None:
            self._full_since = now
            self._next_log = 0.0
        self.full = str(exc)
        if now < self._next_log:
            return
        self._next_log = now + STORE_LOG_EVERY_S
        figures = ""  # a cap's reason has them
        if self.max_bytes is None or self.used is None or self.used < self.max_bytes:
            cap = "no cap" if self.max_bytes is None else f"cap {size_text(self.max_bytes)}"
            used = "unknown" if self.used is None else size_text(self.used)
            figures = f" (store {used} used, {cap})"
        logger.error(
            "store full for %.0f s, writing and acknowledging stopped: %s%s;"
            " holding %d messages unacknowledged; %s",
            now - self._full_since,
            exc,
            figures,
            messages,
            HOW_TO_RESUME,
        )

    def resumed(self) -> None:
        """A batch committed after the store was full: say so, once."""
        if self.full is None:
            return
        logger.warning(
            "store has room again after %.0f s full (%s); writing and acknowledging resume",
            time.monotonic() - self._full_since,
            "no cap" if self.used is None else f"{size_text(self.used)} used",
        )
        self.full = None

    def publish(self, store: StoreWriter, client_id: str) -> None:
        """Keep the report in the store for the sidecar (writer thread, before each
        heartbeat): measured afresh while there is a cap or the store is full; removed once
        when there is nothing to say."""
        if self.max_bytes is not None or self.full is not None:
            self.measure(store)
        report = self.report(client_id)
        if report is None and self._cleared:
            return
        store.report_space(client_id, report)
        self._cleared = report is None

    def report(self, client_id: str) -> SpaceReport | None:
        """What the sidecar should see; None when there is nothing to say (no cap, room)."""
        if self.max_bytes is None and self.full is None:
            return None
        return SpaceReport(client_id, self.full, self.used, self.max_bytes)
