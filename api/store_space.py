"""What the sidecar says of the store's room: the live bridges' reports (`bridge.capacity`,
kept in the store by `bridge.store.space`) summed up for /healthz, /stats and /metrics,
and, for a SQLite store, the free space of its disk seen by the sidecar itself.

A disk that is really full (ENOSPC) stops the bridge's heartbeat and report too, since
they are writes: so the sidecar looks at the disk itself (`statvfs`, a syscall) and calls
it full below `DISK_FULL_BYTES` free. A PostgreSQL server's disk is not the sidecar's to
look at: a bridge that meets PostgreSQL's "disk full" says so in its log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bridge.store import SpaceReport, SQLiteUrl, StoreUrl

# Less room than this on a SQLite store's disk is a full disk: a batch needs more.
DISK_FULL_BYTES = 1024 * 1024


def disk_free_bytes(url: StoreUrl) -> int | None:
    """Bytes an unprivileged writer may still use on the SQLite store's disk; None for
    PostgreSQL, or before the store's directory exists."""
    if not isinstance(url, SQLiteUrl):
        return None
    try:
        disk = os.statvfs(url.path.parent)
    except OSError:
        return None
    return disk.f_bavail * disk.f_frsize


@dataclass(frozen=True, slots=True)
class StoreSpace:
    """`full` says why bridges stopped writing (None while every one writes); `used_bytes`
    is the largest measure reported, `max_bytes` the smallest cap (None: none known)."""

    full: str | None
    used_bytes: int | None
    max_bytes: int | None
    disk_free_bytes: int | None = None

    @classmethod
    def of(cls, reports: list[SpaceReport], url: StoreUrl) -> StoreSpace:
        full = [f"bridge {r.client_id}: {r.full}" for r in reports if r.full is not None]
        free = disk_free_bytes(url)
        if free is not None and free < DISK_FULL_BYTES and isinstance(url, SQLiteUrl):
            full.insert(0, f"the disk of {url.path} is full: {free} bytes free")
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
            "store_disk_free_bytes": self.disk_free_bytes,
        }
