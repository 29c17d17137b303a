"""`logagg replay`: events from an export (NDJSON, `logagg export` or `GET /events/export`)
published again, QoS 1, each on `<prefix><topic>` with its original `event_id`,
`timestamp` (the text as exported: same instant, same offset), `source` and `payload`.

Sent by the publisher's own QoS 1 machinery (publisher/mqtt.py): at most a window of
messages waits for its PUBACK, and the run ends once every message is acknowledged. Only
a PUBACK counts a message as replayed. Re-sending is safe by design: an event the store
already holds is a counted duplicate, so a replay interrupted (Ctrl-C, a crash) is simply
run again, and a replay into the logagg it was exported from stores nothing new.

A line that is not an event (not JSON, a field missing or refused as the bridge would
refuse it, an export's error line) is reported with its line number, counted and
skipped; the run goes on, and exits with status 1 at the end if any line was skipped.
`seq` and `received_at` are read past: the store that receives the event gives its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from bridge.event import Rejection, parse_message
from publisher.mqtt import MqttSender
from publisher.run import PROGRESS_EVERY_S, Pacer
from publisher.settings import ReplaySettings
from publisher.summary import AckCounts, PublishError

# No line longer than this is read whole: the longest event the bridge takes by default is
# 256 KiB, and a file without newlines must not be read into memory at once.
MAX_LINE_BYTES = 16 * 1024 * 1024
# The fields a replay sends; `topic` goes into the MQTT topic.
SENT = ("event_id", "timestamp", "source", "payload")


@dataclass(slots=True, eq=False)
class Replayed:
    """One exported event on its way out: its MQTT topic (without the prefix) and body."""

    topic: str
    event_id: str
    payload: bytes
    acked: bool = False

    def body(self) -> bytes:
        return self.payload


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.reason}"


@dataclass(slots=True)
class ReplaySummary:
    """What a run did: lines read, events acknowledged, bad lines skipped."""

    lines: int = 0
    sent: int = 0
    bad: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    error: str | None = None
    first_bad: list[BadLine] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "sent": self.sent,
            "bad": self.bad,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "interrupted": self.interrupted,
            "error": self.error,
        }

    def __str__(self) -> str:
        text = (
            f"replayed {self.sent:,} events of {self.lines:,} lines read"
            f" ({self.bad:,} bad lines skipped) in {self.elapsed_s:.2f}s:"
            f" {self.events_per_s:,.0f} events/s"
        )
        if self.interrupted:
            text += "; interrupted: run it again to send the rest (what is stored already"
            text += " counts as a duplicate)"
        return text


def message(number: int, line: bytes, prefix: str) -> Replayed | BadLine:
    """The message that replays `line` (number `number`), or why it cannot be one: checked
    as the bridge will check it (bridge.event.parse_message), so a bad line is named here,
    not refused later."""
    try:
        raw = json.loads(line)
    except ValueError as exc:
        return BadLine(number, f"not JSON: {exc}")
    if not isinstance(raw, dict):
        return BadLine(number, f"not a JSON object but {type(raw).__name__}")
    if "error" in raw and "topic" not in raw:
        return BadLine(number, f"the export that wrote this file failed here: {raw['error']}")
    missing = [name for name in ("topic", *SENT) if name not in raw]
    if missing:
        return BadLine(number, f"not an exported event: no {', '.join(missing)}")
    topic = raw["topic"]
    if not isinstance(topic, str):
        return BadLine(number, "topic is not a string")
    body = json.dumps(
        {name: raw[name] for name in SENT}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    checked = parse_message(prefix + topic, body, prefix=prefix)
    if isinstance(checked, Rejection):
        return BadLine(number, f"the bridge would refuse it ({checked.code}): {checked.reason}")
    return Replayed(topic, checked.event_id, body)


def numbered_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """`(number, line)` from 1, without its newline; None for a line longer than
    MAX_LINE_BYTES (skipped to its end, never held whole). Blank lines are left out."""
    number = 0
    while chunk := source.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while (rest := source.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        elif chunk.strip():
            yield number, chunk.rstrip(b"\r\n")


def replay(
    settings: ReplaySettings,
    source: IO[bytes],
    *,
    on_progress: Callable[[int], None] | None = None,
    on_bad: Callable[[BadLine], None] | None = None,
) -> ReplaySummary:
    """Publish every event of `source` and wait for each PUBACK. Ctrl-C (KeyboardInterrupt)
    stops it with the summary so far (`interrupted`); a broker that stops acknowledging
    ends it with `error` set. `on_progress` hears the count acknowledged, a few times a
    second; `on_bad` each bad line."""
    acks = AckCounts()
    summary = ReplaySummary()
    pacer = Pacer(settings.rate)
    started = time.monotonic()
    try:
        with MqttSender(settings, acks, client_id=f"logagg-replay-{uuid.uuid4().hex[:12]}") as out:
            reported = time.monotonic()
            for number, line in numbered_lines(source):
                summary.lines += 1
                found = (
                    BadLine(number, f"longer than {MAX_LINE_BYTES:,} bytes")
                    if line is None
                    else message(number, line, settings.topic_prefix)
                )
                if isinstance(found, BadLine):
                    summary.bad += 1
                    if on_bad is not None:
                        on_bad(found)
                    continue
                pacer.wait()
                out.send(found)
                if on_progress is not None and time.monotonic() - reported >= PROGRESS_EVERY_S:
                    reported = time.monotonic()
                    on_progress(acks.sent)
            out.flush()
    except KeyboardInterrupt:
        summary.interrupted = True
    except PublishError as exc:
        summary.error = str(exc)
    summary.sent = acks.sent
    summary.elapsed_s = time.monotonic() - started
    if on_progress is not None:
        on_progress(acks.sent)
    return summary
