"""From a `POST /publish` body to MQTT messages, or to errors naming each failing item.

Every item is checked before anything is published: one bad item refuses the
whole batch, so a client never has to work out which part got through. The errors
are the sidecar's own; api/errors.py answers them over HTTP (413, 422).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from api.models import ItemError
from api.publishing import Message
from api.settings import DEFAULT_MAX_BODY_NODES
from bridge.event import (
    DEFAULT_MAX_EVENT_NODES,
    MAX_REASON_ERRORS,
    Event,
    Rejection,
    count_nodes,
    decode_body,
    may_hold_unstorable,
    unstorable,
)


async def read_body(chunks: AsyncIterable[bytes], declared: int | None, limit: int) -> bytearray:
    """The body, refused (`TooLarge`) as soon as it is known to exceed `limit` bytes: from
    its declared length when there is one, and while reading, for chunked bodies or a lying
    header."""
    if declared is not None and declared > limit:
        raise TooLarge(f"body is {declared} bytes, limit {limit}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body exceeds the limit of {limit} bytes")
    return body  # not copied to bytes: a 16 MiB body would be held twice


# The event as compact JSON bytes, straight from pydantic's serialiser (no str in between).
_SERIALISE = Event.__pydantic_serializer__.to_json


def _refuse_constant(name: str) -> object:
    """Python's parser accepts NaN and Infinity; JSON (and the bridge) do not."""
    raise ValueError(f"{name} is not JSON")


class TooLarge(Exception):
    """A body past one of its size limits (bytes, events or JSON nodes): the message says which."""


class InvalidBatch(Exception):
    """Every failing item, each with its index and field; `reason` is the same in one bounded
    line, for the log."""

    def __init__(self, errors: Sequence[ItemError]) -> None:
        self.errors = tuple(errors)
        parts = [
            " ".join(
                filter(None, [f"[{e.index}]" if e.index is not None else None, e.field, e.message])
            )
            for e in errors[:MAX_REASON_ERRORS]
        ]
        if len(errors) > MAX_REASON_ERRORS:
            parts.append(f"and {len(errors) - MAX_REASON_ERRORS} more errors")
        # Field names and messages can quote what was sent: one printable line, bounded.
        self.reason = "; ".join(p if p.isprintable() else repr(p) for p in parts)[:2000]
        super().__init__(self.reason)


def _invalid(*errors: ItemError) -> InvalidBatch:
    return InvalidBatch(errors)


def _prefixed(topic: str, prefix: str) -> str | None:
    """Why a topic that already carries the MQTT prefix is refused: the sidecar adds it, so
    `logs/auth.prod` would be published on `logs/logs/auth.prod`, a topic of its own."""
    if not topic.startswith(prefix):
        return None
    return (
        f"starts with the MQTT topic prefix {prefix!r}, which the sidecar adds:"
        f" send {topic[len(prefix) :]!r}"
    )


def to_messages(
    body: bytes | bytearray,
    *,
    prefix: str,
    max_batch: int,
    max_payload_bytes: int,
    max_nodes: int = DEFAULT_MAX_EVENT_NODES,
    max_body_nodes: int = DEFAULT_MAX_BODY_NODES,
) -> list[Message]:
    """One event object or a JSON array of them, as `(mqtt_topic, compact JSON)` pairs.

    Raises `InvalidBatch` listing every failing item's index and field, or `TooLarge` past
    `max_batch` events or `max_body_nodes` JSON nodes (counted on the text: parsed, they
    would cost up to 30 times the body). An item of more than `max_nodes` nodes is invalid,
    as the bridge would reject it.
    """
    text = decode_body(body)
    if isinstance(text, Rejection):
        raise _invalid(ItemError(index=None, field=None, message=text.reason))
    try:
        # Each node after the first takes two characters at least: most bodies are not counted.
        if (len(text) + 1) // 2 > max_body_nodes and (nodes := count_nodes(text)) > max_body_nodes:
            raise TooLarge(f"body holds {nodes} JSON nodes, limit {max_body_nodes}")
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise _invalid(
            ItemError(index=None, field=None, message=f"body is not JSON: {exc}")
        ) from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise _invalid(
            ItemError(index=None, field=None, message="empty batch: send 1 or more events")
        )
    if len(items) > max_batch:
        raise TooLarge(f"batch has {len(items)} events, limit {max_batch}")
    events, errors = _validated(items, may_hold_unstorable(text), max_nodes)
    messages: list[Message] = []
    for index, event in events:
        message = _SERIALISE(event)
        if (problem_text := _prefixed(event.topic, prefix)) is not None:
            errors.append(ItemError(index=index, field="topic", message=problem_text))
        elif len(message) > max_payload_bytes:
            errors.append(
                ItemError(
                    index=index,
                    field="payload",
                    message=f"event is {len(message)} bytes as JSON, limit {max_payload_bytes}",
                )
            )
        else:
            messages.append((prefix + event.topic, message))
    if errors:
        errors.sort(key=lambda e: e.index or 0)  # stable: each item's errors in their order
        raise _invalid(*errors)
    return messages


@functools.cache
def _events() -> TypeAdapter[list[Event]]:
    """Built when first used, not on import: compiling it takes a while."""
    return TypeAdapter(list[Event])


def _validated(
    items: list[Any], strings: bool, max_nodes: int
) -> tuple[list[tuple[int, Event]], list[ItemError]]:
    """The valid items as events, with their index; the errors of the others.

    A batch is validated in one pass, a fifth cheaper than item by item; only a batch
    with an error goes through item by item, to name every failing item and field."""
    errors: list[ItemError] = []
    for index, item in enumerate(items):
        # First, so that neither the validator nor this answer meets a bad key or depth.
        if isinstance(item, dict):
            problem = unstorable(item, strings=strings, max_nodes=max_nodes)
            if problem is not None:
                errors.append(ItemError(index=index, field=problem[0], message=problem[1]))
    if not errors:
        try:
            return list(enumerate(_events().validate_python(items))), errors
        except ValidationError:
            pass
    failed = {e.index for e in errors}
    events: list[tuple[int, Event]] = []
    for index, item in enumerate(items):
        if index in failed:
            continue
        try:
            events.append((index, Event.model_validate(item)))
        except ValidationError as exc:
            errors += (
                ItemError(
                    index=index,
                    field=".".join(str(part) for part in e["loc"]) or None,
                    message=e["msg"],
                )
                for e in exc.errors(include_url=False)
            )
    return events, errors
