"""How long the store keeps events, and how long it remembers their keys once they are gone.

Retention is by arrival (`received_at`): an event expires `keep_s` after the store
received it, whatever its own `timestamp` says, so a device with a wrong clock neither
loses its events at once nor keeps them for ever. Per-topic rules are MQTT-style filters
tried in order, the first match deciding; a topic no rule names keeps the default.

When an expired event is deleted its key (a 64-bit hash of `(topic, event_id)`) is kept
for `horizon_s` more, so a copy arriving within it is still a duplicate; after that the
key is forgotten and a copy is stored as new. `None` is "forever" everywhere.

The policy travels as JSON in the store's `meta` table: the bridge writes it, and every
reader (the sidecar, the CLI) hides what it says has expired.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.query.topic import TopicFilter, parse_topic

FOREVER = "forever"
# The horizon's floor when it is not given: a week, or the longest retention if longer.
MIN_DEFAULT_HORIZON_S = 7 * 86_400.0
# Expired events are deleted within max(PURGE_DEADLINE_S, retention / 10): the purge runs
# every retention / 10 of the shortest retention, between these bounds.
PURGE_DEADLINE_S = 60.0
MIN_PURGE_INTERVAL_S = 0.5
# The meta key the policy is kept under.
META_KEY = "retention_policy"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
# Longer than this is a typo, not a retention (and would overflow a timestamp).
MAX_DURATION_S = 100 * 365 * 86_400.0


def parse_duration(text: str) -> float | str | None:
    """`90s`, `15m`, `12h`, `30d`, `2w` in seconds, None for `forever`; or why it is
    refused (a str)."""
    if text.strip().lower() == FOREVER:
        return None
    found = _DURATION.match(text.lower())
    if found is None:
        return (
            f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), as in 90s, 15m,"
            f" 12h or 30d, or {FOREVER}"
        )
    seconds = float(found[1]) * _UNITS[found[2]]
    if seconds <= 0:
        return f"{text!r}: a retention must be longer than 0 (or {FOREVER})"
    if seconds > MAX_DURATION_S:
        return f"{text!r} is longer than 100 years: say {FOREVER}"
    return seconds


def show_duration(seconds: float | None) -> str:
    """The shortest way to write `seconds` back in the form `parse_duration` reads."""
    if seconds is None:
        return FOREVER
    for unit in "wdhm":
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Duration:
    """A setting's duration: seconds, or None for forever."""

    seconds: float | None

    def __str__(self) -> str:
        return show_duration(self.seconds)


@dataclass(frozen=True, slots=True)
class Rule:
    """Topics `filter` names keep their events `keep_s` (None: forever)."""

    filter: TopicFilter
    keep_s: float | None

    @property
    def text(self) -> str:
        return f"{self.filter.text}={show_duration(self.keep_s)}"


def parse_rule(text: str) -> Rule | str:
    """`FILTER=DURATION` (split at the last `=`, as a topic may hold one), or why not."""
    topic, equals, duration = text.strip().rpartition("=")
    if not equals or not topic:
        return f"{text!r} is not FILTER=DURATION, as in 'debug/#=1d' or 'audit/#={FOREVER}'"
    parsed = parse_topic(topic)
    if isinstance(parsed, str):
        return f"{text!r}: the filter {topic!r} {parsed}"
    keep = parse_duration(duration)
    if isinstance(keep, str):
        return f"{text!r}: {keep}"
    return Rule(parsed, keep)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The store's policy: `default_s` for topics no rule names, `rules` first match wins,
    `horizon_s` how long a deleted event's key is kept after it expired (None: forever).
    With everything None (the default) nothing is ever deleted, as before retention."""

    default_s: float | None = None
    rules: tuple[Rule, ...] = ()
    horizon_s: float | None = None
    _cache: dict[str, float | None] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def keep_s(self, topic: str) -> float | None:
        """How long `topic`'s events are kept (remembered per topic: topics are few)."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        keep = next((r.keep_s for r in self.rules if r.filter.matches(topic)), self.default_s)
        if len(self._cache) < 100_000:
            self._cache[topic] = keep
        return keep

    @property
    def finite(self) -> bool:
        """Whether anything ever expires."""
        return self.default_s is not None or any(r.keep_s is not None for r in self.rules)

    @property
    def keeps(self) -> tuple[float | None, ...]:
        """Every retention the policy can give a topic, the default first."""
        return (self.default_s, *(r.keep_s for r in self.rules))

    @property
    def purge_interval_s(self) -> float:
        """How often the purge runs: a tenth of the shortest retention, within bounds, so
        an expired event is gone within max(a minute, its retention / 10)."""
        finite = [k for k in self.keeps if k is not None]
        if not finite:
            return PURGE_DEADLINE_S
        return min(PURGE_DEADLINE_S, max(MIN_PURGE_INTERVAL_S, min(finite) / 10))

    def to_json(self) -> str:
        return json.dumps(
            {
                "default_s": self.default_s,
                "rules": [[r.filter.text, r.keep_s] for r in self.rules],
                "horizon_s": self.horizon_s,
            }
        )

    def describe(self) -> str:
        rules = "".join(f", {r.text}" for r in self.rules)
        return (
            f"retention {show_duration(self.default_s)}{rules};"
            f" dedup horizon {show_duration(self.horizon_s)}"
        )


KEEP_FOREVER = RetentionPolicy()


def policy_from_json(text: str | None) -> RetentionPolicy:
    """The policy a store's meta holds (none: keep everything forever)."""
    if not text:
        return KEEP_FOREVER
    data = json.loads(text)
    rules = []
    for topic, keep in data.get("rules", []):
        parsed = parse_topic(topic)
        if isinstance(parsed, TopicFilter):
            rules.append(Rule(parsed, keep))
    return RetentionPolicy(data.get("default_s"), tuple(rules), data.get("horizon_s"))


def make_policy(
    retention: float | None, rules: Iterable[Rule], horizon: float | str | None = "default"
) -> RetentionPolicy:
    """The policy from the settings; the horizon by default is the longest finite
    retention, at least a week (forever when nothing expires: no key is ever made)."""
    rules = tuple(rules)
    if horizon == "default":
        finite = [k for k in (retention, *(r.keep_s for r in rules)) if k is not None]
        horizon = max([MIN_DEFAULT_HORIZON_S, *finite]) if finite else None
    assert not isinstance(horizon, str)
    return RetentionPolicy(retention, rules, horizon)


def key_hash(topic: str, event_id: str) -> int:
    """The 64-bit key an expired event leaves behind, as a signed integer (what both
    stores' bigint holds). Two identities share one with odds of about n / 2^64 for n
    keys held: a copy of an event never seen is taken for a duplicate once in 10^10 at
    a billion keys."""
    identity = f"{topic}\x00{event_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(identity, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
