"""Export (issue 12): every event a query matches as NDJSON, read page by page in `seq`
order with memory bounded by one page, whatever the size of the store.

Each event is one line, `{"seq", "topic", "event_id", "timestamp", "source", "payload",
"received_at"}` (the keys and values of `/events`), built by the database from the stored
text (`_EXPORT_COLUMNS` in bridge/store/sqlite.py and postgres.py): the payload is written
as the store holds it, never parsed and re-encoded in Python, which is what makes an
export fast. `logagg replay` uses `topic`, `event_id`, `timestamp`, `source` and
`payload`; `seq` and `received_at` say where and when the event was stored.

The pages are keyset pages on `seq` (`seq > last one read`, at most EXPORT_PAGE rows and
about EXPORT_PAGE_BYTES of payloads), each in its own short read, so a slow reader never
holds a transaction (nor a snapshot, nor the WAL) open between pages. The export stops at
the newest `seq` stored when it began: events stored meanwhile come after that (bridges
commit in `seq` order on both stores), so an export under ingest is exactly the matching
events stored before it began, each once, in `seq` order (less any that retention
deleted while it ran).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace

from bridge.query import Query
from bridge.store.base import StoreReader

# Rows per page read, and the size (payload bytes; SQLite: line characters) at which a page
# stops early (at least one row always comes): what one page may hold in memory is about
# this, plus one largest event. Larger pages cost fewer reads; these run at the speed of
# the table (BENCHMARKS.md, "Export").
EXPORT_PAGE = 5000
EXPORT_PAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ExportPage:
    """NDJSON lines (each with its newline) and the `seq` of the last: an export cut short
    resumes with `after` = that seq."""

    lines: list[str]
    last_seq: int

    def ndjson(self) -> bytes:
        return "".join(self.lines).encode()


def export_pages(
    store: StoreReader, query: Query, *, page: int = EXPORT_PAGE
) -> Generator[ExportPage]:
    """The events `query`'s filters match (its `after` and position too; its order and
    limit aside), oldest first, `page` at most at a time, up to the newest seq stored now."""
    through = store.newest_seq()
    paged = replace(query, order="asc", limit=page)
    while True:
        rows = store.export_page(paged, max_bytes=EXPORT_PAGE_BYTES)
        kept = [line for seq, line in rows if seq <= through]
        if kept:
            last = rows[len(kept) - 1][0]
            yield ExportPage(kept, last)
            paged = replace(paged, position=last)
        if not rows or len(kept) < len(rows):
            return
