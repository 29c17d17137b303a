"""The HTTP routes and the app factory.

Publishing goes through the broker and the bridge, like any MQTT event: the
sidecar only reads the store. Store calls are synchronous, so the read routes
are plain `def` (FastAPI runs them on its thread pool) and the loop stays free
for the MQTT traffic.

No `from __future__ import annotations` here: FastAPI reads the routes'
annotations at run time, and the query limits are local to `create_app`.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.batch import read_body, to_messages
from api.models import (
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
from bridge.event import Event
from bridge.store import StoreUnavailable, open_store

logger = logging.getLogger("logagg.api")

OK = "ok"


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
    store = open_store(settings.store, readonly=True)
    publisher = Publisher(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The store URL is not logged: a database URL may carry a password.
        logger.info("sidecar up: broker %s", settings.address)
        try:
            yield
        finally:
            await publisher.close()
            store.close()

    app = FastAPI(
        title="logagg",
        summary="Publish log events through the broker; read what the bridge stored.",
        lifespan=lifespan,
    )

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(Problem(detail=f"store unavailable: {exc}").model_dump(), 503)

    @app.exception_handler(BrokerUnavailable)
    async def broker_unavailable(_request: Request, exc: BrokerUnavailable) -> JSONResponse:
        failed = PublishFailed(detail=str(exc), accepted=exc.accepted)
        return JSONResponse(failed.model_dump(), 503)

    Limit = Annotated[int, Query(ge=1, le=settings.read_limit_max)]
    After = Annotated[int, Query(ge=0, description="Only rows with a larger `seq`")]

    @app.post(
        "/publish",
        responses={
            413: {"model": Problem, "description": "Body or batch too large"},
            422: {"model": PublishInvalid, "description": "Invalid body or item"},
            503: {"model": PublishFailed, "description": "Broker unreachable or failed"},
        },
        openapi_extra=_publish_body_schema(settings.max_batch),
    )
    async def publish(request: Request) -> PublishAccepted:
        """Publish one event or an array of them; answers once the broker acknowledged all."""
        body = await read_body(request, settings.max_body_bytes)
        messages = await run_in_threadpool(
            to_messages,
            body,
            prefix=settings.topic_prefix,
            max_batch=settings.max_batch,
            max_payload_bytes=settings.max_payload_bytes,
        )
        try:
            accepted = await publisher.publish(messages)
        except BrokerUnavailable as exc:
            logger.warning("publish: %d of %d acknowledged: %s", exc.accepted, len(messages), exc)
            raise
        return PublishAccepted(accepted=accepted)

    @app.get("/stats", responses={503: {"model": Problem}})
    def stats() -> StatsReport:
        """Counters from the store: received = unique_processed + duplicate_dropped + rejected."""
        return StatsReport.model_validate(store.stats(), from_attributes=True)

    @app.get("/events", responses={503: {"model": Problem}})
    def events(topic: str | None = None, limit: Limit = 100, after: After = 0) -> EventPage:
        """Stored (unique) events in arrival order."""
        rows = store.events(topic=topic, after=after, limit=limit)
        return EventPage(events=rows, next_after=rows[-1].seq if rows else None)

    @app.get("/rejected", responses={503: {"model": Problem}})
    def rejected(limit: Limit = 100, after: After = 0) -> RejectedPage:
        """Refused MQTT messages, newest kept, with the reason for each."""
        rows = store.rejected(after=after, limit=limit)
        return RejectedPage(rejected=rows, next_after=rows[-1].seq if rows else None)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """200 when the store is readable and the broker reachable; 503 says which is not."""
        health = Health(store=OK, broker=OK)
        try:
            await run_in_threadpool(store.ping)
        except StoreUnavailable as exc:
            health.store = str(exc)
        try:
            await publisher.check()
        except BrokerUnavailable as exc:
            health.broker = str(exc)
        healthy = health.store == OK and health.broker == OK
        return JSONResponse(health.model_dump(), 200 if healthy else 503)

    return app
