"""`GET /events/export`: every event the filters of `/events` match, as NDJSON in `seq`
order, streamed with memory bounded by a page (api/export.py, bridge/store/export.py).

No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
"""

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.auth import Guard
from api.export import Encoder, export_body, wants_gzip
from api.models import Problem
from api.routes.query import FILTERS, documented, parsed
from api.settings import ApiSettings
from api.state import StoreDep
from bridge.store.export import export_pages

# The filters of /events, and `after` to resume an export cut short; no order, no limit.
EXPORT_PARAMETERS = (*FILTERS, "after")
NDJSON = "application/x-ndjson"


def router(settings: ApiSettings, guard: Guard) -> APIRouter:
    """`GET /events/export`, behind `guard` (the reading one, as /events)."""
    routes = APIRouter(
        dependencies=guard.dependencies, responses={**guard.responses, 503: {"model": Problem}}
    )

    @routes.get(
        "/events/export",
        response_class=StreamingResponse,
        openapi_extra=documented(EXPORT_PARAMETERS, settings.read_limit_max),
        responses={
            200: {"content": {NDJSON: {}}, "description": "One event a line"},
            422: {"description": "A refused parameter, named (as /events answers it)"},
        },
    )
    def export(request: Request, store: StoreDep) -> StreamingResponse:
        """Every stored event matching the filters (those of `/events`; `after` resumes),
        oldest first by `seq`, one JSON object a line with the keys of `/events`, up to the
        newest event stored when the export began: no limit, no paging. Gzipped when the
        request accepts gzip. If the store fails half-way, the last line is
        `{"error": …, "resume_after": seq}` and the response ends unfinished."""
        query = parsed(request, EXPORT_PARAMETERS, own=(), max_limit=settings.read_limit_max)
        pages = export_pages(store, query)
        first = next(pages, None)  # a store down now is a 503, before any header goes out
        gzip = wants_gzip(request.headers.get("accept-encoding"))
        headers = {"Vary": "Accept-Encoding", "Cache-Control": "no-store"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        return StreamingResponse(
            export_body(first, pages, Encoder(gzip), str(request.url.query) or "of every event"),
            media_type=NDJSON,
            headers=headers,
        )

    return routes
