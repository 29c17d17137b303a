"""What a run reports: only what the broker or the sidecar acknowledged counts as sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


class Outgoing(Protocol):
    """A message a sender sends and counts: `acked` is set when a copy is first acknowledged."""

    topic: str
    event_id: str
    acked: bool

    def body(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Summary:
    via: str
    run_id: str
    requested: int
    # Messages acknowledged, repeats included.
    sent: int
    # Distinct event ids among them: what the store should hold from this run.
    distinct: int
    elapsed_s: float

    @property
    def duplicates(self) -> int:
        return self.sent - self.distinct

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "elapsed_s": round(self.elapsed_s, 3),
            "duplicates": self.duplicates,
            "events_per_s": round(self.events_per_s, 1),
        }

    def __str__(self) -> str:
        return (
            f"sent {self.sent} of {self.requested} events via {self.via} "
            f"({self.distinct} distinct, {self.duplicates} duplicates) "
            f"in {self.elapsed_s:.2f}s: {self.events_per_s:,.0f} events/s [run {self.run_id}]"
        )


class PublishError(Exception):
    """The broker or sidecar stopped acknowledging, or refused outright. `summary`, when
    set, says what was acknowledged before the run gave up."""

    def __init__(self, reason: str, summary: Summary | None = None) -> None:
        super().__init__(reason)
        self.summary = summary


@dataclass(slots=True)
class AckCounts:
    """Counts acknowledgements; the caller serialises calls (MQTT acks arrive on paho's
    thread, under the sender's lock)."""

    sent: int = 0
    distinct: int = 0

    def acknowledged(self, message: Outgoing) -> None:
        self.sent += 1
        if not message.acked:
            message.acked = True
            self.distinct += 1
