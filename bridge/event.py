"""The log event schema, and turning one MQTT message into an event or a rejection.

Parsing never raises on input: whatever bytes arrive on whatever topic, the
result is an `Event` or a `Rejection` that says why, so the bridge can record
it and keep going.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import TzInfo

# Fixed, not settings: they are part of the event schema, so every bridge and sidecar
# must agree on them. MAX_NAME_LENGTH bounds topic, event_id and source (characters);
# MAX_DEPTH bounds how deeply arrays and objects nest inside a field.
MAX_NAME_LENGTH = 200
MAX_DEPTH = 64
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
# Nodes per event: JSON values (objects, arrays, strings, numbers, literals; not keys). Parsed,
# a value costs up to ~130 bytes (an object in an array): 10,000 of them ~1.3 MB, where
# 256 KiB of `[{}, {}, …]` (85,000 values) cost 6.9 MB. Shared by bridge and sidecar.
DEFAULT_MAX_EVENT_NODES = 10_000
DEFAULT_TOPIC_PREFIX = "logs/"
# How many failing fields a reason lists, and how much of a bad value it shows.
MAX_REASON_ERRORS = 5
_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 80

# Characters JSON can carry (as \u escapes) but the stores cannot keep: NUL (PostgreSQL
# text and jsonb refuse it) and unpaired UTF-16 surrogates (not encodable as UTF-8).
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE_TEXT = "contains NUL or an unpaired surrogate (\\u0000, \\ud800-\\udfff)"
# For counting values in JSON text without parsing it: strings (keys too) and whitespace.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BLANK = re.compile(r"[ \t\r\n]+")

# A topic must be publishable as-is under the prefix: no MQTT wildcards, and none of what
# Mosquitto refuses in a topic by dropping the connection that sent it (NUL, control
# characters, Unicode noncharacters). event_id follows the same rule, so that ids in logs
# cannot carry line breaks or terminal escapes. Neither, nor source, may hold an invisible
# character (zero-width, bidirectional controls, the BOM): `auth\u200b.prod` would pose as
# `auth.prod`.
_INVISIBLE = r"\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_NOT_IN_NAMES = (
    r"#+\x00-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + _INVISIBLE
    + "".join(f"\\U{plane:04X}FFFE\\U{plane:04X}FFFF" for plane in range(17))
)
NAME_PATTERN = f"^[^{_NOT_IN_NAMES}]+$"
_NAME = re.compile(NAME_PATTERN)
_INVISIBLE_CHAR = re.compile(f"[{_INVISIBLE}]")
# Mosquitto 2.0 drops the connection of a client that publishes on a topic with more than
# 200 `/` (its TOPIC_HIERARCHY_LIMIT; tests/test_api.py checks it against the real broker).
# A topic has at most MAX_TOPIC_LEVELS levels, and the prefix the rest (see `check_prefix`),
# so every valid topic is publishable under every valid prefix, over HTTP as over MQTT.
BROKER_MAX_SEPARATORS = 200
MAX_TOPIC_LEVELS = 100
# MQTT strings are at most 65,535 bytes of UTF-8; a topic is at most 4 bytes a character.
MQTT_MAX_STRING_BYTES = 65_535


def _name_chars(value: str) -> str:
    """The pattern, with an error that says what it means."""
    if not _NAME.match(value):
        raise ValueError(
            "must not contain #, +, NUL, control characters, invisible characters (zero-width,"
            " bidirectional controls, U+FEFF) or Unicode noncharacters"
        )
    return value


def _topic_levels(value: str) -> str:
    if value.count("/") >= MAX_TOPIC_LEVELS:
        raise ValueError(
            f"has {value.count('/') + 1} levels (separated by /), limit {MAX_TOPIC_LEVELS}"
        )
    return value


def _visible(value: str) -> str:
    if found := _INVISIBLE_CHAR.search(value):
        raise ValueError(
            f"must not contain invisible characters (zero-width, bidirectional controls,"
            f" U+FEFF): U+{ord(found.group()):04X} at {found.start()}"
        )
    return value


def check_prefix(prefix: str) -> str:
    """The MQTT topic prefix, refused unless every valid topic under it is publishable: it
    ends with `/`, leaves a topic its levels and bytes, and is not a `$` topic (which the
    bridge's wildcard subscription would not match)."""
    separators = BROKER_MAX_SEPARATORS - (MAX_TOPIC_LEVELS - 1)
    most_bytes = MQTT_MAX_STRING_BYTES - 4 * MAX_NAME_LENGTH
    if not prefix.endswith("/"):
        raise ValueError("must end with /")
    if prefix.startswith("$"):
        raise ValueError("must not start with $: wildcard subscriptions do not match it")
    if prefix.count("/") > separators:
        raise ValueError(f"has {prefix.count('/')} levels, limit {separators}")
    if len(prefix.encode()) > most_bytes:
        raise ValueError(f"is {len(prefix.encode())} bytes of UTF-8, limit {most_bytes}")
    return _name_chars(prefix)


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_name_chars),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": NAME_PATTERN}
    ),
]
Topic = Annotated[Name, AfterValidator(_topic_levels)]


TIMESTAMP_EXAMPLE = "e.g. 2026-12-01T14:02:00Z or 2026-12-01T15:02:00+01:00"


def _timestamp_with_example(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Every timestamp error shows the expected form: pydantic's own do not."""
    if not isinstance(value, str | datetime):  # epoch numbers would be read as dates
        raise ValueError(f"must be an ISO-8601 string with a UTC offset, {TIMESTAMP_EXAMPLE}")
    try:
        return handler(value)
    except ValidationError as exc:
        reason = "; ".join(e["msg"] for e in exc.errors(include_url=False))
        raise ValueError(f"{reason}: ISO-8601 with an offset, {TIMESTAMP_EXAMPLE}") from None


def _utc_representable(value: datetime) -> datetime:
    """Stores and readers convert to UTC; 0001-01-01T00:00+01:00 has no UTC datetime."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None
    return value


class Event(BaseModel):
    """One log event: `(topic, event_id)` is its identity."""

    model_config = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)

    topic: Topic
    event_id: Name
    timestamp: Annotated[
        AwareDatetime, WrapValidator(_timestamp_with_example), AfterValidator(_utc_representable)
    ]
    source: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_visible)
    ]
    payload: dict[str, Any] = Field(
        description=f"Any JSON object, nested at most {MAX_DEPTH} levels; no string in the "
        "event may hold NUL (\\u0000) or an unpaired surrogate"
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused; `code` is short and stable, `reason` is for people."""

    code: str
    reason: str


def _field_name(part: str | int) -> str:
    """A field name as sent, unless it is long or unprintable (it ends up in log lines)."""
    text = str(part)
    return text if text.isprintable() and len(text) <= _shown.maxstring else _shown.repr(text)


def describe(error: ValidationError) -> str:
    """One line naming the failing fields, e.g. `timestamp: Input should have timezone info`.

    Bounded: a body with thousands of bad fields gets a reason of a few, and a count.
    """
    items = error.errors(include_url=False)
    parts = []
    for item in items[:MAX_REASON_ERRORS]:
        where = ".".join(map(_field_name, item["loc"]))
        parts.append(f"{where or '(body)'}: {item['msg']}")
    if len(items) > MAX_REASON_ERRORS:
        parts.append(f"and {len(items) - MAX_REASON_ERRORS} more errors")
    return "; ".join(parts)


def count_nodes(text: str) -> int:
    """How many nodes (JSON values; keys are not counted) `text` holds, without parsing it:
    parsed, they may cost 30 times the text. Strings are blanked first; then each non-empty
    container holds one value more than its commas. Text that is not JSON gets some count."""
    bare = _JSON_BLANK.sub("", _JSON_STRING.sub("0", text))
    containers = bare.count("{") + bare.count("[")
    empty = bare.count("{}") + bare.count("[]")
    return 1 + bare.count(",") + containers - empty


def too_many_nodes(max_nodes: int) -> str:
    return f"event holds more than {max_nodes} JSON nodes (objects, arrays, strings, numbers)"


def unstorable(
    doc: dict[str, Any], *, strings: bool = True, max_nodes: int | None = None
) -> tuple[str | None, str] | None:
    """`(field, problem)` for valid-looking JSON that cannot be kept as it is, else None.

    Python's parser accepts NaN and Infinity (and reads 1e999 as infinity), any nesting
    its stack allows, NUL and unpaired surrogates; JSON readers, the stores and the
    sidecar's serialiser do not. `field` is the top-level key, or None when the key itself
    is bad. Iterative, so no depth overflows the stack. `strings=False` skips the string
    check, for callers that know the text had no `\\u` escape that could produce one.
    `max_nodes` refuses a document of more nodes, as `count_nodes` counts them.
    """
    nodes = 1 + len(doc)
    for key, top in doc.items():
        if strings and _UNSTORABLE_CHAR.search(key):
            return None, f"key {_shown.repr(key)} {_UNSTORABLE_TEXT}"
        # Level by level: `level` holds every value `depth` containers down.
        level, depth = [top], 0
        while level:
            below: list[Any] = []
            for value in level:
                if isinstance(value, str):
                    if strings and _UNSTORABLE_CHAR.search(value):
                        return key, _UNSTORABLE_TEXT
                elif isinstance(value, float):
                    if not math.isfinite(value):
                        return key, "NaN and Infinity are not JSON"
                elif isinstance(value, dict):
                    nodes += len(value)
                    below += value.values()
                    if strings:
                        below += value
                elif isinstance(value, list):
                    nodes += len(value)
                    below += value
            if max_nodes is not None and nodes > max_nodes:
                return key, too_many_nodes(max_nodes)
            depth += 1
            if below and depth > MAX_DEPTH:
                return key, f"nested deeper than {MAX_DEPTH} levels"
            level = below
    return None


def decode_body(body: bytes | bytearray) -> str | Rejection:
    """A body's text: UTF-8 without a byte order mark, the one rule for MQTT and HTTP
    (`json.loads` on bytes would skip a BOM, or read UTF-16 and UTF-32)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"body is not UTF-8: {exc.reason} at byte {exc.start}")
    if text.startswith("\ufeff"):
        return Rejection(
            "not_json", "body starts with a byte order mark (U+FEFF): send JSON without one"
        )
    return text


def may_hold_unstorable(text: str) -> bool:
    """Whether JSON `text` may decode to a string holding NUL or a surrogate: only a `\\u`
    escape can put one there, so most texts need no string check (`unstorable(strings=…)`)."""
    return _UNSTORABLE_ESCAPE.search(text) is not None


# The fast path (`fast_event`): the fields an event may have and must have, and the
# one timestamp form it reads itself (RFC 3339 with an upper-case T, at most microseconds,
# hours 00-23, an offset below 24 h); anything else goes the model's way.
_EVENT_FIELDS = frozenset(("topic", "event_id", "timestamp", "source", "payload"))
_REQUIRED_FIELDS = _EVENT_FIELDS - {"topic"}
_PLAIN_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_decode_json = msgspec.json.Decoder().decode
_new_event = Event.__new__
_set_slot = object.__setattr__
# pydantic's time zones, one per offset seen (a handful), as validation makes them.
_zones: dict[int, TzInfo] = {}


def _plain_ascii(name: str) -> bool:
    """Printable ASCII without # or +: what `NAME_PATTERN` allows of ASCII, checked by
    string methods in C instead of the pattern's large class (a third of its cost)."""
    return name.isascii() and name.isprintable() and "#" not in name and "+" not in name


def fast_event(topic: str, text: str) -> Event | None:
    """The event `Event.model_validate` would make of `text` on `topic`, built without it,
    when every check passes here; None when any does not, or when the text is not plain
    JSON to msgspec (NaN, numbers beyond a double, lone surrogates...): the caller then takes
    the model's path, which decides and explains exactly as before. So this path only ever
    accepts, never refuses: the same predicates on the same values (tests/test_event_fast.py
    holds it to the model's answers), at a fifth of the cost."""
    try:
        raw = _decode_json(text)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):  # lone surrogates
        return None
    if (
        type(raw) is not dict
        or not _EVENT_FIELDS.issuperset(raw)
        or not raw.keys() >= _REQUIRED_FIELDS
    ):
        return None
    event_id, stamp, source, payload = (
        raw["event_id"],
        raw["timestamp"],
        raw["source"],
        raw["payload"],
    )
    if (
        raw.get("topic", topic) != topic
        or not 0 < len(topic) <= MAX_NAME_LENGTH
        or not (_plain_ascii(topic) or _NAME.match(topic))
        or topic.count("/") >= MAX_TOPIC_LEVELS
        or type(event_id) is not str
        or not 0 < len(event_id) <= MAX_NAME_LENGTH
        or not (_plain_ascii(event_id) or _NAME.match(event_id))
        or type(source) is not str
        or not 0 < len(source) <= MAX_NAME_LENGTH
        or not (source.isascii() or _INVISIBLE_CHAR.search(source) is None)
        or type(payload) is not dict
        or type(stamp) is not str
        or not _PLAIN_TIMESTAMP.fullmatch(stamp)
    ):
        return None
    # msgspec refuses NaN, Infinity and numbers beyond a double, so `unstorable` can find
    # something only with a \u escape (NUL) or with more containers than MAX_DEPTH.
    escaped = "\\u" in text and may_hold_unstorable(text)
    if (escaped or text.count("{") + text.count("[") > MAX_DEPTH) and unstorable(
        raw, strings=escaped
    ) is not None:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
        offset = int(moment.utcoffset().total_seconds())  # type: ignore[union-attr]
        if not 1 < moment.year < 9999:
            moment.astimezone(UTC)  # `_utc_representable`
    except (ValueError, OverflowError):
        return None
    zone = _zones.get(offset)
    if zone is None:
        zone = _zones.setdefault(offset, TzInfo(offset))
    event = _new_event(Event)
    # What `model_construct` sets, without its loop over the fields in Python.
    _set_slot(
        event,
        "__dict__",
        {
            "topic": topic,
            "event_id": event_id,
            "timestamp": moment.replace(tzinfo=zone),
            "source": source,
            "payload": payload,
        },
    )
    _set_slot(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    _set_slot(event, "__pydantic_extra__", None)
    _set_slot(event, "__pydantic_private__", None)
    return event


def parse_message(
    mqtt_topic: str,
    body: bytes,
    *,
    prefix: str = DEFAULT_TOPIC_PREFIX,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_nodes: int = DEFAULT_MAX_EVENT_NODES,
) -> Event | Rejection:
    """Parse one MQTT message published on `<prefix><topic>`. A body holding more than
    `max_nodes` nodes (JSON values) is refused before it is parsed: what would cost memory is
    the parsed form."""
    if len(body) > max_payload_bytes:
        return Rejection("too_large", f"message is {len(body)} bytes, limit {max_payload_bytes}")
    if not mqtt_topic.startswith(prefix) or len(mqtt_topic) == len(prefix):
        shown = _shown.repr(mqtt_topic)
        return Rejection("bad_topic", f"MQTT topic {shown} is not under {prefix!r}")
    topic = mqtt_topic[len(prefix) :]
    text = decode_body(body)
    if isinstance(text, Rejection):
        return text
    # Each value after the first takes two characters at least (`,0`): most bodies are
    # too short to hold too many, and are not counted.
    if (len(text) + 1) // 2 > max_nodes and (nodes := count_nodes(text)) > max_nodes:
        return Rejection("too_complex", f"{too_many_nodes(max_nodes)}: {nodes}")
    return fast_event(topic, text) or model_event(topic, text)


def model_event(topic: str, text: str) -> Event | Rejection:
    """`text` on `topic` through `json.loads` and the model: what decides and explains."""
    try:
        raw = json.loads(text)
    except RecursionError:
        # The same code as a depth found below: how deep the parser got depends on the stack.
        return Rejection("schema", f"body is nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:
        return Rejection("not_json", f"body is not JSON: {exc}")
    if not isinstance(raw, dict):
        return Rejection("schema", f"body must be a JSON object, got {type(raw).__name__}")
    # Only a \u escape can put NUL or a surrogate in a string: skip that check without one.
    problem = unstorable(raw, strings=may_hold_unstorable(text))
    if problem is not None:
        field, what = problem
        return Rejection("schema", f"{field}: {what}" if field else what)
    # On MQTT the topic field may be omitted; if present it must name the MQTT topic.
    claimed = raw.get("topic", topic)
    if claimed != topic:
        return Rejection(
            "topic_mismatch",
            f"topic field {_shown.repr(claimed)} does not match MQTT topic {_shown.repr(topic)}",
        )
    try:
        return Event.model_validate({**raw, "topic": topic})
    except ValidationError as exc:
        return Rejection("schema", describe(exc))
