"""Realistic log events for the search benchmarks, made fast and the same every time.

Issue 11 asks for a store of 10,000,000 events that looks like logs: a `msg` of 5 to 20
words from a vocabulary of ~50,000 with a long tail, `level`, `http.status`, 50 topics,
500 sources, timestamps over 30 days. Word ranks follow Zipf's law (s = 1), so a few
words are in most messages and tens of thousands are rare; the top ranks are real log
words, the rest pronounceable pseudo-words, some with diacritics (`remove_diacritics`
must fold them; no two words fold to the same form, so a folded query finds one word).

Events come in time order, as a bridge stores them (`seq` follows the timestamp), with a
little jitter and 1% arriving up to five minutes late. Each source has a fixed UTC offset
(most are UTC), and `event_id`s are `<run>-<n>` like `logagg publish`'s.

Everything derives from the seed: block `b` of `BLOCK` events has its own generator, so
any slice is reproducible on its own. The query benchmark asks `needles()` and `common()`
for words whose share of events is known from the distribution, not counted.
"""

from __future__ import annotations

import bisect
import itertools
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

BLOCK = 100_000
SERVICES = ("auth", "billing", "api", "search", "web", "worker", "mail", "cache", "db", "queue")
ENVS = ("prod", "staging", "eu", "us", "dev")
SOURCES_PER_TOPIC = 10
# Real words at the top ranks: what most log lines are made of.
LOG_WORDS = [
    "the",
    "to",
    "for",
    "from",
    "request",
    "user",
    "in",
    "of",
    "with",
    "failed",
    "completed",
    "started",
    "connection",
    "timeout",
    "retry",
    "session",
    "token",
    "payment",
    "order",
    "cache",
    "miss",
    "hit",
    "query",
    "slow",
    "received",
    "sent",
    "invalid",
    "denied",
    "granted",
    "upstream",
    "latency",
    "queue",
    "worker",
    "job",
    "scheduled",
    "closed",
    "opened",
    "refused",
    "reset",
    "response",
    "handler",
    "service",
    "client",
    "server",
    "database",
    "lock",
    "released",
    "acquired",
    "deadline",
    "exceeded",
    "expired",
    "renewed",
    "login",
    "logout",
    "password",
    "account",
    "created",
    "deleted",
    "updated",
]
LEVELS = (("info", 0.80), ("debug", 0.08), ("warn", 0.08), ("error", 0.04))
STATUSES: tuple[tuple[int, float], ...] = (
    (200, 0.86),
    (201, 0.03),
    (204, 0.02),
    (302, 0.01),
    (400, 0.02),
    (401, 0.015),
)
STATUSES += ((403, 0.01), (404, 0.025), (429, 0.005), (500, 0.003), (502, 0.001), (503, 0.001))
# An error is mostly a 5xx, whatever the plain mix above says.
ERROR_STATUSES = ((500, 0.6), (502, 0.15), (503, 0.2), (504, 0.05))
METHODS = (("GET", 0.7), ("POST", 0.2), ("PUT", 0.05), ("DELETE", 0.05))
ROUTES = tuple(
    f"/api/v{v}/{r}"
    for v in (1, 2)
    for r in ("orders", "users", "sessions", "invoices", "search", "items", "health", "carts")
)
# Offsets of the sources that do not log in UTC, in seconds.
OFFSETS = (3600, 7200, -18000, 19800, 32400)
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_ACCENTED = {"a": "áàâä", "e": "éèêë", "i": "íî", "o": "óôöø", "u": "úüû", "n": "ñ", "c": "ç"}


def fold(word: str) -> str:
    """`word` without diacritics, as FTS5's `remove_diacritics 2` and `unaccent` see it."""
    decomposed = unicodedata.normalize("NFKD", word.replace("ø", "o"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True, slots=True)
class Row:
    """One event as a store keeps it; `ts_us` is the timestamp in µs since the epoch, UTC."""

    topic: str
    event_id: str
    ts_us: int
    utc_offset_s: int
    source: str
    payload: str

    @property
    def moment(self) -> datetime:
        """The timestamp in the source's offset, as the publisher sent it."""
        zone = timezone(timedelta(seconds=self.utc_offset_s))
        return (EPOCH + timedelta(microseconds=self.ts_us)).astimezone(zone)

    @property
    def timestamp(self) -> str:
        """ISO-8601 with the source's offset, as the publisher wrote it."""
        return self.moment.isoformat()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    topic: str
    run: str
    utc_offset_s: int


def _cumulative(pairs: tuple[tuple[object, float], ...]) -> tuple[list[object], list[float]]:
    values = [v for v, _ in pairs]
    return values, list(itertools.accumulate(w for _, w in pairs))


@dataclass(slots=True)
class Corpus:
    """`count` events ending at `end` and spread over `days` days, all from `seed`."""

    count: int
    seed: int = 11
    days: int = 30
    end: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    vocabulary: int = 50_000
    zipf_s: float = 1.0
    words: list[str] = field(init=False)
    topics: list[str] = field(init=False)
    sources: list[Source] = field(init=False)
    _word_cw: list[float] = field(init=False)
    _topic_cw: list[float] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(f"{self.seed}-setup")
        self.words = _vocabulary(rng, self.vocabulary)
        self._word_cw = list(
            itertools.accumulate(1 / (r + 1) ** self.zipf_s for r in range(self.vocabulary))
        )
        self.topics = [f"{s}/{e}" for s in SERVICES for e in ENVS]
        rng.shuffle(self.topics)
        # Some topics are busier than others, mildly: weight 1/sqrt(rank).
        self._topic_cw = list(
            itertools.accumulate(1 / (r + 1) ** 0.5 for r in range(len(self.topics)))
        )
        self.sources = [
            Source(
                name=f"{topic.replace('/', '-')}-{k:02d}",
                topic=topic,
                run=f"{rng.getrandbits(48):012x}",
                utc_offset_s=rng.choice(OFFSETS) if rng.random() < 0.2 else 0,
            )
            for topic in self.topics
            for k in range(SOURCES_PER_TOPIC)
        ]

    @property
    def start_us(self) -> int:
        return self.end_us - self.days * 86_400_000_000

    @property
    def end_us(self) -> int:
        return int((self.end - EPOCH) / timedelta(microseconds=1))

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[Row]:
        """Events `start` to `stop` (exclusive) in store order."""
        stop = self.count if stop is None else min(stop, self.count)
        block = start // BLOCK
        while block * BLOCK < stop:
            first = block * BLOCK
            for i, row in enumerate(self._block(block), first):
                if i >= stop:
                    return
                if i >= start:
                    yield row
            block += 1

    def _block(self, block: int) -> Iterator[Row]:
        rng = random.Random(f"{self.seed}-{block}")
        choices, rand, randint = rng.choices, rng.random, rng.randint
        words, word_cw = self.words, self._word_cw
        topics, topic_cw = self.topics, self._topic_cw
        levels, level_cw = _cumulative(LEVELS)
        statuses, status_cw = _cumulative(STATUSES)
        errors, error_cw = _cumulative(ERROR_STATUSES)
        methods, method_cw = _cumulative(METHODS)
        step = (self.end_us - self.start_us) / self.count
        first = block * BLOCK
        for i in range(first, min(first + BLOCK, self.count)):
            topic_k = bisect.bisect(topic_cw, rand() * topic_cw[-1])
            source = self.sources[topic_k * SOURCES_PER_TOPIC + randint(0, SOURCES_PER_TOPIC - 1)]
            late = rand() * 300e6 if rand() < 0.01 else 0.0
            ts_us = int(self.start_us + i * step - rand() * 2e6 - late)
            level = choices(levels, cum_weights=level_cw)[0]
            status = choices(*((errors, error_cw) if level == "error" else (statuses, status_cw)))
            msg = " ".join(choices(words, cum_weights=word_cw, k=randint(5, 20)))
            payload = (
                f'{{"msg":"{msg}","level":"{level}","http":{{"method":"'
                f'{choices(methods, cum_weights=method_cw)[0]}","path":"{ROUTES[randint(0, 15)]}",'
                f'"status":{status[0]}}},"duration_ms":{rand() * 500:.1f}}}'
            )
            yield Row(
                topics[topic_k],
                f"{source.run}-{i}",
                ts_us,
                source.utc_offset_s,
                source.name,
                payload,
            )

    def share(self, rank: int) -> float:
        """The expected share of events whose `msg` holds the word of rank `rank` (0-based)."""
        p = (self._word_cw[rank] - (self._word_cw[rank - 1] if rank else 0)) / self._word_cw[-1]
        return sum(1 - (1 - p) ** n for n in range(5, 21)) / 16

    def needles(self, share: float = 0.0001, k: int = 50) -> list[str]:
        """`k` words each in about `share` of events (the ranks around that share)."""
        centre = next(r for r in range(self.vocabulary) if self.share(r) < share)
        lo = max(0, centre - k // 2)
        return self.words[lo : lo + k]

    def common(self, share: float = 0.10) -> list[str]:
        """Every word in at least `share` of events."""
        return [w for r, w in enumerate(self.words) if self.share(r) >= share]


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    """The real log words, then pronounceable pseudo-words (1 in 20 with a diacritic),
    distinct even once folded."""
    words = list(LOG_WORDS)
    seen = {fold(w) for w in words}
    while len(words) < size:
        syllables = [
            rng.choice(_CONSONANTS)
            + rng.choice(_VOWELS)
            + (rng.choice(_CONSONANTS) * (rng.random() < 0.3))
            for _ in range(rng.randint(2, 4))
        ]
        word = "".join(syllables)
        if rng.random() < 0.05:
            spots = [i for i, ch in enumerate(word) if ch in _ACCENTED]
            i = rng.choice(spots)
            word = word[:i] + rng.choice(_ACCENTED[word[i]]) + word[i + 1 :]
        if fold(word) not in seen:
            seen.add(fold(word))
            words.append(word)
    return words
