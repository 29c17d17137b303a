"""The parser's fast path makes exactly the event the model would, and only accepts.

`fast_event` reads a body with msgspec and checks the five fields by hand; whatever it
does not accept goes through `model_event` (json.loads and the pydantic model), which
decides and explains as before. So one property holds the two together: wherever the fast
path answers, the model accepts the same body, and the two events are the same in every
way the stores and the sidecar can see (values, types, the time zone, the JSON out).
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.stream import PREFIX, StreamSpec, drafts
from bridge.event import (
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    Event,
    Rejection,
    fast_event,
    model_event,
    parse_message,
)
from tests.helpers import examples

PROPERTY = settings(
    max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def same(fast: Event, slow: Event) -> None:
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    # Equal datetimes may differ in offset; equal payloads may differ in -0.0 or 1 vs 1.0.
    assert fast.timestamp.isoformat() == slow.timestamp.isoformat()
    assert type(fast.timestamp.tzinfo) is type(slow.timestamp.tzinfo)
    assert repr(fast.payload) == repr(slow.payload)


def agree(topic: str, text: str) -> Event | None:
    """The fast path's answer, checked against the model's."""
    fast = fast_event(topic, text)
    slow = model_event(topic, text)
    if fast is not None:
        assert isinstance(slow, Event), (text, slow)
        same(fast, slow)
    return fast


names = st.one_of(
    st.sampled_from(["app", "a/b", "x" * MAX_NAME_LENGTH, "x" * (MAX_NAME_LENGTH + 1), ""]),
    st.text(max_size=12),
    st.text(string.printable, max_size=12),
    st.sampled_from(["a\u200bb", "a#b", "a+b", "é", "a\n", "a\x7f", "\ufeff", "a/" * 120]),
)
offsets = st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-05:30", "+23:59", "+24:00"])
plain_stamps = st.builds(
    lambda day, at, frac, off: f"{day}T{at}{frac}{off}",
    st.sampled_from(["2026-12-01", "0001-01-01", "9999-12-31", "2024-02-29", "2026-02-29"]),
    st.sampled_from(["00:00:00", "23:59:59", "12:30:45", "24:00:00", "23:59:60"]),
    st.sampled_from(["", ".1", ".123", ".123456", ".1234567"]),
    st.one_of(offsets, st.sampled_from(["+01:60", "+0100", "z", ""])),
)
stamps = st.one_of(
    plain_stamps,
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=-3)))).map(
        lambda d: d.isoformat(sep=" ")
    ),
    st.text(max_size=30),
    st.integers(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(-0.0),
    st.text(max_size=20),
    st.sampled_from(["\x00", "\ud800", "é", "\u2028", "\\u0000"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, str]:
    topic = draw(names)
    doc: dict[str, Any] = {
        "event_id": draw(names),
        "timestamp": draw(stamps),
        "source": draw(names),
        "payload": draw(st.one_of(st.dictionaries(st.text(max_size=6), values), values)),
    }
    if draw(st.booleans()):
        doc["topic"] = draw(st.one_of(st.just(topic), names))
    for key in draw(st.lists(st.sampled_from([*doc, "extra"]), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(values)
    text = json.dumps(
        doc,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 1])),
        allow_nan=True,
    )
    return topic, text


@PROPERTY
@given(bodies())
@example(
    ("app", '{"event_id":"a","timestamp":"2026-12-01T00:00:00+01:60","source":"s","payload":{}}')
)
@example(
    (
        "app",
        '{"event_id":"a","timestamp":"2026-12-01T00:00:00Z","source":"s","payload":{"a":1e400}}',
    )
)
@example(
    ("app", '{"event_id":"a","timestamp":"2026-12-01T00:00:00Z","source":"s","payload":{"a":NaN}}')
)
@example(
    ("app", '{"event_id":"a","timestamp":"0001-01-01T00:00:00+01:00","source":"s","payload":{}}')
)
@example(
    (
        "app",
        '{"event_id":"a","event_id":"b","timestamp":"2026-12-01T00:00:00Z","source":"s","payload":{"a":1,"a":-0.0}}',
    )
)
@example(
    ("app", '{"event_id":"a\\u0000","timestamp":"2026-12-01T00:00:00Z","source":"s","payload":{}}')
)
def test_the_fast_path_accepts_only_what_the_model_accepts_and_makes_the_same_event(
    body: tuple[str, str],
) -> None:
    agree(*body)


@PROPERTY
@given(
    names,
    stamps.filter(lambda s: isinstance(s, str)),
    st.dictionaries(st.text(max_size=6), values, max_size=5),
)
def test_plain_events_agree(name: str, stamp: str, payload: dict[str, Any]) -> None:
    """Mostly valid events, so the fast path answers often."""
    text = json.dumps(
        {"event_id": name or "id", "timestamp": stamp, "source": "s", "payload": payload}
    )
    agree("app", text)


def test_ordinary_events_take_the_fast_path() -> None:
    """The benchmark's events, and the common timestamp forms, are all read by the fast path
    (else this test could pass with a fast path that never answers)."""
    now = datetime.now(UTC).timestamp()
    for draft in drafts(StreamSpec(200, 0.0, 100)):
        text = draft.body(now).decode()
        assert agree(draft.topic, text) is not None
        result = parse_message(PREFIX + draft.topic, draft.body(now))
        assert isinstance(result, Event)
    for stamp in [
        "2026-12-01T14:02:00Z",
        "2026-12-01T15:02:00.5+01:00",
        "2026-12-01T09:02:00-05:00",
    ]:
        text = json.dumps({"event_id": "e", "timestamp": stamp, "source": "s", "payload": {}})
        assert agree("app", text) is not None


def test_what_the_fast_path_leaves_is_still_refused_with_its_reason() -> None:
    """Refusals come from the model's path: the same codes and reasons as before."""
    base = {"event_id": "e", "timestamp": "2026-12-01T14:02:00Z", "source": "s", "payload": {}}
    cases = {
        "not_json": '{"event_id": ',
        "schema": json.dumps({**base, "timestamp": "2026-12-01T14:02:00+01:60"}),
    }
    for code, text in cases.items():
        assert fast_event("app", text) is None
        result = parse_message("logs/app", text.encode())
        assert isinstance(result, Rejection)
        assert result.code == code
    result = parse_message(
        "logs/app", json.dumps({**base, "payload": {"x": float("nan")}}).encode()
    )
    assert result == Rejection("schema", "payload: NaN and Infinity are not JSON")


def test_depth_and_nul_are_checked_where_they_can_be() -> None:
    """The fast path skips the walk over the payload unless a \\u escape or more than
    MAX_DEPTH brackets make a problem possible: at the limit and past it, both paths agree."""
    for depth in (MAX_DEPTH - 2, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2):
        nested = "[" * depth + "]" * depth
        text = (
            '{"event_id":"e","timestamp":"2026-12-01T14:02:00Z","source":"s",'
            f'"payload":{{"a":{nested}}}}}'
        )
        assert (agree("app", text) is None) == isinstance(model_event("app", text), Rejection)
    for value in ("\\u0000", "\\u00e9", "a\\u0000b"):
        text = json.dumps({"event_id": "e", "timestamp": "2026-12-01T14:02:00Z", "source": "s"})
        text = text[:-1] + f', "payload": {{"k": "{value}"}}}}'
        slow = model_event("app", text)
        assert (agree("app", text) is None) == isinstance(slow, Rejection), value
    assert isinstance(model_event("app", text), Rejection)  # the last one holds a NUL
