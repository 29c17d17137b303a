"""The query over stored events (issue 11): parsed once, typed, the same for every store.

Pure: no store, no HTTP. The stores translate a `Query`; the sidecar and the CLI parse
one from their parameters and answer a `QueryError` with a 422 or exit status 2.
"""

from bridge.query.cursor import Cursor, decode_cursor
from bridge.query.fields import FieldFilter, parse_field
from bridge.query.model import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    PARAMETERS,
    Order,
    Query,
    QueryError,
    Searchable,
    matches,
    parse_query,
    reference_page,
)
from bridge.query.text import (
    Document,
    Phrase,
    TextQuery,
    document,
    document_text,
    fts_text,
    parse_text,
    render_fts5,
    render_tsquery,
    searchable,
    text_matches,
    tokens,
    tsvector_literal,
)
from bridge.query.times import parse_time
from bridge.query.topic import TopicFilter, parse_topic

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PARAMETERS",
    "Cursor",
    "Document",
    "FieldFilter",
    "Order",
    "Phrase",
    "Query",
    "QueryError",
    "Searchable",
    "TextQuery",
    "TopicFilter",
    "decode_cursor",
    "document",
    "document_text",
    "fts_text",
    "matches",
    "parse_field",
    "parse_query",
    "parse_text",
    "parse_time",
    "parse_topic",
    "reference_page",
    "render_fts5",
    "render_tsquery",
    "searchable",
    "text_matches",
    "tokens",
    "tsvector_literal",
]
