"""The app factory: settings, shared state, the browser guard, error answers and routers.

Publishing goes through the broker and the bridge, like any MQTT event: the
sidecar only reads the store. The routes live in api/routes/, one router per
concern; what they share is made here, kept on `app.state` (api/state.py) and
closed by the lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import errors
from api.access_log import redacted_access_log
from api.auth import guard
from api.broker_stats import BrokerStats
from api.budget import BodyBudget
from api.guards import BrowserGuard, HostRule, page_policies
from api.metrics import sidecar_registry
from api.publishing import Publisher
from api.routes import export, ops, publish, read, stream
from api.settings import ApiSettings
from api.state import Shared
from api.stream import StreamHub
from bridge.lograte import RateLimitedLog
from bridge.store import open_reader

logger = logging.getLogger("logagg.api")

# Refused publish bodies logged with their reason, at most this many a second.
INVALID_LOG_PER_S = 10


def create_app(settings: ApiSettings) -> FastAPI:
    store = open_reader(settings.store, settings.store_options)
    broker_stats = BrokerStats(settings)
    shared = Shared(
        store=store,
        publisher=Publisher(settings),
        bodies=BodyBudget(settings.max_inflight_body_bytes),
        broker_stats=broker_stats,
        hub=StreamHub(store, max_streams=settings.max_streams, max_bytes=settings.read_max_bytes),
        registry=sidecar_registry(store, settings.store, broker_stats),
        refusals=RateLimitedLog(
            logger,
            INVALID_LOG_PER_S,
            "publish refused (422) from %s: %s",
            "%d more publish bodies refused (422), not logged one by one",
            logging.WARNING,
        ),
    )
    # LOGAGG_API_TOKEN: every route but /healthz takes one of these (tests/test_security.py).
    publishing = guard(settings)
    reading = guard(settings, public=settings.api_public_read)
    dashboard = files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The store URL is not logged: a database URL may carry a password.
        logger.info("sidecar up: broker %s", settings.address)
        with ExitStack() as stack:
            if settings.api_token is not None:
                stack.enter_context(redacted_access_log({"/healthz"}))
            shared.broker_stats.start()
            try:
                yield
            finally:
                shared.refusals.flush()
                await shared.hub.close()
                await shared.broker_stats.stop()
                await shared.publisher.close()
                shared.store.close()

    routers = [
        publish.router(settings, publishing),
        read.router(settings, reading),
        export.router(settings, reading),
        stream.router(settings, reading),
        ops.router(settings, reading, dashboard),
    ]
    # /docs and /redoc with their assets served from the package, not a CDN: they work offline.
    app = FastAPIOffline(
        title="logagg",
        summary="Publish log events through the broker; read what the bridge stored.",
        lifespan=lifespan,
        # The routers' routes themselves, not `include_router`: since FastAPI 0.137 that
        # hides them behind a wrapper, and `app.routes` (which tests/test_security.py walks
        # to find an unguarded route) would list none of them.
        routes=[route for router in routers for route in router.routes],
        exception_handlers=dict.fromkeys(errors.DOMAIN_ERRORS, errors.handle),
        # `/stats/` would redirect to whatever Host the request named: 404 instead.
        redirect_slashes=False,
    )
    app.state.shared = shared
    app.add_middleware(
        BrowserGuard,
        hosts=HostRule.for_listener(settings.host, settings.api_allowed_hosts),
        allowed_origins=settings.api_allowed_origins,
        policies=page_policies({"/": dashboard}),
    )
    return app
