"""The body of `GET /events/export` (issue 12): the export's pages as NDJSON bytes, gzipped
when asked, read on a worker thread one page at a time, with what happens when the client
leaves or the store fails half-way.

- Client gone: the next write fails (or the response task is cancelled); no page is read
  after that, nothing is held (each page is its own short read), one log line says so.
- Store failing after the first page (the headers, 200, are sent): one last line
  `{"error": "…", "resume_after": <seq of the last event sent>}` (compressed and flushed
  like the rest), then the connection is closed without ending the response, so every
  HTTP client sees the transfer as incomplete (curl exits 18, a gzip reader finds no
  trailer) and a reader of lines sees why and where to resume (`after=`). An event line
  always starts with `{"seq":`, so the error line cannot be taken for one.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import AsyncIterator, Generator

import anyio

from bridge.store import StoreUnavailable
from bridge.store.export import ExportPage

logger = logging.getLogger("logagg.api.export")

# gzip's fastest level: at level 6 compression alone runs slower than the store is read;
# level 1 still takes NDJSON logs to about a fifth.
GZIP_LEVEL = 1


class ExportFailed(Exception):
    """The store failed mid-export, after the error line was sent: ends the connection."""


def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header accepts gzip (`gzip`, `x-gzip` or `*`, with a
    q-value above 0)."""
    for item in (accept_encoding or "").split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if name.lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(q) > 0:
                return True
        except ValueError:
            continue
    return False


class Encoder:
    """Bytes as they go out: as they are, or one gzip stream flushed after every page (a
    reader decodes each page as it arrives; nothing waits for the end)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = zlib.compressobj(GZIP_LEVEL, wbits=31) if gzip else None

    def page(self, data: bytes) -> bytes:
        if self._gzip is None:
            return data
        return self._gzip.compress(data) + self._gzip.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return b"" if self._gzip is None else self._gzip.flush(zlib.Z_FINISH)


async def export_body(
    first: ExportPage | None, pages: Generator[ExportPage], encoder: Encoder, what: str
) -> AsyncIterator[bytes]:
    """The response body: `first` (read before the headers went out, so a store down at the
    start is a 503, not a 200 with an error), then the rest of `pages`, each read and
    encoded on a worker thread. `what` names the export in the log."""
    sent, last_seq, outcome = 0, 0, "client gone"

    def following() -> tuple[ExportPage, bytes] | None:
        page = next(pages, None)
        return None if page is None else (page, encoder.page(page.ndjson()))

    try:
        if first is not None:
            yield encoder.page(first.ndjson())
            sent, last_seq = len(first.lines), first.last_seq
            while (item := await anyio.to_thread.run_sync(following)) is not None:
                page, data = item
                yield data
                sent, last_seq = sent + len(page.lines), page.last_seq
        yield encoder.end()
        outcome = "complete"
    except StoreUnavailable as exc:
        outcome = f"store failed: {exc}"
        line = json.dumps({"error": f"store unavailable: {exc}", "resume_after": last_seq})
        yield encoder.page(line.encode() + b"\n")
        raise ExportFailed(f"export {what} stopped after seq {last_seq}: {exc}") from exc
    finally:
        pages.close()
        logger.info("export %s: %d events, up to seq %d, %s", what, sent, last_seq, outcome)
