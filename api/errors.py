"""The sidecar's domain errors as HTTP answers: the one place that knows their status codes.

The code that refuses or fails raises what went wrong (`InvalidBatch`, `TooLarge`, `Busy`,
`BrokerUnavailable`, `InvalidQuery`, `StoreUnavailable`), and `answer` turns each into its
status, body and headers, as documented in the routes' `responses=`.
"""

from __future__ import annotations

from typing import assert_never

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from api.batch import InvalidBatch, TooLarge
from api.budget import Busy
from api.models import Problem, PublishFailed, PublishInvalid
from api.publishing import BrokerUnavailable
from api.search import InvalidQuery
from bridge.store import QueryTimeout, StoreUnavailable

# A client refused because too many bodies are in progress may try again this soon.
BUSY_RETRY_AFTER_S = 1

DomainError = InvalidBatch | TooLarge | Busy | BrokerUnavailable | InvalidQuery | StoreUnavailable
DOMAIN_ERRORS = (InvalidBatch, TooLarge, Busy, BrokerUnavailable, InvalidQuery, StoreUnavailable)


def answer(exc: DomainError) -> JSONResponse:
    """The HTTP answer to `exc`."""
    match exc:
        case InvalidBatch(errors=errors):
            return JSONResponse(PublishInvalid(detail=list(errors)).model_dump(), 422)
        case TooLarge():
            return JSONResponse(Problem(detail=str(exc)).model_dump(), 413)
        case Busy():
            failed = PublishFailed(detail=str(exc), accepted=0)
            return JSONResponse(failed.model_dump(), 503, {"Retry-After": str(BUSY_RETRY_AFTER_S)})
        case BrokerUnavailable(accepted=accepted):
            return JSONResponse(PublishFailed(detail=str(exc), accepted=accepted).model_dump(), 503)
        case InvalidQuery(error=error):
            # The shape of FastAPI's own 422s for query parameters (`limit=0`).
            refused = {"type": "query", "loc": ["query", error.parameter], "msg": error.reason}
            return JSONResponse({"detail": [refused]}, 422)
        case QueryTimeout():
            return JSONResponse(Problem(detail=str(exc)).model_dump(), 503)
        case StoreUnavailable():
            return JSONResponse(Problem(detail=f"store unavailable: {exc}").model_dump(), 503)
        case _:
            assert_never(exc)


async def handle(_request: Request, exc: Exception) -> Response:
    """The app's exception handler for each of `DOMAIN_ERRORS`."""
    if not isinstance(exc, DOMAIN_ERRORS):
        raise exc  # registered for those alone
    return answer(exc)
