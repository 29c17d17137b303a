"""What the routes share, kept on `app.state`: the objects with a lifetime (the store, the
broker connection, the stream poller…), made once by `create_app` and closed by its lifespan.

A route takes each part it uses through a small typed dependency, so its signature says
what it touches. The dependencies are `async`: FastAPI would run a plain `def` on its
thread pool, a thread hop per part per request for an attribute read.

No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at
run time.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from api.broker_stats import BrokerStats
from api.budget import BodyBudget
from api.publishing import Publisher
from api.stream import StreamHub
from bridge.lograte import RateLimitedLog
from bridge.store import Store


@dataclass(frozen=True, slots=True)
class Shared:
    """Everything the routes share, as `app.state.shared`."""

    store: Store
    publisher: Publisher
    bodies: BodyBudget
    broker_stats: BrokerStats
    hub: StreamHub
    registry: CollectorRegistry
    # Refused publish bodies, logged with their reason at a bounded rate.
    refusals: RateLimitedLog


def shared(request: Request) -> Shared:
    found: Shared = request.app.state.shared
    return found


async def _store(request: Request) -> Store:
    return shared(request).store


async def _publisher(request: Request) -> Publisher:
    return shared(request).publisher


async def _bodies(request: Request) -> BodyBudget:
    return shared(request).bodies


async def _broker_stats(request: Request) -> BrokerStats:
    return shared(request).broker_stats


async def _hub(request: Request) -> StreamHub:
    return shared(request).hub


async def _registry(request: Request) -> CollectorRegistry:
    return shared(request).registry


async def _refusals(request: Request) -> RateLimitedLog:
    return shared(request).refusals


StoreDep = Annotated[Store, Depends(_store)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
BodiesDep = Annotated[BodyBudget, Depends(_bodies)]
BrokerStatsDep = Annotated[BrokerStats, Depends(_broker_stats)]
HubDep = Annotated[StreamHub, Depends(_hub)]
RegistryDep = Annotated[CollectorRegistry, Depends(_registry)]
RefusalsDep = Annotated[RateLimitedLog, Depends(_refusals)]
