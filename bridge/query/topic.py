"""The `topic` filter: a topic, or an MQTT-style filter over its `/` levels.

`+` is one whole level, `#` the whole rest and only as the last level; as in MQTT, `a/#`
matches `a` too. The rule for `$` topics does not apply: these are logagg's topics, under
the bridge's prefix, never the broker's own. SQL cannot say "one level" with LIKE or GLOB
(their wildcards cross `/`), so a store resolves a wildcard filter against its topics
(the per-topic counters list each one): `like_pattern` narrows them in SQL, `matches`
decides, and the events are then read by `topic = ANY(…)` through the topic index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.event import MAX_NAME_LENGTH, MAX_TOPIC_LEVELS, NAME_PATTERN

_NAME = re.compile(NAME_PATTERN)
# Characters LIKE gives a meaning to, escaped with a backslash (`LIKE ? ESCAPE '\'`).
_LIKE_SPECIAL = re.compile(r"([\\%_])")


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A parsed filter: `levels` are literal levels or the wildcards `+` and `#`."""

    levels: tuple[str, ...]

    @property
    def text(self) -> str:
        return "/".join(self.levels)

    @property
    def wildcard(self) -> bool:
        """Whether this names more than one topic (without wildcards it is today's exact
        `topic`)."""
        return any(level in ("+", "#") for level in self.levels)

    def matches(self, topic: str) -> bool:
        """Whether `topic` is one this filter names."""
        names = topic.split("/")
        for at, level in enumerate(self.levels):
            if level == "#":
                return True
            if at >= len(names) or (level != "+" and level != names[at]):
                return False
        return len(names) == len(self.levels)

    def like_pattern(self) -> str:
        """A LIKE pattern (with `ESCAPE '\\'`) every topic this filter names matches: a
        superset to narrow a list of topics before `matches`. For a filter without
        wildcards, only that topic matches it (where LIKE is case-sensitive, as in
        PostgreSQL; SQLite's is not for ASCII unless `case_sensitive_like` is on)."""
        parts = [
            "%" if level == "+" else _LIKE_SPECIAL.sub(r"\\\1", level) for level in self.levels
        ]
        if self.levels[-1] == "#":
            # `a/#` names `a` as well as `a/…`: the `#` takes its separator with it.
            return "/".join(parts[:-1]) + "%"
        return "/".join(parts)


def parse_topic(text: str) -> TopicFilter | str:
    """`text` as a filter, or why it is refused. Refused like a topic (length, characters,
    levels), with `+` and `#` allowed as whole levels, `#` only last."""
    if not text:
        return "must not be empty: omit it for every topic"
    if len(text) > MAX_NAME_LENGTH:
        return f"is {len(text)} characters, limit {MAX_NAME_LENGTH}"
    levels = tuple(text.split("/"))
    if len(levels) > MAX_TOPIC_LEVELS:
        return f"has {len(levels)} levels (separated by /), limit {MAX_TOPIC_LEVELS}"
    for at, level in enumerate(levels):
        if level == "#" and at != len(levels) - 1:
            return "# must be the last level (as in logs/#)"
        if level in ("+", "#"):
            continue
        if "+" in level or "#" in level:
            return f"level {at + 1} ({level!r}): + and # must each be a whole level (as in a/+/c)"
        if level and not _NAME.match(level):
            return (
                "must not contain NUL, control characters, invisible characters (zero-width,"
                " bidirectional controls, U+FEFF) or Unicode noncharacters"
            )
    return TopicFilter(levels)
