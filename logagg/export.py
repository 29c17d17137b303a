"""`logagg export` and `logagg rejected export`: the stored events a query finds, and the
kept rejected messages, as NDJSON on stdout or in a file (issue 12).

Events come from the sidecar's `GET /events/export` (gzipped on the way), or with
`--store` from the store itself through the same `bridge.store.export` pages, so both
write the same lines. The query flags are `logagg search`'s (logagg/search.py); a refused
one exits with status 2 naming it. An export cut short (the sidecar or the store failed
half-way) exits with status 1 saying how far it got and the `--after` that resumes it; the
output then holds every event up to there, whole lines only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from logagg.settings import ViewSettings

# How an error line of /events/export starts; every event line starts with `{"seq":`.
ERROR_LINE = b'{"error":'
_SEQ = b'{"seq":'
# Rejected rows asked for per page: the sidecar's default `read_limit_max`.
REJECTED_PAGE = 1000


class ExportCut(Exception):
    """The export stopped before its end; what was written is whole events."""


@dataclass(slots=True)
class Written:
    """What has gone to the output so far: events (or rows), and the last one's `seq`."""

    count: int = 0
    last_seq: int = 0

    def add(self, lines: bytes) -> None:
        """Count the whole lines in `lines` (each ends with a newline), noting the last seq."""
        self.count += lines.count(b"\n")
        start = lines.rfind(b"\n", 0, len(lines) - 1) + 1
        if lines.startswith(_SEQ, start):
            self.last_seq = int(lines[start + len(_SEQ) : lines.index(b",", start)])


Tick = Callable[[Written], None]


def run(
    params: list[tuple[str, str]],
    *,
    output: Path | None,
    view: ViewSettings,
    store: str | None,
) -> None:
    """Write every event the query `params` finds, one a line; exit 2 naming a refused
    parameter, 1 when the sidecar or the store fails (saying where to resume)."""
    from bridge.store import StoreUnavailable
    from logagg.views import QueryRefused, ViewError

    written = Written()
    started = time.monotonic()
    try:
        with _output(output) as out, _progress("exported") as tick:
            if store is None:
                _via_sidecar(view, params, out, written, tick)
            else:
                _via_store(store, params, out, written, tick)
    except QueryRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (ViewError, StoreUnavailable, ExportCut) as exc:
        resume = (
            f"; the output holds {written.count:,} events, up to seq {written.last_seq}:"
            f" resume with --after {written.last_seq}"
            if written.count
            else ""
        )
        typer.echo(f"error: {exc}{resume}", err=True)
        raise typer.Exit(1) from None
    _summary(f"exported {written.count:,} events", written, started)


def _via_store(
    url: str, params: list[tuple[str, str]], out: IO[bytes], written: Written, tick: Tick
) -> None:
    from datetime import UTC, datetime

    from bridge.query import QueryError, parse_query
    from bridge.store import StoreOptions, open_reader, parse_store_url
    from bridge.store.export import export_pages
    from logagg.views import QueryRefused

    try:
        target = parse_store_url(url)
    except ValueError as exc:
        raise QueryRefused(f"store: {exc}") from None
    query = parse_query(params, now=datetime.now(UTC))
    if isinstance(query, QueryError):
        raise QueryRefused(str(query))
    with closing(open_reader(target, StoreOptions())) as reader:
        for page in export_pages(reader, query):
            out.write(page.ndjson())
            written.count += len(page.lines)
            written.last_seq = page.last_seq
            tick(written)


def _via_sidecar(
    view: ViewSettings,
    params: list[tuple[str, str]],
    out: IO[bytes],
    written: Written,
    tick: Tick,
) -> None:
    """Copy `/events/export`'s lines as they come (decompressed), whole lines only; an error
    line or a body cut short raises ExportCut."""
    import httpx

    from logagg.views import sidecar, streamed

    with sidecar(view) as client, streamed(client, "/events/export", params) as response:
        rest = b""
        try:
            for chunk in response.iter_bytes():
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                lines, rest = data[:cut], data[cut:]
                if lines:
                    _copy(lines, out, written)
                    tick(written)
        except httpx.HTTPError as exc:
            raise ExportCut(f"the sidecar's answer ended early: {exc}") from None
    if rest:
        raise ExportCut("the sidecar's answer ended inside a line")


def _copy(lines: bytes, out: IO[bytes], written: Written) -> None:
    """Write whole event lines; stop at an error line, raising ExportCut with its reason."""
    if lines.startswith(ERROR_LINE):
        at = 0
    elif (found := lines.find(b"\n" + ERROR_LINE)) >= 0:
        at = found + 1
    else:
        out.write(lines)
        written.add(lines)
        return
    out.write(lines[:at])
    written.add(lines[:at])
    error = json.loads(lines[at : lines.index(b"\n", at)])
    raise ExportCut(f"the sidecar stopped the export: {error.get('error')}")


def run_rejected(*, output: Path | None, view: ViewSettings, store: str | None) -> None:
    """Write the kept rejected messages, oldest first, one JSON object a line."""
    from logagg.views import exit_codes

    written = Written()
    started = time.monotonic()
    with exit_codes(), _output(output) as out, _progress("rejected messages") as tick:
        for rows in _rejected_pages(view, store):
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            out.write(lines.encode())
            written.count += len(rows)
            tick(written)
    _summary(f"exported {written.count:,} rejected messages", written, started)


def _rejected_pages(view: ViewSettings, store: str | None) -> Iterator[list[dict[str, object]]]:
    """Pages of rejected rows (as `/rejected` has them), oldest first, until one is empty."""
    from dataclasses import asdict

    from api.models import RejectedPage
    from bridge.store import StoreOptions, open_reader, parse_store_url
    from logagg.views import QueryRefused, get, sidecar

    after = 0
    if store is None:
        with sidecar(view) as client:
            while True:
                params = [("after", str(after)), ("limit", str(REJECTED_PAGE))]
                page = RejectedPage.model_validate_json(get(client, "/rejected", params).content)
                if not page.rejected:
                    return
                yield [asdict(r) for r in page.rejected]
                after = page.rejected[-1].seq
    try:
        target = parse_store_url(store)
    except ValueError as exc:
        raise QueryRefused(f"store: {exc}") from None
    with closing(open_reader(target, StoreOptions())) as reader:
        while rows := reader.rejected(after=after, limit=REJECTED_PAGE):
            yield [asdict(r) for r in rows]
            after = rows[-1].seq


@contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    """The file at `path` (created or emptied), else stdout; a reader of stdout that goes
    away (`| head`) ends the command quietly."""
    if path is not None:
        with path.open("wb") as out:
            yield out
        return
    try:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # Nothing may be flushed to the closed pipe at exit (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None


@contextmanager
def _progress(what: str) -> Iterator[Tick]:
    """A count of what is written and its rate on stderr, if stderr is a terminal."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda _written: None
        return
    started = time.monotonic()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what)

        def tick(written: Written) -> None:
            rate = written.count / max(time.monotonic() - started, 1e-9)
            progress.update(task, description=f"{written.count:,} {what} ({rate:,.0f}/s)")

        yield tick


def _summary(text: str, written: Written, started: float) -> None:
    """One line on stderr when it is a terminal: what was written, how fast."""
    if sys.stderr.isatty():
        elapsed = time.monotonic() - started
        rate = written.count / elapsed if elapsed > 0 else 0.0
        typer.echo(f"{text} in {elapsed:.1f}s ({rate:,.0f}/s)", err=True)
