"""`logagg search`: the stored events a query finds, one a line as `logagg tail` prints them
(or NDJSON), read page by page from the sidecar (`GET /events`, following `next`) or,
with `--store`, from the store itself; and the query flags `logagg tail` shares.

The query flags, declared once here and given to both commands by `with_query_flags`, are
the query parameters of `GET /events` (README, "Searching"), parsed by the same
`bridge.query.parse_query`, so a refused one exits with status 2 naming it. Heavy imports
wait for the command to run: `logagg --help` stays quick.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import httpx

    from bridge.store import StoredEvent, StoreReader
    from logagg.settings import ViewSettings

# The query flags `search` and `tail` share, each the `GET /events` parameter of its name
# (`--field` repeatable, as `field` is).
QUERY_FLAGS: dict[str, Any] = {
    "topic": Annotated[
        str | None,
        typer.Option(help="A topic, or an MQTT filter: auth/+/prod, auth/# (+ and #)"),
    ],
    "since": Annotated[
        str | None,
        typer.Option(
            help="Only events stamped at or after this: ISO-8601 with an offset"
            " (2026-12-01T14:02:00Z), or a span before now (90s, 15m, 2h, 7d)"
        ),
    ],
    "until": Annotated[
        str | None, typer.Option(help="Only events stamped before this (as --since)")
    ],
    "source": Annotated[str | None, typer.Option(help="Only events from this source")],
    "q": Annotated[
        str | None,
        typer.Option(
            "--q",
            "-q",
            help='Full text: words (all must be found), "a phrase", -word (not), word*'
            " (prefix); case and diacritics ignored",
        ),
    ],
    "field": Annotated[
        list[str] | None,
        typer.Option(
            help="path:value, repeatable (all must hold): level:error, http.status:503 (a"
            ' number compared as a number), code:"503" (a string)'
        ),
    ],
}

Params = list[tuple[str, str]]
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


def with_query_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the query flags in place of its second parameter, which receives
    them as `GET /events` parameters (those given, in QUERY_FLAGS' order). Goes under
    `with_settings`, which fills the first."""
    config, _params, *own = inspect.signature(command, eval_str=True).parameters.values()

    @functools.wraps(command)
    def run(settings: Any, **values: Any) -> None:
        given = [(name, values.pop(name)) for name in QUERY_FLAGS]
        params = [(name, v) for name, value in given for v in _values(value)]
        command(settings, params, **values)

    flags = [
        inspect.Parameter(name, KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in QUERY_FLAGS.items()
    ]
    params = [config, *flags, *(p.replace(kind=KEYWORD_ONLY) for p in own)]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _values(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


# Events asked for per request: the sidecar's default `read_limit_max`.
PAGE = 1000

# A page of events and the cursor for the next one, given the query's parameters.
PageReader = Callable[[Params], tuple[list["StoredEvent"], str | None]]


def found(
    read: PageReader, params: list[tuple[str, str]], limit: int | None
) -> Iterator[StoredEvent]:
    """Up to `limit` (None: all) events of the query, following each page's `next` until
    a page is empty (a short page is not the end: the sidecar cuts large ones)."""
    cursor: list[tuple[str, str]] = []
    remaining = limit
    while remaining is None or remaining > 0:
        size = PAGE if remaining is None else min(remaining, PAGE)
        events, following = read([*params, ("limit", str(size)), *cursor])
        yield from events
        if not events or following is None:
            return
        if remaining is not None:
            remaining -= len(events)
        cursor = [("next", following)]


def from_sidecar(client: httpx.Client) -> PageReader:
    from api.models import EventPage
    from logagg.views import get

    def read(params: list[tuple[str, str]]) -> tuple[list[StoredEvent], str | None]:
        page = EventPage.model_validate_json(get(client, "/events", params).content)
        return page.events, page.next

    return read


def from_store(store: StoreReader) -> PageReader:
    """Pages read from `store` as the sidecar reads them (api/search.py)."""
    from datetime import UTC, datetime

    from api.search import page
    from bridge.query import QueryError, parse_query
    from logagg.views import QueryRefused

    now = datetime.now(UTC)  # every page's: a cursor carries the first page's clock

    def read(params: list[tuple[str, str]]) -> tuple[list[StoredEvent], str | None]:
        query = parse_query(params, now=now)
        if isinstance(query, QueryError):
            raise QueryRefused(str(query))
        answer = page(store, query, max_bytes=None)
        return answer.events, answer.next

    return read


def run(
    params: list[tuple[str, str]],
    *,
    limit: int | None,
    json_output: bool,
    view: ViewSettings,
    store: str | None,
) -> None:
    """Print up to `limit` (None: all) events the query `params` finds, one a line (or
    NDJSON); exit 2 naming a refused parameter, 1 when the sidecar or store fails."""
    from logagg.views import EVENT, exit_codes, one_line

    show = (lambda e: EVENT.dump_json(e).decode()) if json_output else one_line
    with exit_codes(), pages(view, store) as read:
        for event in found(read, params, limit):
            typer.echo(show(event))


@contextmanager
def pages(view: ViewSettings, store: str | None) -> Iterator[PageReader]:
    """Pages from the store at `store` when given, else from the sidecar `view` names."""
    from bridge.store import StoreOptions, open_reader, parse_store_url
    from logagg.views import QueryRefused, sidecar

    if store is None:
        with sidecar(view) as client:
            yield from_sidecar(client)
        return
    try:
        url = parse_store_url(store)
    except ValueError as exc:
        raise QueryRefused(f"store: {exc}") from None
    with closing(open_reader(url, StoreOptions())) as reader:
        yield from_store(reader)
