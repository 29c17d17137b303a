"""The `field` filter: equality on a payload value found by a path, `http.status:503`.

The path is keys of nested objects, each of letters, digits, `_` and `-`, joined by `.`;
arrays are not entered. The value after the first `:` is typed as in JSON: a number
(compared by value: `503`, `503.0` and `5.03e2` are equal; a string "503" is not), `true`,
`false`, `null`, or a "quoted string" (JSON escapes allowed: `"503"` is the string); any
other text is the string as written. A path that is missing, or names an object or an
array, matches nothing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bridge.event import _UNSTORABLE_CHAR

MAX_FIELDS = 10
MAX_FIELD_DEPTH = 16
MAX_FIELD_PATH_CHARS = 256
MAX_FIELD_VALUE_CHARS = 256

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# JSON's number grammar (RFC 8259), nothing more: no `+1`, `.5`, `1.`, `NaN`, `0x10`.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

Scalar = str | Decimal | bool | None


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """`path` (keys, outermost first) equals `value`: a Decimal for a number."""

    path: tuple[str, ...]
    value: Scalar

    def matches(self, payload: dict[str, Any]) -> bool:
        found: Any = payload
        for key in self.path:
            if not isinstance(found, dict) or key not in found:
                return False
            found = found[key]
        if isinstance(self.value, Decimal):
            return number(found) == self.value
        if isinstance(self.value, bool) or self.value is None:
            return found is self.value
        return isinstance(found, str) and found == self.value


def number(value: Any) -> Decimal | None:
    """A JSON number as an exact decimal (None for anything else, booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def parse_field(text: str) -> FieldFilter | str:
    """`path:value` as a filter, or why it is refused."""
    path_text, colon, raw = text.partition(":")
    if not colon:
        return f"{_cut(text)!r} has no ':' between path and value (as in level:error)"
    if len(path_text) > MAX_FIELD_PATH_CHARS:
        return f"path is {len(path_text)} characters, limit {MAX_FIELD_PATH_CHARS}"
    path = tuple(path_text.split("."))
    if len(path) > MAX_FIELD_DEPTH:
        return f"path has {len(path)} keys, limit {MAX_FIELD_DEPTH}"
    if not all(_SEGMENT.fullmatch(key) for key in path):
        return (
            f"path {_cut(path_text)!r} must be keys of letters, digits, _ and -, joined by ."
            " (as in http.status)"
        )
    if len(raw) > MAX_FIELD_VALUE_CHARS:
        return f"value is {len(raw)} characters, limit {MAX_FIELD_VALUE_CHARS}"
    if raw.startswith('"'):
        try:
            quoted = json.loads(raw)
        except ValueError:
            quoted = None
        if not isinstance(quoted, str):
            return f"value {_cut(raw)!r} starts with a quote but is not a JSON string"
        if _UNSTORABLE_CHAR.search(quoted):  # PostgreSQL would refuse it as a parameter
            return "value holds NUL or an unpaired surrogate, which no stored event holds"
        return FieldFilter(path, quoted)
    if _NUMBER.fullmatch(raw):
        if not math.isfinite(float(raw)):
            return f"value {_cut(raw)!r} is a number beyond what JSON events can hold"
        return FieldFilter(path, Decimal(raw))
    return FieldFilter(path, _LITERALS.get(raw, raw))


_LITERALS: dict[str, Scalar] = {"true": True, "false": False, "null": None}


def _cut(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"
