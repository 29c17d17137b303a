"""What a browser may do with the sidecar: a middleware in front of every route, and a
dependency for the route that takes a body.

Without a token (the default) the API is open to whatever can reach it, and a
browser is such a thing: any page it shows can send requests to 127.0.0.1. So:

- the `Host` header must name this server (DNS rebinding: a page on
  `evil.example` whose name is re-pointed to 127.0.0.1 sends `Host: evil.example`).
  IP addresses and `localhost` always pass (no one can re-point them), plus the
  listen address and `LOGAGG_API_ALLOWED_HOSTS` (`*`: any); else 400;
- a request from a page of another origin (its `Origin` header names another
  host, or `Sec-Fetch-Site` says cross-site or same-site) is refused with 403,
  unless that origin is in `LOGAGG_API_ALLOWED_ORIGINS`, for which CORS
  headers are sent;
- every answer carries a Content-Security-Policy (the dashboard's inline script
  and style by their hashes, nothing else), `nosniff`, `frame-ancestors 'none'`
  and `Referrer-Policy: no-referrer`;
- `require_json` (after the token check, so other methods still get 405): a body
  must be `application/json` (415), since a `text/plain` POST is one a page may
  send anywhere without asking (a CORS "simple" request).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Header, HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ANY = "*"
# Names that always resolve to this machine: a page cannot re-point them.
LOOPBACK_NAMES = frozenset({"localhost"})
# Sec-Fetch-Site values of a page on another origin (same-site: another port of this host).
CROSS_SITE = frozenset({"cross-site", "same-site"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# JSON answers embed nothing; the pages get their own policy (see `page_policies`).
STRICT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# /docs and /redoc load Swagger UI and ReDoc from this origin (fastapi-offline), started by
# an inline script that FastAPI writes with the schema's URL in it.
_DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; worker-src blob:;"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def page_policy(html: str) -> str:
    """The policy of a page that is one HTML file: its inline scripts and styles by their
    hashes, requests to this origin only. An inline `style=` attribute would be refused."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        hashes[tag].append(_sha256(body))
    script, style = (" ".join(hashes[tag]) or "'none'" for tag in ("script", "style"))
    return (
        f"default-src 'none'; script-src {script}; style-src {style}; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def page_policies(pages: Mapping[str, str]) -> dict[str, str]:
    """`{path: policy}` for the HTML pages served at `pages` (path → HTML), and /docs."""
    policies = dict.fromkeys(DOCS_PATHS, _DOCS_POLICY)
    policies.update((path, page_policy(html)) for path, html in pages.items())
    return policies


def _hostname(netloc: str) -> tuple[str, int | None] | None:
    """`(host, port)` of a `Host` header or an origin's netloc, lower case; None if malformed."""
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host.rstrip("."), port) if host else None


@dataclass(frozen=True, slots=True)
class HostRule:
    """Which `Host` headers are answered."""

    names: frozenset[str]

    @classmethod
    def for_listener(cls, listen_host: str, allowed: Sequence[str]) -> HostRule:
        """Loopback names, `allowed`, and the listen address when it is a name."""
        names = LOOPBACK_NAMES | {name.strip().lower() for name in allowed}
        return cls(names | {listen_host.lower()})

    def allows(self, host: str) -> bool:
        # An address cannot be re-pointed by DNS.
        return ANY in self.names or host in self.names or _is_address(host)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_origin(origin: str, host: tuple[str, int | None], scheme: str) -> bool:
    """Whether `origin` (`scheme://host[:port]`) is this server as the request reached it.
    The scheme is not compared: behind a TLS proxy the page is https and this is http."""
    parts = urlsplit(origin)
    theirs = _hostname(parts.netloc)
    if theirs is None:
        return False
    their_port = theirs[1] or DEFAULT_PORTS.get(parts.scheme)
    our_port = host[1] or DEFAULT_PORTS.get(scheme)
    return theirs[0] == host[0] and their_port == our_port


def require_json(content_type: Annotated[str, Header()] = "") -> None:
    """A route dependency: 415 unless the body is declared `application/json`."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            415, f"Content-Type must be application/json, got {media_type or 'none'!r}"
        )


class BrowserGuard:
    """Refuses foreign hosts (400) and cross-origin browser requests (403), and adds the
    security headers to every answer, refusals included."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: HostRule,
        allowed_origins: Sequence[str],
        policies: Mapping[str, str],
    ) -> None:
        self._origins = frozenset(allowed_origins)
        # CORS answers (preflights included) only for the allowed origins.
        self.app = (
            CORSMiddleware(
                app,
                allow_origins=list(self._origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "last-event-id"],
            )
            if self._origins
            else app
        )
        self._hosts = hosts
        self._policies = dict(policies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policies.get(scope["path"], STRICT_POLICY)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = policy
                headers["x-content-type-options"] = "nosniff"
                headers["x-frame-options"] = "DENY"
                headers["referrer-policy"] = "no-referrer"
            await send(message)

        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
        else:
            status, detail = refusal
            await JSONResponse({"detail": detail}, status)(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = _hostname(headers.get("host", ""))
        if host is None or not self._hosts.allows(host[0]):
            shown = headers.get("host", "")[:100]
            return 400, f"host {shown!r} is not served here: add it to LOGAGG_API_ALLOWED_HOSTS"
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site", "")
        foreign = site in CROSS_SITE or (
            origin is not None and not _same_origin(origin, host, scope["scheme"])
        )
        if foreign and origin not in self._origins:
            shown = (origin or f"a {site} page")[:100]
            return 403, (
                f"cross-origin request from {shown} refused: add the origin to "
                "LOGAGG_API_ALLOWED_ORIGINS to allow it"
            )
        return None
