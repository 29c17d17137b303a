"""The search parameters of `/events`, `/events/histogram` and `/events/stream`: read from
the request's query string as they came (`field` repeated, in order) and parsed once by
`bridge.query.parse_query`, whose errors name the parameter; documented in the OpenAPI
schema by hand, since FastAPI would otherwise parse them a second time, differently.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from api.routes.params import MAX_SEQ
from api.search import InvalidQuery
from bridge.event import MAX_NAME_LENGTH
from bridge.query import DEFAULT_LIMIT, Query, QueryError, parse_query
from bridge.query.cursor import CURSOR_CHARS
from bridge.query.fields import MAX_FIELDS
from bridge.query.model import MAX_PARAMETER_CHARS
from bridge.query.times import MAX_TIME_CHARS

# What narrows the events; /events adds paging, the stream and the histogram do not page.
FILTERS = ("topic", "since", "until", "source", "q", "field")
PAGING = ("order", "after", "next", "limit")

_TIME = "ISO-8601 with an offset (2026-12-01T14:02:00Z; send + as %2B), or a span before now"
_DESCRIPTIONS = {
    "topic": "A topic, or an MQTT filter: `+` one level, `#` the rest (`auth/#`, `+/prod`)",
    "since": f"Events with `timestamp` at or after this: {_TIME} (`90s`, `15m`, `2h`, `7d`)",
    "until": f"Events with `timestamp` before this: {_TIME}",
    "source": "Exactly this source",
    "q": "Full text over the payload's strings, event_id and source: words (all must be"
    ' found), "a phrase", -word to exclude, word* a prefix. Case and diacritics are ignored',
    "field": "`path:value`, repeatable (all must hold): `level:error`, `http.status:503`"
    ' (a number compared as a number), `code:"503"` (a JSON string), true/false/null',
    "order": "`asc`: oldest first (by arrival `seq`); `desc`: newest first",
    "after": "Only events with a larger `seq`",
    "next": "The `next` of the previous page, with the same filters: the following page",
    "limit": "Most events in the page",
}


def _schema(name: str, max_limit: int) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": MAX_PARAMETER_CHARS}
    match name:
        case "topic" | "source":
            return {**text, "maxLength": MAX_NAME_LENGTH}
        case "since" | "until":
            return {**text, "maxLength": MAX_TIME_CHARS}
        case "field":
            return {"type": "array", "items": text, "maxItems": MAX_FIELDS}
        case "order":
            return {"type": "string", "enum": ["asc", "desc"], "default": "asc"}
        case "after":
            return {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0}
        case "next":
            return {**text, "minLength": CURSOR_CHARS, "maxLength": CURSOR_CHARS}
        case "limit":
            return {"type": "integer", "minimum": 1, "maximum": max_limit, "default": DEFAULT_LIMIT}
    return text


def documented(names: tuple[str, ...], max_limit: int) -> dict[str, Any]:
    """The route's `openapi_extra`: `names`, each as an OpenAPI query parameter."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": _DESCRIPTIONS[name],
                "schema": _schema(name, max_limit),
            }
            for name in names
        ]
    }


def parsed(
    request: Request, names: tuple[str, ...], *, own: tuple[str, ...], max_limit: int
) -> Query:
    """The query the request's `names` parameters make (its `own` ones, the route's
    others, aside); any other parameter is refused, so a misspelt filter is not ignored."""
    given = []
    for name, value in request.query_params.multi_items():
        if name in names:
            given.append((name, value))
        elif name not in own:
            known = ", ".join((*names, *own))
            raise InvalidQuery(QueryError(name, f"is not a parameter here (these are: {known})"))
    query = parse_query(given, now=datetime.now(UTC), max_limit=max_limit)
    if isinstance(query, QueryError):
        raise InvalidQuery(query)
    return query
