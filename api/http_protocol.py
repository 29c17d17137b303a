"""uvicorn's HTTP/1.1 protocol (h11), answering a request it cannot read with a status.

uvicorn answers every unreadable request with 400 and closes the socket at
once. For a request line and headers past h11's limit (16 KiB still incomplete,
e.g. a 300 KB query string) that is wrong twice: the status is 431, and the
client, still sending, gets a connection reset instead of any answer (the
kernel resets a socket closed with unread data). Here the answer carries h11's
status, and the socket is half-closed and drained for a moment before it is
closed, so the client reads it.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

# How long a refused client may go on sending before its socket is closed regardless.
DRAIN_S = 2.0


class StatusH11Protocol(H11Protocol):
    """Pass as uvicorn's `http=`: a 431 (or 400) that the client can read."""

    _drain: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._drain is None:
            super().data_received(data)
        # else: the rest of a refused request, dropped unread

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for any request h11 cannot parse; h11's own hint (431) is lost
        # on the way, but its cause is plain: the head grew past the limit unfinished.
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        status = HTTPStatus.BAD_REQUEST
        if len(self.conn.trailing_data[0]) > limit:
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            msg = f"Request line and headers exceed {limit} bytes."
        body = msg.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers, reason=status.phrase)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.write_eof()
        self._drain = self.loop.call_later(DRAIN_S, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain is not None:
            self._drain.cancel()
        super().connection_lost(exc)
