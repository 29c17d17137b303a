"""`GET /stats`, `/stats/rate`, `/events`, `/events/histogram`, `/rejected`: what the bridge
stored, read page by page, searched (api/routes/query.py), counted over time.

Store calls are synchronous, so these routes are plain `def` (FastAPI runs them on its
thread pool) and the loop stays free for the MQTT traffic.

No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
time, and the query limits are local to `router`.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from api import search
from api.auth import Guard
from api.models import (
    BUSIEST_TOPICS,
    RATE_WINDOW_MAX_S,
    EventPage,
    HistogramPage,
    Problem,
    RejectedPage,
    StatsReport,
)
from api.routes.params import MAX_SEQ
from api.routes.query import FILTERS, PAGING, documented, parsed
from api.search import INTERVAL_PATTERN, InvalidQuery
from api.settings import ApiSettings
from api.state import BrokerStatsDep, StoreDep
from api.store_space import StoreSpace
from bridge.query import QueryError
from bridge.store import StoredRate


def router(settings: ApiSettings, guard: Guard) -> APIRouter:
    """The read routes, behind `guard`; a page holds at most `settings.read_limit_max` rows."""
    routes = APIRouter(
        dependencies=guard.dependencies, responses={**guard.responses, 503: {"model": Problem}}
    )
    Limit = Annotated[int, Query(ge=1, le=settings.read_limit_max)]
    After = Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only rows with a larger `seq`")]
    Last = Annotated[
        int | None,
        Query(
            ge=1,
            le=settings.read_limit_max,
            description="The newest `last` rows (after `after`) instead of the oldest `limit`",
        ),
    ]

    @routes.get("/stats")
    def stats(
        store: StoreDep,
        broker_stats: BrokerStatsDep,
        topics: Annotated[
            Annotated[int, Field(ge=0)] | Literal["all"],
            Query(description="How many of the busiest topics to list, or `all`"),
        ] = BUSIEST_TOPICS,
    ) -> StatsReport:
        """Counters from the store: received = unique_processed + duplicate_dropped + rejected.
        `topics` lists the busiest first; `topics_total` counts them all. `broker_*` from the
        broker's own counters: what it dropped, how full its queue is. `store_full` while a
        bridge stopped writing for want of room (`store_*`, `max_store_bytes`: the figures)."""
        report = StatsReport.of(store.stats(), None if topics == "all" else topics)
        space = StoreSpace.of(store.space_reports(), settings.store)
        return report.model_copy(
            update={**broker_stats.report().stats_fields(), **space.stats_fields()}
        )

    @routes.get("/stats/rate")
    def rate(
        store: StoreDep,
        seconds: Annotated[int, Query(ge=1, le=RATE_WINDOW_MAX_S)] = 300,
        after: After = 0,
    ) -> StoredRate:
        """Unique events stored per second in the last `seconds`, on the store's clock (the
        dashboard's chart). Poll with `after` = `next_after` to count only what is new."""
        return store.stored_per_second(seconds=seconds, after=after)

    searching = FILTERS + PAGING
    max_limit = settings.read_limit_max

    @routes.get("/events", openapi_extra=documented(searching, max_limit))
    def events(request: Request, store: StoreDep, last: Last = None) -> EventPage:
        """Stored (unique) events matching every filter given, in arrival order (`seq`), oldest
        first unless `order=desc`. A page of large events stops early, once their payloads
        reach the sidecar's read budget: follow `next` (or `next_after`) for the rest."""
        query = parsed(request, searching, own=("last",), max_limit=max_limit)
        if last is not None and query.position is not None:
            raise InvalidQuery(QueryError("last", "asks for the newest events: drop `next`"))
        found = search.page(store, query, max_bytes=settings.read_max_bytes, last=last)
        rows = found.events
        return EventPage(events=rows, next_after=rows[-1].seq if rows else None, next=found.next)

    @routes.get("/events/histogram", openapi_extra=documented(FILTERS, max_limit))
    def histogram(
        request: Request,
        store: StoreDep,
        interval: Annotated[
            str | None,
            Query(
                pattern=INTERVAL_PATTERN,
                description="Each bucket's width, 1s to 1d (`30s`, `5m`, `1h`, `1d`); left"
                f" out, a round one giving about {search.TARGET_BUCKETS} buckets over the range",
            ),
        ] = None,
    ) -> HistogramPage:
        """How many events match the filters, per bucket of time, by `timestamp`: every bucket
        over [since, until) (a bound left out: the matches' first or last timestamp; with
        `since` alone, up to now), empty ones included, at most 10,000."""
        query = parsed(request, FILTERS, own=("interval",), max_limit=max_limit)
        interval_s = None if interval is None else search.parse_interval(interval)
        if isinstance(interval_s, str):
            raise InvalidQuery(QueryError("interval", interval_s))
        counted = search.histogram(store, query, interval_s)
        if isinstance(counted, QueryError):
            raise InvalidQuery(counted)
        return HistogramPage(
            interval=counted.interval, buckets=counted.buckets, total=counted.total
        )

    @routes.get("/rejected")
    def rejected(
        store: StoreDep, limit: Limit = 100, after: After = 0, last: Last = None
    ) -> RejectedPage:
        """Refused MQTT messages, newest kept, with the reason for each."""
        if last is not None:
            rows = store.rejected(after=after, limit=last, newest=True)
        else:
            rows = store.rejected(after=after, limit=limit)
        return RejectedPage(rejected=rows, next_after=rows[-1].seq if rows else None)

    return routes
