"""`GET /stats`, `/stats/rate`, `/events`, `/rejected`: what the bridge stored, read page by page.

Store calls are synchronous, so these routes are plain `def` (FastAPI runs them on its
thread pool) and the loop stays free for the MQTT traffic.

No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
time, and the query limits are local to `router`.
"""

from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from api.auth import Guard
from api.models import (
    BUSIEST_TOPICS,
    RATE_WINDOW_MAX_S,
    EventPage,
    Problem,
    RejectedPage,
    StatsReport,
)
from api.routes.params import MAX_SEQ, Topic
from api.settings import ApiSettings
from api.state import BrokerStatsDep, StoreDep
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
        broker's own counters: what it dropped, how full its queue is."""
        report = StatsReport.of(store.stats(), None if topics == "all" else topics)
        return report.model_copy(update=broker_stats.report().stats_fields())

    @routes.get("/stats/rate")
    def rate(
        store: StoreDep,
        seconds: Annotated[int, Query(ge=1, le=RATE_WINDOW_MAX_S)] = 300,
        after: After = 0,
    ) -> StoredRate:
        """Unique events stored per second in the last `seconds`, on the store's clock (the
        dashboard's chart). Poll with `after` = `next_after` to count only what is new."""
        return store.stored_per_second(seconds=seconds, after=after)

    @routes.get("/events")
    def events(
        store: StoreDep,
        topic: Topic = None,
        limit: Limit = 100,
        after: After = 0,
        last: Last = None,
    ) -> EventPage:
        """Stored (unique) events in arrival order. A page of large events stops early, once
        their payloads reach the sidecar's read budget: follow `next_after` for the rest."""
        page = partial(store.events, topic=topic, after=after, max_bytes=settings.read_max_bytes)
        rows = page(limit=last, newest=True) if last is not None else page(limit=limit)
        return EventPage(events=rows, next_after=rows[-1].seq if rows else None)

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
