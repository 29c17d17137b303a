"""The sidecar's MQTT connection: MQTT 3.1.1, publish at QoS 1 and count the PUBACKs.

Only what `POST /publish` needs (CONNECT, PUBLISH QoS 1, PUBACK, PINGREQ, DISCONNECT),
written by hand because the general clients cost most of the sidecar's time: through
aiomqtt a message took ~52 µs of CPU (a task, an event and a linear scan of every pending
call each), through paho alone ~33 µs (one `send` per message). Here a batch's packets are
encoded together and written 64 KiB at a time, and PUBACKs are read many to a
`data_received`: a few µs a message (BENCHMARKS.md, "HTTP path").

Every message takes a packet id from a pool of `window` ids shared by every request, so at
most `window` are unacknowledged at once, well under MQTT's 65,535; a batch larger than
that goes out as PUBACKs free ids. Clean session and no resend: a lost connection fails the
batches in flight with the count acknowledged, and their clients resend (duplicates are
counted by the bridge, never stored twice).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

Message = tuple[str, bytes]

KEEPALIVE_S = 60
# Packets are joined into writes of about this size: one system call for hundreds of small
# events, and a 16 MiB batch is not copied whole into the transport's buffer (the transport
# asks us to pause past its high-water mark, and the batch waits for it to drain).
WRITE_CHUNK = 64 * 1024
# CONNACK return codes of MQTT 3.1.1 (§3.2.2.3).
_REFUSED = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
_CONNACK, _PUBACK, _PINGRESP = 0x20, 0x40, 0xD0
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"


class LinkError(Exception):
    """The broker refused the connection, broke the protocol, or the connection was lost."""


def _length(n: int) -> bytes:
    """MQTT's remaining length: 7 bits a byte, low first, the top bit saying more follow."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def connect_packet(
    client_id: str, username: str | None, password: str | None, keepalive: int
) -> bytes:
    flags = 0x02  # clean session: nothing is kept for the sidecar between connections
    payload = _string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _string(password.encode())
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH at QoS 1, not retained, not a duplicate."""
    head = _string(topic) + packet_id.to_bytes(2, "big")
    return b"\x32" + _length(len(head) + len(payload)) + head + payload


class Tally:
    """One request's messages: how many the broker acknowledged so far, `done` when all."""

    __slots__ = ("acked", "done", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.acked = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not total:
            self.done.set_result(None)


class Link(asyncio.Protocol):
    """One connection to the broker; `publish` may be called by many requests at once."""

    def __init__(self, window: int) -> None:
        loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._connack: asyncio.Future[None] = loop.create_future()
        # Set with the reason once the connection is gone; never reset (a new Link replaces it).
        self.lost: asyncio.Future[LinkError] = loop.create_future()
        self._free = list(range(window, 0, -1))
        # Each id in flight, with the tally it counts for (None: its request gave up).
        self._owners: dict[int, Tally | None] = {}
        self._room = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._heard = loop.time()
        self._pinger: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        tls: ssl.SSLContext | None,
        window: int,
    ) -> Link:
        """Connected and accepted by the broker (CONNACK 0), or `LinkError`/`OSError`."""
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(
            lambda: cls(window), host, port, ssl=tls, server_hostname=host if tls else None
        )
        await link.handshake(client_id, username, password)
        return link

    async def handshake(self, client_id: str, username: str | None, password: str | None) -> None:
        """CONNECT, and wait for the broker's CONNACK: `LinkError` saying why it refused."""
        self._send(connect_packet(client_id, username, password, KEEPALIVE_S))
        try:
            await asyncio.wait((self._connack, self.lost), return_when=asyncio.FIRST_COMPLETED)
            if not self._connack.done():
                raise self.lost.result()
        except BaseException:
            self.abort()
            raise
        self._pinger = asyncio.get_running_loop().call_later(KEEPALIVE_S / 2, self._ping)

    @property
    def alive(self) -> bool:
        return not self.lost.done()

    async def publish(self, messages: Sequence[Message], tally: Tally) -> None:
        """Publish each `(topic, body)` at QoS 1; return once all are acknowledged.

        `tally.acked` counts the PUBACKs as they come, so a caller whose deadline passes
        knows how many made it. Raises `LinkError` when the connection is lost first."""
        try:
            sent = 0
            while sent < tally.total:
                if self.lost.done():
                    raise self.lost.result()
                if not self._free:
                    self._room.clear()
                    await self._wait(self._room)
                elif not self._writable.is_set():
                    await self._wait(self._writable)
                else:
                    sent = self._write_some(messages, sent, tally)
            await self._wait(tally.done)
        except BaseException:
            if tally.acked < tally.total:
                self._disown(tally)
            raise

    def _write_some(self, messages: Sequence[Message], start: int, tally: Tally) -> int:
        """Write packets from `messages[start]` on, while ids are free, up to about
        `WRITE_CHUNK` bytes in one write; return the index of the first not written."""
        packets, size, end = [], 0, start
        while end < tally.total and self._free and size < WRITE_CHUNK:
            topic, body = messages[end]
            packet_id = self._free.pop()
            self._owners[packet_id] = tally
            packets.append(publish_packet(topic.encode(), body, packet_id))
            size += len(packets[-1])
            end += 1
        self._send(b"".join(packets))
        return end

    async def _wait(self, what: asyncio.Event | asyncio.Future[None]) -> None:
        """Until `what` happens or the connection is lost (then `LinkError`)."""
        waiter = asyncio.ensure_future(what.wait()) if isinstance(what, asyncio.Event) else what
        try:
            await asyncio.wait((waiter, self.lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if waiter is not what and not waiter.done():
                waiter.cancel()  # our own task; a tally's future is left for its PUBACKs
        if not waiter.done():
            raise self.lost.result()

    def _disown(self, tally: Tally) -> None:
        """A request given up (deadline, lost): its PUBACKs, if any come, only free ids."""
        for packet_id, owner in self._owners.items():
            if owner is tally:
                self._owners[packet_id] = None

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _ping(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._heard > KEEPALIVE_S * 1.5:
            self._lose(LinkError(f"broker silent for {KEEPALIVE_S * 1.5:g}s"))
            return
        self._send(_PINGREQ)
        self._pinger = loop.call_later(KEEPALIVE_S / 2, self._ping)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._heard = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        start, end = 0, len(buffer)
        while end - start >= 2:
            kind = buffer[start]
            if kind == _PUBACK and buffer[start + 1] == 2:  # the common case, 4 bytes
                if end - start < 4:
                    break
                self._acked((buffer[start + 2] << 8) | buffer[start + 3])
                start += 4
                continue
            size, used = 0, 1
            while True:  # remaining length: at most 4 bytes
                if start + used >= end:
                    size = -1
                    break
                digit = buffer[start + used]
                size |= (digit & 0x7F) << (7 * (used - 1))
                used += 1
                if not digit & 0x80 or used > 4:
                    break
            if size < 0 or end - start < used + size:
                break
            self._packet(kind, bytes(buffer[start + used : start + used + size]))
            start += used + size
            if self.lost.done():
                return
        del buffer[:start]

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == _CONNACK and len(body) == 2 and not self._connack.done():
            if body[1]:
                reason = _REFUSED.get(body[1], f"return code {body[1]}")
                self._lose(LinkError(f"broker refused the connection: {reason}"))
            else:
                self._connack.set_result(None)
        elif kind == _PINGRESP:
            pass
        else:
            self._lose(LinkError(f"unexpected MQTT packet type {kind >> 4} from the broker"))

    def _acked(self, packet_id: int) -> None:
        if packet_id not in self._owners:
            self._lose(LinkError(f"PUBACK for packet id {packet_id}, which is not in flight"))
            return
        tally = self._owners.pop(packet_id)
        self._free.append(packet_id)
        self._room.set()
        if tally is not None:
            tally.acked += 1
            if tally.acked == tally.total and not tally.done.done():
                tally.done.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(LinkError(f"connection lost: {exc}" if exc else "connection closed by broker"))

    def _lose(self, reason: LinkError) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.abort()

    def abort(self) -> None:
        self._lose(LinkError("connection closed by the sidecar"))

    async def close(self) -> None:
        """DISCONNECT, then close: the broker drops the session without a will."""
        self._send(_DISCONNECT)
        if self._transport is not None:
            self._transport.close()
        self._lose(LinkError("connection closed by the sidecar"))
