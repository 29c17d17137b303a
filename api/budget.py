"""A bound on the request bodies the sidecar holds at once.

A 16 MiB body costs several times that while it is read, parsed and published; four at
once took the sidecar to 1.9 GB. Each `POST /publish` holds its share of the budget
(its Content-Length, or the largest body allowed when it declares none) from before it
reads a byte until it answers; past the budget, requests wait their turn, unread (the
socket's own flow control holds the rest), and one that waits too long gets 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Busy(Exception):
    """The body budget stayed full for as long as a request may wait (a 503 with Retry-After)."""


class BodyBudget:
    """At most `limit` bytes held by requests at once; a request larger than `limit`
    holds all of it, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, size: int, timeout: float) -> AsyncIterator[None]:
        """Hold `size` bytes for the `with` block; `Busy` after `timeout` seconds."""
        size = min(size, self.limit)
        async with self._freed:
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self.held + size <= self.limit), timeout
                )
            except TimeoutError:
                raise Busy(
                    f"busy: {self.held} bytes of request bodies in progress, limit"
                    f" {self.limit}; retry later"
                ) from None
            self.held += size
        try:
            yield
        finally:
            async with self._freed:
                self.held -= size
                self._freed.notify_all()
