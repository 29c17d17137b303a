"""`GET /events/stream`: stored events as they arrive, as Server-Sent Events, served from
one store poller (api/stream.py).

No `from __future__ import annotations`: FastAPI reads the route's annotations at run
time, and the query limits are local to `router`.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from api.auth import Guard
from api.models import Problem
from api.routes.params import MAX_SEQ
from api.routes.query import FILTERS, documented, parsed
from api.settings import ApiSettings
from api.state import HubDep
from api.stream import EventStream


def router(settings: ApiSettings, guard: Guard) -> APIRouter:
    """`GET /events/stream`, behind `guard`."""
    routes = APIRouter(dependencies=guard.dependencies, responses=guard.responses)

    @routes.get(
        "/events/stream",
        response_class=EventStream,
        status_code=200,
        openapi_extra=documented(FILTERS, settings.read_limit_max),
        responses={
            503: {
                "description": "Too many open streams",
                "content": {"application/json": {"schema": Problem.model_json_schema()}},
            },
        },
    )
    async def stream(
        request: Request,
        hub: HubDep,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="Start after this seq")
        ] = None,
        last: Annotated[
            int,
            Query(
                ge=0,
                le=settings.read_limit_max,
                description="With neither `after` nor Last-Event-ID: start with the newest"
                " `last` events (0: only those still to come)",
            ),
        ] = 0,
        last_event_id: Annotated[
            int | None,
            Header(ge=0, le=MAX_SEQ, description="Resume after this seq (sent by EventSource)"),
        ] = None,
    ) -> Response:
        """Stored events as they arrive, as Server-Sent Events: `id` is the event's seq,
        `data` the event as in `/events`; only those matching every filter given (a live
        tail of a search). A stream ends after a few minutes; clients resume from their
        Last-Event-ID, so nothing is missed. Past `LOGAGG_MAX_STREAMS` open streams, 503
        with Retry-After."""
        query = parsed(request, FILTERS, own=("after", "last"), max_limit=settings.read_limit_max)
        cursor = last_event_id if last_event_id is not None else after
        return EventStream(hub, query, cursor, last)

    return routes
