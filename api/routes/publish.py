"""`POST /publish`: events through the broker, answered once it acknowledged them all.

The body is read by hand, within the body budget and its size limits; what is wrong
with it is raised as a domain error (api/batch.py) that api/errors.py answers.

No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
"""

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from api.auth import Guard
from api.batch import InvalidBatch, read_body, to_messages
from api.guards import require_json
from api.models import Problem, PublishAccepted, PublishFailed, PublishInvalid
from api.publishing import BrokerUnavailable
from api.settings import ApiSettings
from api.state import BodiesDep, PublisherDep, RefusalsDep
from bridge.event import Event

logger = logging.getLogger("logagg.api")


def _body_schema(max_batch: int) -> dict[str, Any]:
    """The body is read by hand (for its size limits and per-item errors); document it anyway."""
    event = Event.model_json_schema()
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": max_batch}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"anyOf": [event, batch]}}},
        }
    }


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def router(settings: ApiSettings, guard: Guard) -> APIRouter:
    """`POST /publish`, behind `guard`."""
    routes = APIRouter(dependencies=guard.dependencies, responses=guard.responses)

    @routes.post(
        "/publish",
        dependencies=[Depends(require_json)],
        responses={
            413: {"model": Problem, "description": "Body or batch too large"},
            415: {"model": Problem, "description": "Content-Type is not application/json"},
            422: {"model": PublishInvalid, "description": "Invalid body or item"},
            503: {
                "model": PublishFailed,
                "description": "Broker unreachable or failed, or too many bodies in progress",
            },
        },
        openapi_extra=_body_schema(settings.max_batch),
    )
    async def publish(
        request: Request, bodies: BodiesDep, publisher: PublisherDep, refusals: RefusalsDep
    ) -> PublishAccepted:
        """Publish one event or an array of them; answers once the broker acknowledged all."""
        declared = _declared_length(request)
        # A body of undeclared length may be as large as allowed: it holds that much.
        size = settings.max_body_bytes if declared is None else declared
        async with bodies.hold(min(size, settings.max_body_bytes), settings.publish_timeout_s):
            body = await read_body(request.stream(), declared, settings.max_body_bytes)
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
                refusals([(request.client.host if request.client else "?", exc.reason)])
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

    return routes
