"""What the sidecar says of the store's room: the live bridges' reports (`bridge.capacity`,
kept in the store by `bridge.store.space`) summed up for /healthz, /stats and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.store import SpaceReport


@dataclass(frozen=True, slots=True)
class StoreSpace:
    """`full` says why bridges stopped writing (None while every one writes); `used_bytes`
    is the largest measure reported, `max_bytes` the smallest cap (None: none known)."""

    full: str | None
    used_bytes: int | None
    max_bytes: int | None

    @classmethod
    def of(cls, reports: list[SpaceReport]) -> StoreSpace:
        full = [f"bridge {r.client_id}: {r.full}" for r in reports if r.full is not None]
        used = [r.used_bytes for r in reports if r.used_bytes is not None]
        caps = [r.max_bytes for r in reports if r.max_bytes is not None]
        return cls("; ".join(full) or None, max(used, default=None), min(caps, default=None))

    def stats_fields(self) -> dict[str, Any]:
        """The /stats fields (`StatsReport`)."""
        return {
            "store_full": self.full is not None,
            "store_full_reason": self.full,
            "store_used_bytes": self.used_bytes,
            "max_store_bytes": self.max_bytes,
        }
