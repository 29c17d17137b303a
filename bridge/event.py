"""The log event schema, and turning one MQTT message into an event or a rejection.

Parsing never raises on input: whatever bytes arrive on whatever topic, the
result is an `Event` or a `Rejection` that says why, so the bridge can record
it and keep going.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    ValidationError,
)

MAX_NAME_LENGTH = 200
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_TOPIC_PREFIX = "logs/"

# No MQTT wildcards or NUL: a topic must be publishable as-is under the prefix.
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[^#+\x00]+$"),
]


def _iso_text_only(value: Any) -> Any:
    """Refuse epoch numbers, which pydantic would otherwise read as dates."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO-8601 string with a UTC offset")
    return value


class Event(BaseModel):
    """One log event: `(topic, event_id)` is its identity."""

    model_config = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)

    topic: Name
    event_id: Name
    timestamp: Annotated[AwareDatetime, BeforeValidator(_iso_text_only)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused; `code` is short and stable, `reason` is for people."""

    code: str
    reason: str


def describe(error: ValidationError) -> str:
    """One line naming every failing field, e.g. `timestamp: Input should have timezone info`."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(body)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _has_non_finite(value: Any) -> bool:
    """JSON has no NaN or Infinity; Python's parser accepts them, so refuse them here."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def parse_message(
    mqtt_topic: str,
    body: bytes,
    *,
    prefix: str = DEFAULT_TOPIC_PREFIX,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Event | Rejection:
    """Parse one MQTT message published on `<prefix><topic>`."""
    if len(body) > max_payload_bytes:
        return Rejection("too_large", f"message is {len(body)} bytes, limit {max_payload_bytes}")
    if not mqtt_topic.startswith(prefix) or len(mqtt_topic) == len(prefix):
        return Rejection("bad_topic", f"MQTT topic {mqtt_topic!r} is not under {prefix!r}")
    topic = mqtt_topic[len(prefix) :]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"body is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        raw = json.loads(text)
    except RecursionError:
        return Rejection("not_json", "body is nested too deeply")
    except ValueError as exc:
        return Rejection("not_json", f"body is not JSON: {exc}")
    if not isinstance(raw, dict):
        return Rejection("schema", f"body must be a JSON object, got {type(raw).__name__}")
    if _has_non_finite(raw.get("payload")):
        return Rejection("schema", "payload: NaN and Infinity are not JSON")
    # On MQTT the topic field may be omitted; if present it must name the MQTT topic.
    claimed = raw.get("topic", topic)
    if claimed != topic:
        return Rejection(
            "topic_mismatch", f"topic field {claimed!r} does not match MQTT topic {topic!r}"
        )
    try:
        return Event.model_validate({**raw, "topic": topic})
    except ValidationError as exc:
        return Rejection("schema", describe(exc))
    except RecursionError:
        return Rejection("schema", "payload is nested too deeply")
