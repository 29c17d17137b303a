"""`logagg tail` and `logagg stats`: the sidecar's views, on a terminal.

Both ask the sidecar over HTTP, never the store: they work from any machine
that reaches it, with or without the store's credentials, and read the same
models that `/docs` documents.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager

import httpx
import typer
from pydantic import BaseModel, TypeAdapter, ValidationError

from api.models import EventPage, StatsReport, busiest_topics
from bridge.backoff import Backoff
from bridge.capacity import size_text
from bridge.store import StoredEvent
from logagg.settings import ViewSettings

logger = logging.getLogger("logagg.views")

EVENT = TypeAdapter(StoredEvent)
# The stream sends a keep-alive comment every 15 s: a longer silence means it is gone.
TIMEOUT = httpx.Timeout(10.0, read=60.0)
TOPICS_SHOWN = 20
# Control characters would break the one-line format (or drive the terminal).
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


class ViewError(Exception):
    """The sidecar could not be reached, or refused the request."""


class QueryRefused(ViewError):
    """The sidecar refused the query (a 422): the message names the parameter."""


# Query parameters, in order, `field` repeated.
Params = list[tuple[str, str]]


class _Refusal(BaseModel):
    loc: list[str | int]
    msg: str


class _Refused(BaseModel):
    """A 422's body, as FastAPI and api/errors.py give it."""

    detail: list[_Refusal]


@contextmanager
def sidecar(settings: ViewSettings) -> Iterator[httpx.Client]:
    """A client for the sidecar, with its token when there is one."""
    headers = {}
    if settings.api_token is not None:
        headers["authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    with httpx.Client(base_url=settings.api_url, headers=headers, timeout=TIMEOUT) as client:
        yield client


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code == 422:
        response.read()
        try:
            refusal = _Refused.model_validate_json(response.content).detail[0]
        except (ValidationError, IndexError):
            pass
        else:
            raise QueryRefused(f"{refusal.loc[-1]}: {refusal.msg}")
    if response.is_error:
        response.read()
        hint = (
            " (set LOGAGG_API_TOKEN to the sidecar's token)" if response.status_code == 401 else ""
        )
        raise ViewError(
            f"{response.url} answered {response.status_code}: {response.text[:500]}{hint}"
        )
    return response


def get(client: httpx.Client, path: str, params: Params) -> httpx.Response:
    """`path` with `params`, checked: a refusal raises ViewError (QueryRefused for a 422)."""
    try:
        return _checked(client.get(path, params=tuple(params)))
    except httpx.TransportError as exc:
        raise ViewError(f"cannot reach the sidecar at {client.base_url}: {exc}") from exc


@contextmanager
def streamed(client: httpx.Client, path: str, params: Params) -> Iterator[httpx.Response]:
    """`path` with `params` as a response still to read, checked as `get` checks."""
    try:
        with client.stream("GET", path, params=tuple(params)) as response:
            yield _checked(response)
    except httpx.TransportError as exc:
        raise ViewError(f"cannot reach the sidecar at {client.base_url}: {exc}") from exc


@contextmanager
def exit_codes() -> Iterator[None]:
    """A command's failures as its exit status, with the reason on stderr: 2 for a refused
    parameter (it names it), 1 when the sidecar or the store fails."""
    from bridge.store import StoreUnavailable

    try:
        yield
    except QueryRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (ViewError, StoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def one_line(event: StoredEvent) -> str:
    """`seq time topic source event_id payload`: one line per event, like a log file."""
    payload = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False)
    fields = (event.timestamp, event.topic, event.source, event.event_id)
    return " ".join([str(event.seq), *(f.translate(_CONTROL) for f in fields), payload])


def latest(client: httpx.Client, filters: Params, count: int) -> list[StoredEvent]:
    """The newest `count` stored events the `filters` match, oldest first."""
    if count == 0:
        return []
    response = get(client, "/events", [*filters, ("last", str(count))])
    return EventPage.model_validate_json(response.content).events


def follow(client: httpx.Client, filters: Params, count: int) -> Generator[StoredEvent, None, None]:
    """The newest `count` events the `filters` match, then each one as it is stored, until
    interrupted.

    Reads `/events/stream`; when the stream ends or the connection drops, it
    resumes after the last seq seen (Last-Event-ID), so nothing is skipped."""
    cursor: int | None = None
    backoff = Backoff()
    while True:
        headers = {} if cursor is None else {"last-event-id": str(cursor)}
        try:
            params = (*filters, ("last", str(count)))
            with client.stream("GET", "/events/stream", params=params, headers=headers) as response:
                _checked(response)
                backoff.reset()
                for event_id, data in server_sent_events(response.iter_lines()):
                    if data is not None:
                        yield EVENT.validate_json(data)
                    if event_id is not None:
                        cursor = int(event_id)
        except httpx.TransportError as exc:
            if cursor is None:
                raise ViewError(f"cannot reach the sidecar at {client.base_url}: {exc}") from exc
            delay = backoff.delay()
            logger.warning("stream lost (%s); resuming after seq %d in %.1fs", exc, cursor, delay)
            time.sleep(delay)


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str | None, str | None]]:
    """`(id, data)` of each Server-Sent Event; comments and `retry` are skipped."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if event_id is not None or data:
                yield event_id, "\n".join(data) if data else None
            event_id, data = None, []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def fetch_stats(client: httpx.Client) -> StatsReport:
    return StatsReport.model_validate_json(get(client, "/stats", []).content)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} of received" if whole else ""


def _broker(report: StatsReport) -> str:
    """What the broker dropped and holds, from its $SYS counters, and its warning if any."""
    if report.broker_dropped is None:
        return "no counters from the broker ($SYS)"
    text = f"dropped {report.broker_dropped:,}, queued {report.broker_queued_messages or 0:,}"
    return f"{text}: {report.broker_warning}" if report.broker_warning else text


def _store(report: StatsReport) -> str | None:
    """Whether the bridges write, when there is something to say: full, or how much of a cap."""
    if report.store_full:
        return f"FULL, not writing: {report.store_full_reason}"
    if report.max_store_bytes is None or report.store_used_bytes is None:
        return None
    used, cap = report.store_used_bytes, report.max_store_bytes
    return f"{size_text(used)} of its cap {size_text(cap)} ({used / cap:.0%})"


def summary(report: StatsReport) -> str:
    """`/stats` for people: the totals, the rejection reasons, the busiest topics."""
    bridge = (
        f"up {_duration(report.uptime_s)}"
        if report.uptime_s is not None
        else "no live bridge on this store"
    )
    reasons = ", ".join(f"{code} {n:,}" for code, n in sorted(report.rejected_by_code.items()))
    rows = [
        ("received", report.received, ""),
        ("stored", report.unique_processed, "unique (topic, event_id)"),
        ("duplicates", report.duplicate_dropped, _share(report.duplicate_dropped, report.received)),
        ("rejected", report.rejected, reasons),
    ]
    lines = [f"{name:<12}{count:>14,}  {note}".rstrip() for name, count, note in rows]
    lines.append(f"{'bridge':<12}{bridge}")
    lines.append(f"{'broker':<12}{_broker(report)}")
    if (store := _store(report)) is not None:
        lines.append(f"{'store':<12}{store}")
    kept = report.retention
    if kept is not None and (kept.retention_s is not None or kept.retention_topics):
        rules = "".join(f", {rule}" for rule in kept.retention_topics)
        lines.append(
            f"{'retention':<12}{kept.retention}{rules}; keys kept {kept.dedup_horizon} more;"
            f" oldest {kept.oldest_received_at or 'none'}"
        )
        lines.append(
            f"{'expired':<12}{kept.events_expired:>14,}  events; keys held {kept.keys_held:,},"
            f" forgotten {kept.keys_forgotten:,}; late {kept.late:,}"
        )
    topics = [(t.translate(_CONTROL), c) for t, c in busiest_topics(report.topics, TOPICS_SHOWN)]
    if topics:
        width = max(len("topic"), *(len(t) for t, _ in topics))
        lines += ["", f"{'topic':<{width}}  {'stored':>12}  {'duplicates':>12}"]
        lines += [
            f"{t:<{width}}  {c.unique_processed:>12,}  {c.duplicate_dropped:>12,}"
            for t, c in topics
        ]
        if report.topics_total > TOPICS_SHOWN:
            lines.append(f"… and {report.topics_total - TOPICS_SHOWN:,} more topics")
    return "\n".join(lines)
