"""What the routes share, kept on `app.state`: the objects with a lifetime (the store, the
broker connection, the stream poller…), made once by `create_app` and closed by its lifespan.

A route takes each part it uses through a small typed dependency, so its signature says
what it touches. The dependencies are `async`: FastAPI would run a plain `def` on its
thread pool, a thread hop per part per request for an attribute read.

No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at
run time.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from api.broker_stats import BrokerStats
from api.budget import BodyBudget
from api.publishing import Publisher
from api.stream import StreamHub
from bridge.lograte import RateLimitedLog
from bridge.store import StoreReader

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shared:
    """Everything the routes share, as `app.state.shared`."""

    store: StoreReader
    publisher: Publisher
    bodies: BodyBudget
    broker_stats: BrokerStats
    hub: StreamHub
    registry: CollectorRegistry
    # Refused publish bodies, logged with their reason at a bounded rate.
    refusals: RateLimitedLog


def _shared(request: Request) -> Shared:
    found: Shared = request.app.state.shared
    return found


def _part(read: Callable[[Shared], T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency that gives one part of what the routes share."""

    async def dependency(request: Request) -> T:
        return read(_shared(request))

    return dependency


# Assigned apart, so that mypy checks each lambda (it skips `Annotated`'s metadata).
_store = _part(lambda s: s.store)
_publisher = _part(lambda s: s.publisher)
_bodies = _part(lambda s: s.bodies)
_broker_stats = _part(lambda s: s.broker_stats)
_hub = _part(lambda s: s.hub)
_registry = _part(lambda s: s.registry)
_refusals = _part(lambda s: s.refusals)

StoreDep = Annotated[StoreReader, Depends(_store)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
BodiesDep = Annotated[BodyBudget, Depends(_bodies)]
BrokerStatsDep = Annotated[BrokerStats, Depends(_broker_stats)]
HubDep = Annotated[StreamHub, Depends(_hub)]
RegistryDep = Annotated[CollectorRegistry, Depends(_registry)]
RefusalsDep = Annotated[RateLimitedLog, Depends(_refusals)]
