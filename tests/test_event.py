"""Parsing one MQTT message into an event or a rejection with a reason."""

from __future__ import annotations

import json

import pytest

from bridge.event import Event, Rejection, parse_message

GOOD = {
    "event_id": "e-1",
    "timestamp": "2026-11-26T10:00:00+01:00",
    "source": "auth-svc",
    "payload": {"level": "info", "msg": "login ok"},
}


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
        ("logs/t", b"[" * 100_000 + b"]" * 100_000, "not_json", "deeply"),
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


def test_parse_rejects_event_id_over_length_limit() -> None:
    """Identity fields are bounded."""
    result = parse_message("logs/t", body(event_id="x" * 201))
    assert isinstance(result, Rejection)
    assert "event_id" in result.reason


def test_parse_rejects_wildcard_in_topic_field() -> None:
    """A topic with MQTT wildcards could never be published as-is."""
    result = parse_message("logs/a+b", body())
    assert isinstance(result, Rejection)
    assert result.code == "schema"
    assert "topic" in result.reason
