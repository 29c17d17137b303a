"""A store URL, parsed once where settings are read: which backend, where, and how to show it.

`sqlite:///relative/path` or `sqlite:////absolute/path` names a SQLite file;
`postgresql://user@host/db?schema=NAME` (or `postgres://…`) a PostgreSQL database, with
the tables in schema NAME (default: the connection's search_path); every other query
parameter goes to libpq.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


@dataclass(frozen=True, slots=True)
class SQLiteUrl:
    url: str
    path: Path

    @property
    def display(self) -> str:
        """The URL as logs and answers show it (a path has nothing to hide)."""
        return self.url


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    # The URL and libpq's form of it may carry a password: `display` is what may be shown.
    url: str = field(repr=False)
    conninfo: str = field(repr=False)
    schema: str | None
    connect_timeout_s: float | None
    display: str


StoreUrl = SQLiteUrl | PostgresUrl


def parse_store_url(url: str) -> StoreUrl:
    """The one reading of a store URL; a ValueError says what is wrong with it."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ValueError(
                f"store URL {url!r} needs a path: sqlite:///relative or sqlite:////abs"
            )
        # sqlite:///data/x.db is relative (three slashes), sqlite:////abs/x.db absolute.
        return SQLiteUrl(url, Path(path[1:]))
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
        libpq = [(k, v) for k, v in params if k != "schema"]
        timeout = dict(libpq).get("connect_timeout")
        return PostgresUrl(
            url=url,
            conninfo=urlunsplit(parts._replace(query=urlencode(libpq))),
            schema=dict(params).get("schema"),
            connect_timeout_s=float(timeout) if timeout else None,
            display=redact_url(url),
        )
    scheme = url.split(":", 1)[0]
    raise ValueError(
        f"unsupported store URL scheme {scheme!r}: use sqlite:///path or postgresql://host/db"
    )


def redact_url(url: str) -> str:
    """`url` without its password (in the authority or as a query parameter), for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    redacted = parts._replace(netloc=netloc, query=query)
    # Untouched when there is nothing to hide: urlunsplit turns sqlite:///x into sqlite:/x.
    return url if redacted == parts else urlunsplit(redacted)
