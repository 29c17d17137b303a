"""`since` and `until`: an ISO-8601 time with an offset, or a span before now (`15m`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bridge.event import TIMESTAMP_EXAMPLE

_RELATIVE = re.compile(r"([0-9]{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Furthest back a relative time reaches: ten years.
MAX_RELATIVE = timedelta(days=3660)
MAX_TIME_CHARS = 64


def parse_time(text: str, now: datetime) -> datetime | str:
    """An aware datetime in UTC, or why `text` is refused: `90s`, `15m`, `2h`, `7d` mean
    that long before `now`; anything else must be ISO-8601 with a UTC offset."""
    if not text:
        return "must not be empty: omit it for no bound"
    if len(text) > MAX_TIME_CHARS:
        return f"is {len(text)} characters, limit {MAX_TIME_CHARS}"
    if relative := _RELATIVE.fullmatch(text):
        span = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        if span > MAX_RELATIVE:
            return f"reaches back more than {MAX_RELATIVE.days} days"
        return (now - span).astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if _parses(text.replace(" ", "+")):
            return (
                f"{text!r} is not ISO-8601: in a URL, send the + of an offset as %2B"
                f" ({TIMESTAMP_EXAMPLE})"
            )
        return (
            f"{text!r} is neither a span before now (90s, 15m, 2h, 7d) nor ISO-8601 with"
            f" an offset ({TIMESTAMP_EXAMPLE})"
        )
    if moment.tzinfo is None:
        return f"{text!r} has no UTC offset: add one, {TIMESTAMP_EXAMPLE}"
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return f"{text!r} is out of range once converted to UTC"


def _parses(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
