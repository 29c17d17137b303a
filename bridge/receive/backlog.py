"""The inbox's bound: what waits for the consumer, cut into batches, and reading paused while full.

Mosquitto 2.0 does not keep to our receive maximum while it drains a session's
queue (each in-order PUBACK releases up to receive-maximum more), so without a
bound of our own the whole backlog would pile up in memory. `Backlog` holds
what arrived, in order, up to a count and a byte budget of bodies; while it is
full, `ReadPause` takes the socket off the event loop: unread, it fills, and
TCP holds the broker back.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class HasBody(Protocol):
    @property
    def body(self) -> bytes: ...


M = TypeVar("M", bound=HasBody)


class Backlog(Generic[M]):
    """Messages in arrival order, with the bytes of their bodies."""

    def __init__(self, max_waiting: int, max_waiting_bytes: int) -> None:
        self._max_waiting = max_waiting
        self._max_waiting_bytes = max_waiting_bytes
        self._waiting: list[M] = []
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(self, message: M) -> None:
        self._waiting.append(message)
        self.bytes += len(message.body)

    def full(self) -> bool:
        return len(self._waiting) >= self._max_waiting or self.bytes >= self._max_waiting_bytes

    def take(self, limit: int, max_bytes: int | None) -> list[M]:
        """The first `limit` messages whose bodies add up to at most `max_bytes` (but always
        one, whatever its size)."""
        count, size = 0, 0
        for message in self._waiting[:limit]:
            if count and max_bytes is not None and size + len(message.body) > max_bytes:
                break
            count, size = count + 1, size + len(message.body)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        self.bytes -= size
        return batch


class ReadPause:
    """The socket taken off the event loop while the backlog is full.

    Armed only once the consumer takes from the connection: until then the SUBACK
    it waits for may be queued behind the backlog, and the broker, acked nothing
    yet, does keep to the receive maximum."""

    def __init__(self) -> None:
        self._paused: socket.socket | ssl.SSLSocket | None = None
        self.armed = False

    def reset(self) -> None:
        """A new connection: not paused, not armed."""
        self._paused = None
        self.armed = False

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def pause(self, sock: socket.socket | ssl.SSLSocket | None) -> None:
        if sock is not None and self._paused is None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._paused = sock

    def resume(
        self, sock: socket.socket | ssl.SSLSocket | None, readable: Callable[[], None]
    ) -> None:
        """Watch `sock` again with `readable`, if it is still the connection paused."""
        paused, self._paused = self._paused, None
        if sock is not None and sock is paused:
            asyncio.get_running_loop().add_reader(sock.fileno(), readable)
