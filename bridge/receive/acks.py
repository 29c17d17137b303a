"""When a message may be acknowledged: after commit, on its own connection, in arrival order.

A packet id means something only on the connection it came in on: after a
reconnect the broker redelivers unacknowledged messages, perhaps under ids
reused for others, so a PUBACK for an old id could acknowledge a message never
stored. Each message is bound to the `Connection` it arrived on; the inbox
drops a connection the moment it is lost and opens a new one before each
connect, and only the live one's messages are acknowledged (the rest come back
and the store counts them as duplicates). So nothing is queued for, or counted
on, a lost connection; only PUBACKs queued while it was live but not yet written
when it dropped are left to paho, whose reconnect discards them with its out
queue (`paho_internals.PACKET_QUEUE`). MQTT §4.6 wants PUBACKs in arrival order;
a batch's go out as one write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from paho.mqtt.enums import MQTTErrorCode

from bridge.receive.wire import PUBACK, pubacks


class Connection:
    """One connection's lifetime: live from before its connect until it is lost."""

    __slots__ = ("live",)

    def __init__(self, *, live: bool) -> None:
        self.live = live

    def drop(self) -> None:
        self.live = False


class Ackable(Protocol):
    @property
    def mid(self) -> int: ...
    @property
    def qos(self) -> int: ...
    @property
    def connection(self) -> Connection: ...


class Acks:
    """PUBACKs for committed batches; `queue` writes raw packets (see `paho_internals`)."""

    def __init__(self, queue: Callable[[int, bytes], MQTTErrorCode]) -> None:
        self._queue = queue
        self.current = Connection(live=False)  # none yet

    def connecting(self) -> Connection:
        """A new connection; the previous one's ids are void from now on."""
        self.current.drop()
        self.current = Connection(live=True)
        return self.current

    def lost(self) -> None:
        """The live connection is gone: nothing more is acknowledged on it."""
        self.current.drop()

    def send(self, batch: Sequence[Ackable]) -> int:
        """PUBACK the batch's QoS 1 messages of the live connection, in order, in one write;
        returns how many were handed to it (none once it is lost)."""
        connection = self.current
        if not connection.live:
            return 0
        mids = [m.mid for m in batch if m.qos and m.connection is connection]
        if not mids or self._queue(PUBACK, pubacks(mids)) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return 0
        return len(mids)
