"""Keeping a flood of log lines truthful but small: the first few of a kind are logged, the
rest counted and summarised. The bridge names duplicates and rejections this way
(`RateLimitedLog`); every logagg process filters repeated warnings and errors this way
(`RepeatFilter`), so a loop failing thousands of times a second (an accept() out of file
descriptors) costs a few lines every interval instead of filling the disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

REPEAT_WINDOW_S = 10.0
REPEAT_BURST = 5
# Kinds of lines remembered at once; past this the oldest idle ones are forgotten.
MAX_KINDS = 512


@dataclass(slots=True)
class Allowance:
    """Up to `per_window` in each window of `window_s` seconds; counts what it refused."""

    per_window: int
    window_s: float
    started: float = -math.inf
    used: int = 0
    refused: int = 0

    def take(self) -> bool:
        if self.used < self.per_window:
            self.used += 1
            return True
        self.refused += 1
        return False

    def roll(self, now: float, *, force: bool = False) -> int:
        """If the window is over (or `force`), start the next one and return how many the
        last one refused; 0 if none, or if it is not over."""
        if not force and now - self.started < self.window_s:
            return 0
        refused, self.refused, self.used, self.started = self.refused, 0, 0, now
        return refused


@dataclass(slots=True)
class RateLimitedLog:
    """Logs each item with `line`, up to `per_s` a second; past that it says how many it
    summarised (`summary`), so the log stays truthful without costing throughput, or
    disk, when a flood of them arrives."""

    logger: logging.Logger
    per_s: int
    line: str
    summary: str
    level: int = logging.INFO
    _allowance: Allowance = field(init=False)

    def __post_init__(self) -> None:
        self._allowance = Allowance(self.per_s, 1.0)

    def __call__(self, items: Sequence[tuple[object, ...]]) -> None:
        self._summarise(self._allowance.roll(time.monotonic()))
        for item in items:
            if self._allowance.take():
                self.logger.log(self.level, self.line, *item)

    def flush(self) -> None:
        """Say how many went unnamed: as a second ends, when the bridge idles, and on stop."""
        refused, self._allowance.refused = self._allowance.refused, 0
        self._summarise(refused)

    def _summarise(self, refused: int) -> None:
        if refused:
            self.logger.log(self.level, self.summary, refused)


class RepeatFilter(logging.Filter):
    """A handler filter: for each kind of line (logger, level, message template) at WARNING
    and above from a library (asyncio, uvicorn, psycopg …), `burst` go through per
    `window_s`; the rest are dropped and then summarised ("… repeated N more times within
    10 s") when the window is over and a line of any kind passes, or on `flush()`.
    logagg's own loggers (`exempt`) pass: where their lines can repeat (duplicates,
    rejections, store errors) they already say how many they left out, at their own rate."""

    SUMMARY = "logagg_summary"

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        burst: int = REPEAT_BURST,
        exempt: str = "logagg",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self.burst = burst
        self.exempt = exempt
        self._kinds: dict[tuple[str, int, str], tuple[Allowance, str]] = {}
        self._swept = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno < logging.WARNING
            or getattr(record, self.SUMMARY, False)
            or record.name == self.exempt
            or record.name.startswith(self.exempt + ".")
        ):
            return True
        now = self._clock()
        if now - self._swept >= 1.0:
            self._sweep(now)
        key = (record.name, record.levelno, str(record.msg))
        entry = self._kinds.get(key)
        if entry is None:
            if len(self._kinds) >= MAX_KINDS:
                self._forget_idle(now)
            entry = self._kinds[key] = (Allowance(self.burst, self.window_s), record.getMessage())
        allowance = entry[0]
        self._summarise(key, allowance.roll(now))
        return allowance.take()

    def flush(self) -> None:
        """Summarise every kind with lines still unreported (at exit)."""
        self._sweep(self._clock(), force=True)

    def _sweep(self, now: float, *, force: bool = False) -> None:
        self._swept = now
        for key, (allowance, _) in list(self._kinds.items()):
            self._summarise(key, allowance.roll(now, force=force))

    def _forget_idle(self, now: float) -> None:
        for key, (allowance, _) in list(self._kinds.items()):
            if now - allowance.started >= allowance.window_s and not allowance.refused:
                del self._kinds[key]
        while len(self._kinds) >= MAX_KINDS:  # all busy: forget the oldest, unsummarised
            del self._kinds[next(iter(self._kinds))]

    def _summarise(self, key: tuple[str, int, str], refused: int) -> None:
        if not refused:
            return
        name, level, _ = key
        first = self._kinds[key][1].splitlines()[0]
        logging.getLogger(name).log(
            level,
            "%s … repeated %d more times within %g s (not logged one by one)",
            first,
            refused,
            self.window_s,
            extra={self.SUMMARY: True},
        )
