"""The sidecar's optional bearer token (`LOGAGG_API_TOKEN`), as per-route dependencies.

No token configured: every route is open, as before (the sidecar listens on
127.0.0.1 unless told otherwise). With a token, publishing needs it, reading
needs it unless `LOGAGG_API_PUBLIC_READ` is true, and `/healthz` never does, so
health checks keep working. Dependencies per route, not one for the whole app,
so the OpenAPI schema says exactly which routes want the token (and
tests/test_security.py checks that every route but `/healthz` asks for it).

No `from __future__ import annotations`: FastAPI reads `require_token`'s
annotations at run time.
"""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.models import Problem
from api.settings import ApiSettings

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="`Authorization: Bearer <LOGAGG_API_TOKEN>`",
)


@dataclass(frozen=True, slots=True)
class Guard:
    """What a route passes to its decorator: `dependencies=`, and the 401 for `responses=`."""

    dependencies: list[Any]
    responses: dict[int | str, dict[str, Any]]


def _digest(token: str) -> bytes:
    # Comparing digests of equal length also hides the token's length, and takes any text:
    # compare_digest refuses str with non-ASCII characters, which a header can carry.
    return hashlib.sha256(token.encode()).digest()


def guard(settings: ApiSettings, *, public: bool = False) -> Guard:
    """The token check for one kind of route; nothing when there is no token or `public`."""
    if settings.api_token is None or public:
        return Guard(dependencies=[], responses={})
    expected = _digest(settings.api_token.get_secret_value())

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        given = _digest(credentials.credentials if credentials else "")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send Authorization: Bearer <LOGAGG_API_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Guard(
        dependencies=[Depends(require_token)],
        responses={401: {"model": Problem, "description": "Missing or wrong bearer token"}},
    )
