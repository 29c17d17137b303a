"""Parsing one MQTT message into an event or a rejection with a reason."""

from __future__ import annotations

import json
from functools import partial

import pytest

from api.batch import InvalidBatch, to_messages
from api.errors import answer
from api.models import ItemError
from bridge.event import (
    DEFAULT_MAX_EVENT_NODES,
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    MAX_TOPIC_LEVELS,
    Event,
    Rejection,
    parse_message,
)

GOOD = {
    "event_id": "e-1",
    "timestamp": "2026-11-26T10:00:00+01:00",
    "source": "auth-svc",
    "payload": {"level": "info", "msg": "login ok"},
}

http_messages = partial(to_messages, prefix="logs/", max_batch=10, max_payload_bytes=256 * 1024)


def body(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_parse_valid_event_takes_topic_from_mqtt_topic() -> None:
    """The topic field may be omitted on MQTT: it comes from `logs/<topic>`."""
    event = parse_message("logs/auth.prod", body())
    assert isinstance(event, Event)
    assert event.topic == "auth.prod"
    assert event.timestamp.utcoffset() is not None


def test_parse_valid_event_with_matching_topic_field() -> None:
    """A topic field that names the MQTT topic is accepted."""
    assert isinstance(parse_message("logs/a/b", body(topic="a/b")), Event)


@pytest.mark.parametrize(
    ("mqtt_topic", "raw", "code", "says"),
    [
        ("logs/t", b"\xff\xfe", "not_utf8", "UTF-8"),
        ("logs/t", b"{nope", "not_json", "not JSON"),
        ("logs/t", b"[1, 2]", "schema", "JSON object"),
        ("logs/t", body(event_id=...), "schema", "event_id: Field required"),
        ("logs/t", body(event_id=7), "schema", "event_id: Input should be a valid string"),
        ("logs/t", body(event_id=""), "schema", "event_id"),
        ("logs/t", body(timestamp="2026-11-26T10:00:00"), "schema", "timezone"),
        ("logs/t", body(timestamp=1764151200), "schema", "ISO-8601"),
        ("logs/t", body(payload="text"), "schema", "payload"),
        ("logs/t", body(source=...), "schema", "source"),
        ("logs/t", body(extra=1), "schema", "extra"),
        ("logs/t", body(topic="other"), "topic_mismatch", "'other'"),
        (
            "logs/t",
            b'{"event_id":"a","timestamp":"2026-01-01T00:00:00Z","source":"s","payload":{"x":NaN}}',
            "schema",
            "NaN",
        ),
        ("logs/t", b"[" * 5_000 + b"]" * 5_000, "schema", "nested deeper than 64"),
        ("logs/t", body(payload={"x": 1e999}), "schema", "payload: NaN and Infinity"),
        ("logs/t", body(source="a\x00b"), "schema", "source: contains NUL"),
        ("logs/t", body(payload={"k": "\ud800"}), "schema", "payload: contains NUL or an unpaired"),
        ("logs/t", body(payload={"\udfff": 1}), "schema", "payload: contains NUL or an unpaired"),
        ("logs/t", body(timestamp="0001-01-01T00:00:00+01:00"), "schema", "out of range"),
        ("logs/t", body(event_id="a\nb"), "schema", "event_id: Value error, must not contain"),
        ("logs/t", body(event_id="a\ufffe"), "schema", "Unicode noncharacters"),
        ("other/t", body(), "bad_topic", "not under"),
        ("logs/", body(), "bad_topic", "not under"),
        ("logs/t", body(payload={"x": "y" * 300_000}), "too_large", "limit"),
    ],
)
def test_parse_rejects_with_reason(mqtt_topic: str, raw: bytes, code: str, says: str) -> None:
    """Every malformed message becomes a rejection whose reason names what is wrong."""
    result = parse_message(mqtt_topic, raw)
    assert isinstance(result, Rejection)
    assert result.code == code
    assert says in result.reason


def test_parse_rejects_wildcard_in_topic_field() -> None:
    """A topic with MQTT wildcards could never be published as-is."""
    result = parse_message("logs/a+b", body())
    assert isinstance(result, Rejection)
    assert result.code == "schema"
    assert "topic" in result.reason


def nested(depth: int) -> object:
    doc: object = 1
    for _ in range(depth):
        doc = {"k": doc}
    return doc


def test_parse_nesting_limit_is_max_depth() -> None:
    """64 levels of arrays and objects inside a field are kept; 65 are refused, with the field."""
    assert isinstance(parse_message("logs/t", body(payload=nested(MAX_DEPTH))), Event)
    result = parse_message("logs/t", body(payload=nested(MAX_DEPTH + 1)))
    assert result == Rejection("schema", f"payload: nested deeper than {MAX_DEPTH} levels")


def test_parse_node_limit_refuses_dense_json_before_parsing_it() -> None:
    """256 KiB of `[{}, {}, …]` (85,000 objects, 6.9 MB parsed) is refused, counted on the
    text; an event of exactly the limit is kept, its strings' brackets and commas not
    counted."""
    dense: dict[str, list[dict[str, object]]] = {"a": [{}] * 85_000}
    result = parse_message("logs/t", body(payload=dense).replace(b", ", b","))
    assert isinstance(result, Rejection)
    assert result.code == "too_complex"
    assert result.reason.endswith("JSON nodes (objects, arrays, strings, numbers): 85006")
    # The root, its 4 fields (payload among them) and the array under "a": 6, then the items.
    items = DEFAULT_MAX_EVENT_NODES - 6
    at_limit = body(payload={"a": ["[{,}]"] * items})
    assert isinstance(parse_message("logs/t", at_limit), Event)
    over = body(payload={"a": ["[{,}]"] * (items + 1)})
    assert parse_message("logs/t", over) == Rejection(
        "too_complex",
        f"event holds more than {DEFAULT_MAX_EVENT_NODES} JSON nodes (objects, arrays, strings,"
        f" numbers): {DEFAULT_MAX_EVENT_NODES + 1}",
    )


def test_parse_name_length_limit_is_max_name_length() -> None:
    """topic, event_id and source: MAX_NAME_LENGTH characters are fine, one more is refused."""
    longest = "x" * MAX_NAME_LENGTH
    assert isinstance(
        parse_message(f"logs/{longest}", body(event_id=longest, source=longest)), Event
    )
    for topic, fields in (
        (longest + "x", {}),
        ("t", {"event_id": longest + "x"}),
        ("t", {"source": longest + "x"}),
    ):
        result = parse_message(f"logs/{topic}", body(**fields))
        assert isinstance(result, Rejection)
        assert f"at most {MAX_NAME_LENGTH} characters" in result.reason


def test_parse_accepts_escaped_surrogate_pairs_and_unicode() -> None:
    """Only unpaired surrogates are refused: an escaped emoji is a character like any other."""
    raw = body(payload={"msg": "😀 ünï"})
    assert b"\\ud83d\\ude00" in raw  # json.dumps escapes it as a pair
    event = parse_message("logs/t", raw)
    assert isinstance(event, Event)
    assert event.payload == {"msg": "😀 ünï"}


def test_parse_reasons_are_bounded() -> None:
    """A huge bad value, thousands of bad fields or a line break in a field name still give
    a reason of one short line."""
    mismatch = parse_message("logs/t", body(topic="y" * 100_000))
    many = parse_message("logs/t", body(**{f"extra{i}": i for i in range(5000)}))
    for result in (mismatch, many):
        assert isinstance(result, Rejection)
        assert len(result.reason) < 500
    assert isinstance(many, Rejection)
    assert many.reason.endswith("and 4995 more errors")
    injected = parse_message("logs/t", body(**{"x\n2026-01-01 ERROR forged": 1}))
    assert isinstance(injected, Rejection)
    assert "\n" not in injected.reason


# Zero-width and bidirectional-control characters, and the BOM: what lets a name pose as another.
INVISIBLE = [
    *map(chr, range(0x200B, 0x2010)),
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2060, 0x2065)),
    *map(chr, range(0x2066, 0x206A)),
    "\ufeff",
]


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("field", ["topic", "event_id", "source"])
def test_invisible_characters_are_refused_in_names_over_mqtt_and_http(
    field: str, char: str
) -> None:
    """`auth\\u200b.prod` would pose as `auth.prod`: refused by the one schema, both ways."""
    name = f"auth{char}.prod"
    result = parse_message(f"logs/{name}" if field == "topic" else "logs/t", body(**{field: name}))
    assert isinstance(result, Rejection)
    assert (result.code, result.reason.split(":")[0]) == ("schema", field)
    assert "invisible characters" in result.reason
    with pytest.raises(InvalidBatch) as refused:
        http_messages(body(**{"topic": "t", field: name}))
    assert [(e.field, "invisible characters" in e.message) for e in refused.value.errors] == [
        (field, True)
    ]


def test_a_byte_order_mark_is_refused_over_mqtt_and_http_alike() -> None:
    """One rule for both roads: a BOM-prefixed body is refused with the same reason."""
    raw = "\ufeff".encode() + body(topic="t")
    result = parse_message("logs/t", raw)
    assert isinstance(result, Rejection)
    with pytest.raises(InvalidBatch) as refused:
        http_messages(raw)
    assert answer(refused.value).status_code == 422
    assert refused.value.errors == (ItemError(index=None, field=None, message=result.reason),)
    assert (result.code, result.reason) == (
        "not_json",
        "body starts with a byte order mark (U+FEFF): send JSON without one",
    )
    # UTF-16, which json.loads would read from bytes, is no more JSON here than over MQTT.
    utf16 = body(topic="t").decode().encode("utf-16")
    with pytest.raises(InvalidBatch):
        http_messages(utf16)
    assert isinstance(parse_message("logs/t", utf16), Rejection)


def test_topic_levels_are_bounded_over_mqtt_and_http() -> None:
    """MAX_TOPIC_LEVELS levels are fine, one more is refused, whichever way it comes."""
    deepest = "/" * (MAX_TOPIC_LEVELS - 1)
    assert isinstance(parse_message(f"logs/{deepest}", body()), Event)
    assert http_messages(body(topic=deepest))[0][0] == f"logs/{deepest}"
    result = parse_message(f"logs/{deepest}/", body())
    assert isinstance(result, Rejection)
    assert result.reason.startswith(f"topic: Value error, has {MAX_TOPIC_LEVELS + 1} levels")
    with pytest.raises(InvalidBatch):
        http_messages(body(topic=deepest + "/"))
