"""`GET /healthz`, `/metrics` and the dashboard (`GET /`): running the sidecar.

`/healthz` is always open, so health checks work without the token; the others are
behind the reading guard. The dashboard is one HTML file (api/static/dashboard.html),
its CSS and JS inline: it polls `/stats`, `/stats/rate` and `/rejected` and follows
`/events/stream`. `/docs` and `/redoc` are the app's own (`FastAPIOffline`), their
assets served from the package.

No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time.
"""

import contextlib

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import Guard
from api.models import Health
from api.publishing import BrokerUnavailable
from api.settings import ApiSettings
from api.state import BrokerStatsDep, PublisherDep, RegistryDep, StoreDep
from api.store_space import StoreSpace
from bridge.store import StoreUnavailable

OK = "ok"


def router(settings: ApiSettings, guard: Guard, dashboard: str) -> APIRouter:
    """The operations routes; `dashboard` is the page's HTML."""
    routes = APIRouter()

    @routes.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz(
        store: StoreDep, publisher: PublisherDep, broker_stats: BrokerStatsDep
    ) -> JSONResponse:
        """200 when the store is readable and has room, and the broker reachable; 503 says
        which is not (`store_space`: a bridge stopped writing, the cap reached or the disk full).
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
            with contextlib.suppress(StoreUnavailable):
                reports = await run_in_threadpool(store.space_reports)
                health.store_space = StoreSpace.of(reports, settings.store).full or OK
        try:
            await publisher.check()
        except BrokerUnavailable as exc:
            health.broker = str(exc)
        report = broker_stats.report()
        if report.known:
            health.broker_queue = report.warning() or OK
        healthy = health.store == OK and health.store_space == OK and health.broker == OK
        return JSONResponse(health.model_dump(), 200 if healthy else 503)

    @routes.get(
        "/metrics",
        response_class=Response,
        dependencies=guard.dependencies,
        responses=guard.responses,
    )
    def metrics(registry: RegistryDep) -> Response:
        """Prometheus metrics: the store's counters, read at scrape time, and the broker's."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @routes.get(
        "/",
        response_class=HTMLResponse,
        include_in_schema=False,
        dependencies=guard.dependencies,
    )
    async def home() -> HTMLResponse:
        """The live dashboard."""
        return HTMLResponse(dashboard)

    return routes
