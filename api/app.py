"""The HTTP routes and the app factory.

Publishing goes through the broker and the bridge, like any MQTT event: the
sidecar only reads the store. Store calls are synchronous, so the read routes
are plain `def` (FastAPI runs them on its thread pool) and the loop stays free
for the MQTT traffic.

The dashboard (`GET /`) is one HTML file in this package, with its CSS and JS
inline: it polls `/stats` and `/rejected` and follows `/events/stream`.

No `from __future__ import annotations` here: FastAPI reads the routes'
annotations at run time, and the query limits are local to `create_app`.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from functools import partial
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from api.access_log import redacted_access_log
from api.auth import guard
from api.batch import InvalidBatch, read_body, to_messages
from api.broker_stats import BrokerStats
from api.budget import RETRY_AFTER_S, BodyBudget, Busy
from api.guards import BrowserGuard, HostRule, page_policies, require_json
from api.metrics import sidecar_registry
from api.models import (
    BUSIEST_TOPICS,
    EventPage,
    Health,
    Problem,
    PublishAccepted,
    PublishFailed,
    PublishInvalid,
    RejectedPage,
    StatsReport,
)
from api.publishing import BrokerUnavailable, Publisher
from api.settings import ApiSettings
from api.stream import EventStream, StreamHub
from bridge.event import MAX_NAME_LENGTH, NAME_PATTERN, Event
from bridge.lograte import RateLimitedLog
from bridge.store import StoreUnavailable, open_reader

logger = logging.getLogger("logagg.api")

OK = "ok"
# Refused publish bodies logged with their reason, at most this many a second.
INVALID_LOG_PER_S = 10
# seq is a 64-bit integer in both stores: a larger cursor is a 422, not a driver overflow.
MAX_SEQ = 2**63 - 1


def _publish_body_schema(max_batch: int) -> dict[str, Any]:
    """The body is read by hand (for its size limits and per-item errors); document it anyway."""
    event = Event.model_json_schema()
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": max_batch}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"anyOf": [event, batch]}}},
        }
    }


def create_app(settings: ApiSettings) -> FastAPI:
    store = open_reader(settings.store, settings.store_options)
    publisher = Publisher(settings)
    bodies = BodyBudget(settings.max_inflight_body_bytes)
    broker_stats = BrokerStats(settings)
    # LOGAGG_API_TOKEN: every route but /healthz takes one of these (tests/test_security.py).
    publishing = guard(settings)
    reading = guard(settings, public=settings.api_public_read)
    invalid_log = RateLimitedLog(
        logger,
        INVALID_LOG_PER_S,
        "publish refused (422) from %s: %s",
        "%d more publish bodies refused (422), not logged one by one",
        logging.WARNING,
    )
    registry = sidecar_registry(store, settings.store, broker_stats)
    hub = StreamHub(store, max_streams=settings.max_streams, max_bytes=settings.read_max_bytes)
    dashboard = files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The store URL is not logged: a database URL may carry a password.
        logger.info("sidecar up: broker %s", settings.address)
        with ExitStack() as stack:
            if settings.api_token is not None:
                stack.enter_context(redacted_access_log({"/healthz"}))
            broker_stats.start()
            try:
                yield
            finally:
                invalid_log.flush()
                await hub.close()
                await broker_stats.stop()
                await publisher.close()
                store.close()

    # /docs and /redoc with their assets served from the package, not a CDN: they work offline.
    app = FastAPIOffline(
        title="logagg",
        summary="Publish log events through the broker; read what the bridge stored.",
        lifespan=lifespan,
        # `/stats/` would redirect to whatever Host the request named: 404 instead.
        redirect_slashes=False,
    )
    app.add_middleware(
        BrowserGuard,
        hosts=HostRule.for_listener(settings.host, settings.api_allowed_hosts),
        allowed_origins=settings.api_allowed_origins,
        policies=page_policies({"/": dashboard}),
    )

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(Problem(detail=f"store unavailable: {exc}").model_dump(), 503)

    @app.exception_handler(Busy)
    async def busy(_request: Request, exc: Busy) -> JSONResponse:
        failed = PublishFailed(detail=str(exc), accepted=0)
        return JSONResponse(failed.model_dump(), 503, {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(BrokerUnavailable)
    async def broker_unavailable(_request: Request, exc: BrokerUnavailable) -> JSONResponse:
        failed = PublishFailed(detail=str(exc), accepted=exc.accepted)
        return JSONResponse(failed.model_dump(), 503)

    Limit = Annotated[int, Query(ge=1, le=settings.read_limit_max)]
    After = Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only rows with a larger `seq`")]
    # A filter that names no possible topic is a 422, before it reaches the store.
    Topic = Annotated[
        str | None, Query(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    ]
    Last = Annotated[
        int | None,
        Query(
            ge=1,
            le=settings.read_limit_max,
            description="The newest `last` rows (after `after`) instead of the oldest `limit`",
        ),
    ]

    @app.post(
        "/publish",
        dependencies=[*publishing.dependencies, Depends(require_json)],
        responses={
            **publishing.responses,
            413: {"model": Problem, "description": "Body or batch too large"},
            415: {"model": Problem, "description": "Content-Type is not application/json"},
            422: {"model": PublishInvalid, "description": "Invalid body or item"},
            503: {
                "model": PublishFailed,
                "description": "Broker unreachable or failed, or too many bodies in progress",
            },
        },
        openapi_extra=_publish_body_schema(settings.max_batch),
    )
    async def publish(request: Request) -> PublishAccepted:
        """Publish one event or an array of them; answers once the broker acknowledged all."""
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else settings.max_body_bytes
        async with bodies.hold(min(size, settings.max_body_bytes), settings.publish_timeout_s):
            body = await read_body(request, settings.max_body_bytes)
            try:
                messages = await run_in_threadpool(
                    to_messages,
                    body,
                    prefix=settings.topic_prefix,
                    max_batch=settings.max_batch,
                    max_payload_bytes=settings.max_payload_bytes,
                    max_nodes=settings.max_event_nodes,
                    max_body_nodes=settings.max_body_nodes,
                )
            except InvalidBatch as exc:
                invalid_log([(request.client.host if request.client else "?", exc.reason)])
                raise
            del body
            try:
                accepted = await publisher.publish(messages)
            except BrokerUnavailable as exc:
                logger.warning(
                    "publish: %d of %d acknowledged: %s", exc.accepted, len(messages), exc
                )
                raise
        return PublishAccepted(accepted=accepted)

    @app.get(
        "/stats",
        dependencies=reading.dependencies,
        responses={**reading.responses, 503: {"model": Problem}},
    )
    def stats(
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

    @app.get(
        "/events",
        dependencies=reading.dependencies,
        responses={**reading.responses, 503: {"model": Problem}},
    )
    def events(
        topic: Topic = None, limit: Limit = 100, after: After = 0, last: Last = None
    ) -> EventPage:
        """Stored (unique) events in arrival order. A page of large events stops early, once
        their payloads reach the sidecar's read budget: follow `next_after` for the rest."""
        page = partial(store.events, topic=topic, after=after, max_bytes=settings.read_max_bytes)
        rows = page(limit=last, newest=True) if last is not None else page(limit=limit)
        return EventPage(events=rows, next_after=rows[-1].seq if rows else None)

    @app.get(
        "/events/stream",
        response_class=EventStream,
        status_code=200,
        dependencies=reading.dependencies,
        responses={
            **reading.responses,
            503: {
                "description": "Too many open streams",
                "content": {"application/json": {"schema": Problem.model_json_schema()}},
            },
        },
    )
    async def stream(
        topic: Topic = None,
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
        `data` the event as in `/events`. A stream ends after a few minutes; clients resume
        from their Last-Event-ID, so nothing is missed. Past `LOGAGG_MAX_STREAMS` open
        streams, 503 with Retry-After."""
        cursor = last_event_id if last_event_id is not None else after
        return EventStream(hub, topic, cursor, last)

    @app.get(
        "/rejected",
        dependencies=reading.dependencies,
        responses={**reading.responses, 503: {"model": Problem}},
    )
    def rejected(limit: Limit = 100, after: After = 0, last: Last = None) -> RejectedPage:
        """Refused MQTT messages, newest kept, with the reason for each."""
        if last is not None:
            rows = store.rejected(after=after, limit=last, newest=True)
        else:
            rows = store.rejected(after=after, limit=limit)
        return RejectedPage(rejected=rows, next_after=rows[-1].seq if rows else None)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """200 when the store is readable and the broker reachable; 503 says which is not.
        `bridge` says whether a bridge is alive and writing, `broker_queue` whether the broker
        dropped messages or nears its queue limit (neither changes the status code)."""
        health = Health(store=OK, broker=OK)
        try:
            stats = await run_in_threadpool(store.stats)
        except StoreUnavailable as exc:
            health.store = str(exc)
        else:
            # The bridge's heartbeat is a write: it stops when the store cannot be written.
            health.bridge = (
                OK
                if stats.uptime_s is not None
                else f"no bridge heartbeat in the last {settings.bridge_alive_s:g}s: no bridge"
                " is running, or it cannot write the store (see its log)"
            )
        try:
            await publisher.check()
        except BrokerUnavailable as exc:
            health.broker = str(exc)
        report = broker_stats.report()
        if report.known:
            health.broker_queue = report.warning() or OK
        healthy = health.store == OK and health.broker == OK
        return JSONResponse(health.model_dump(), 200 if healthy else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        dependencies=reading.dependencies,
        responses=reading.responses,
    )
    def metrics() -> Response:
        """Prometheus metrics: the store's counters, read at scrape time, and the broker's."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/",
        response_class=HTMLResponse,
        include_in_schema=False,
        dependencies=reading.dependencies,
    )
    async def home() -> HTMLResponse:
        """The live dashboard."""
        return HTMLResponse(dashboard)

    return app
