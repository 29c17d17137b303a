"""The newest rows, from a store that only pages forward (`after` a seq, oldest first).

A tail starts from the newest N rows. Until the store has a query for them,
the cursor that leaves exactly N rows after it is found by galloping, then
bisecting, over `after`: about 2·log2(newest seq / N) indexed reads of at
most N rows each, a few milliseconds on a store of millions of events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Row(Protocol):
    @property
    def seq(self) -> int: ...


class Fetch(Protocol):
    """A store read: up to `limit` rows with a seq above `after`, oldest first."""

    def __call__(self, *, after: int, limit: int) -> Sequence[Row]: ...


def newest_after(fetch: Fetch, after: int, count: int) -> int:
    """The cursor past `after` that leaves the newest `count` rows after it (all of them if
    there are fewer); with `count` 0, the newest seq, so that only rows to come follow it."""
    want = max(count, 1)

    def enough(cursor: int) -> bool:
        return len(fetch(after=cursor, limit=want)) == want

    if not enough(after):
        cursor = after
    else:
        low, step = after, want
        while enough(low + step):
            low, step = low + step, step * 2
        high = low + step
        while high - low > 1:
            middle = (low + high) // 2
            if enough(middle):
                low = middle
            else:
                high = middle
        cursor = low
    if count == 0:
        newest = fetch(after=cursor, limit=1)
        return newest[-1].seq if newest else cursor
    return cursor
