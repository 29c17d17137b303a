"""Property tests: whatever arrives, parsing gives an event or a rejection with a reason.

Hypothesis generates arbitrary bytes on arbitrary topics, and JSON-ish documents
that are nearly events: deep nesting, huge strings, NaN, numbers where strings
belong, empty fields, the wrong topic. An accepted event must also be one the
stores and the sidecar can keep and serve back; a rejection must be short and
storable itself. The sidecar's batch parser gets the same documents.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from api.batch import InvalidBatch, TooLarge, to_messages
from api.errors import answer
from bridge.event import (
    MAX_NAME_LENGTH,
    MAX_TOPIC_LEVELS,
    Event,
    Rejection,
    count_nodes,
    parse_message,
    unstorable,
)
from tests.helpers import examples

CODES = {
    "too_large",
    "too_complex",
    "bad_topic",
    "not_utf8",
    "not_json",
    "schema",
    "topic_mismatch",
}
# Reasons name what is wrong and show a bounded part of it.
MAX_REASON_CHARS = 1000
LIMIT = 64 * 1024
# Timestamps whose UTC equivalent exists (0001-01-01T00:00+01:00 has none: rejected by design).
MIN_UTC, MAX_UTC = datetime.min, datetime.max

PROPERTY = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def check(result: Event | Rejection, mqtt_topic: str) -> None:
    """The contract: an event the stores can keep, or a short, storable rejection."""
    if isinstance(result, Event):
        assert mqtt_topic == f"logs/{result.topic}"
        # What the stores and the sidecar do with an event: UTF-8 text, UTC, JSON out.
        json.dumps(result.payload, ensure_ascii=False, allow_nan=False).encode()
        result.timestamp.astimezone(UTC)
        result.model_dump_json()
    else:
        assert isinstance(result, Rejection)
        assert result.code in CODES
        assert result.reason.strip()
        assert len(result.reason) <= MAX_REASON_CHARS
        result.reason.encode()


@PROPERTY
@given(mqtt_topic=st.text(), body=st.binary(max_size=2048))
def test_any_bytes_on_any_topic(mqtt_topic: str, body: bytes) -> None:
    check(parse_message(mqtt_topic, body), mqtt_topic)


# JSON-ish values: every JSON type, plus what Python's json module also reads and writes
# (NaN, Infinity, lone surrogates), big numbers and long text.
# Text with what JSON escapes can carry but UTF-8 and the stores cannot: NUL, lone surrogates.
texts = (
    st.text()
    | st.text(st.characters(exclude_categories=()))
    | st.sampled_from(["\x00", "a\ud800", "\udfff", "\ud83d\ude00", "😀"])
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**4000)
    | st.floats()
    | texts
    | st.builds(lambda c, n: c * n, st.characters(), st.integers(0, 100_000))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


# Up to 100 levels as objects (json.dumps recurses); deeper as text, below.
deep = st.builds(nested, st.integers(0, 100), values)
names = (
    st.sampled_from(["app", "auth.prod", "e-1", "a/b", "ünï", "😀"])
    | texts
    | st.sampled_from(["", "a+b", "a/#", "x\x00y", "x" * (MAX_NAME_LENGTH + 1)])
    | values
)
timestamps = (
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.datetimes().map(lambda d: d.isoformat())  # no offset
    | st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", ""])
    | st.sampled_from(["2026-11-26T12:00:00+00:01:15", "2026-11-26T12:00:00Z"])
    | values
)
payloads = st.dictionaries(texts, values | deep, max_size=5) | values | deep
documents = st.fixed_dictionaries(
    {},
    optional={
        "topic": names,
        "event_id": names,
        "timestamp": timestamps,
        "source": names,
        "payload": payloads,
        "extra": values,
    },
)


def dump(doc: Any, ascii_only: bool) -> bytes:
    """Python's JSON, NaN and lone surrogates included (escaped, or as invalid UTF-8)."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@PROPERTY
@given(
    topic=names.filter(lambda t: isinstance(t, str)),
    doc=documents | values | deep,
    ascii_only=st.booleans(),
)
def test_jsonish_documents(topic: str, doc: Any, ascii_only: bool) -> None:
    mqtt_topic = f"logs/{topic}"
    check(parse_message(mqtt_topic, dump(doc, ascii_only), max_payload_bytes=LIMIT), mqtt_topic)


GOOD = {"event_id": "e", "timestamp": "2026-11-26T12:00:00Z", "source": "s", "payload": {}}


@PROPERTY
@given(
    depth=st.integers(0, 2_000) | st.integers(0, 200_000),
    field=st.sampled_from([None, "payload", "topic", "event_id", "source", "timestamp"]),
    brackets=st.sampled_from([("[", "]"), ('{"k":', "}"), ('{"k":[', "]}")]),
)
def test_deep_nesting_as_text(depth: int, field: str | None, brackets: tuple[str, str]) -> None:
    """Nesting far past any recursion limit, as the whole body or in one field."""
    nest = brackets[0] * depth + "1" + brackets[1] * depth
    body = json.dumps({**GOOD, field: "NEST"}).replace('"NEST"', nest) if field else nest
    check(parse_message("logs/t", body.encode(), max_payload_bytes=10**7), "logs/t")


@PROPERTY
@given(doc=documents | values | deep, batch=st.booleans(), ascii_only=st.booleans())
def test_sidecar_batches_of_jsonish_documents(doc: Any, batch: bool, ascii_only: bool) -> None:
    """POST /publish's parser: messages the bridge accepts as they are, or a refusal whose
    answer (413/422) can be sent as JSON."""
    body = dump([doc] if batch else doc, ascii_only)
    refused: InvalidBatch | TooLarge | None = None
    try:
        messages = to_messages(body, prefix="logs/", max_batch=100, max_payload_bytes=LIMIT)
    except (InvalidBatch, TooLarge) as exc:
        refused = exc
    if refused is not None:
        # The answer is rendered as it is made: JSON, or an error here.
        assert answer(refused).status_code in (413, 422)
        return
    for mqtt_topic, message in messages:
        assert isinstance(parse_message(mqtt_topic, message, max_payload_bytes=LIMIT), Event)


# ISO 8601 offsets are whole minutes (Python writes seconds for old local mean times).
offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
# Names: no wildcards, controls, surrogates or noncharacters (Cn: those and the unassigned),
# nor format characters (Cf: the invisible ones refused, and a few harmless others).
good_names = st.text(
    st.characters(exclude_characters="#+", exclude_categories=["Cc", "Cs", "Cn", "Cf"]),
    min_size=1,
    max_size=MAX_NAME_LENGTH,
)
good_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(good_names, inner, max_size=4),
    max_leaves=20,
)


@PROPERTY
@given(
    topic=good_names.filter(lambda t: t.count("/") < MAX_TOPIC_LEVELS),
    event_id=good_names,
    source=good_names,
    stamp=st.datetimes(timezones=offsets),
    payload=st.dictionaries(good_names, good_values, max_size=6),
    with_topic=st.booleans(),
    ascii_only=st.booleans(),
)
def test_valid_events_are_accepted_whole(
    topic: str,
    event_id: str,
    source: str,
    stamp: Any,
    payload: dict[str, Any],
    with_topic: bool,
    ascii_only: bool,
) -> None:
    """No false rejections: emoji (escaped as surrogate pairs or not), any offset, any
    Unicode name are fine, and the event comes out as it went in."""
    doc = {"event_id": event_id, "timestamp": stamp.isoformat(), "source": source}
    doc["payload"] = payload
    if with_topic:
        doc["topic"] = topic
    assume(MIN_UTC <= stamp.replace(tzinfo=None) - stamp.utcoffset() <= MAX_UTC)
    result = parse_message(f"logs/{topic}", dump(doc, ascii_only), max_payload_bytes=10**7)
    assert isinstance(result, Event), result
    assert (result.topic, result.event_id, result.source) == (topic, event_id, source)
    assert result.timestamp == stamp
    assert result.payload == payload


@PROPERTY
@given(
    doc=st.dictionaries(good_names, good_values, min_size=1, max_size=6),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_nodes_counted_on_text_are_the_nodes_parsed(
    doc: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    """The bridge counts nodes on the text, before parsing; the sidecar on the parsed
    items: both agree, whatever the strings (brackets, commas, quotes) and whitespace."""
    nodes = count_nodes(json.dumps(doc, indent=indent, ensure_ascii=ascii_only))
    assert unstorable(doc, max_nodes=nodes) is None
    assert unstorable(doc, max_nodes=nodes - 1) is not None
