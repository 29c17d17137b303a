"""How the sidecar is served: uvicorn, with the limits that keep it answering under a flood
of connections.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) but not one that never
finishes its request headers: a bare or slowloris socket (a header byte now and then) holds
a file descriptor for ever, and once descriptors run out CPython's accept loop logs an error
per pending connection per tick (3.11: no return after EMFILE) while nothing else is served.
So each connection must finish its headers within `header_timeout_s` of opening (or of its
previous response), connections past `max_connections` are answered 503 and closed at once,
and the open-files soft limit is raised to the hard one before the socket is bound.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI

from api.http_protocol import StatusH11Protocol
from api.settings import ApiSettings

logger = logging.getLogger("logagg.api")

# Descriptors kept free for everything but client sockets: the store, the broker
# connection, the thread pool's files, logs.
FD_RESERVE = 128
FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 29\r\n\r\n"
    b"too many connections: retry\r\n"
)


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit; return the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logger.info("open files limit raised from %d to %d (the hard limit)", soft, hard)
        return hard
    logger.info("open files limit: %d", soft)
    return soft


class GuardedH11Protocol(StatusH11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers and a connection cap
    (and, from its base, a 431 the client can read)."""

    header_timeout_s: float = 10.0
    max_connections: int = 4096

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            transport.write(FULL)
            transport.close()
            return
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle keep-alive is uvicorn's (timeout_keep_alive); a next request that starts
        # but never finishes its headers is ours.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, settings: ApiSettings, **uvicorn_args: Any) -> uvicorn.Config:
    """The uvicorn configuration `logagg api` runs with (and the tests, in a thread)."""
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    connections = max(1, min(settings.max_connections, open_files - FD_RESERVE))
    logger.info(
        "at most %d connections (%d streams); request headers within %g s, idle keep-alive %d s",
        connections,
        settings.max_streams,
        settings.header_timeout_s,
        settings.keep_alive_timeout_s,
    )
    protocol = type(
        "SidecarProtocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": connections},
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # Open /events/stream responses would hold a shutdown until they end.
        timeout_graceful_shutdown=5,
        **uvicorn_args,
    )
