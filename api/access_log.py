"""Query strings out of the access log where they may carry a secret.

uvicorn logs each request's path with its query string. A client that puts the
token in the URL (`?token=…`, as some tools and EventSource workarounds do)
would leave it in every log line; so on the routes that take the token, the
log keeps each parameter's name and drops its value.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from contextlib import contextmanager

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "***"
_NAME_SHOWN = 40


def redact_query(query: str) -> str:
    """`a=1&token=x` → `a=***&token=***`: which parameters, never their values."""
    return "&".join(
        f"{part.partition('=')[0][:_NAME_SHOWN]}={REDACTED}" for part in query.split("&") if part
    )


class RedactQueries(logging.Filter):
    """Rewrites uvicorn's access-log records (`client - "METHOD path HTTP/v" status`)."""

    def __init__(self, public_paths: Container[str]) -> None:
        super().__init__()
        self._public = public_paths

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if query and path not in self._public:
                record.args = (*args[:2], f"{path}?{redact_query(query)}", *args[3:])
        return True


@contextmanager
def redacted_access_log(public_paths: Container[str]) -> Iterator[None]:
    """While the sidecar runs: the access log shows no query value outside `public_paths`."""
    access = logging.getLogger(ACCESS_LOGGER)
    redact = RedactQueries(public_paths)
    access.addFilter(redact)
    try:
        yield
    finally:
        access.removeFilter(redact)
