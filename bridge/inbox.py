"""The bridge's receive path: QoS 1 messages taken in batches, acknowledged only after commit.

aiomqtt 2.x gives no manual ack: paho sends PUBACK as soon as aiomqtt has
queued a message, so a crash loses whatever is queued, and its per-message
queue and task are most of the receive cost. We keep aiomqtt for the
connection (connect, subscribe, socket handling) and, in this one module,
reach the paho client it wraps (`aiomqtt.Client._client`): manual ack on, and
our own `on_message` that appends to a plain list. `tests/test_inbox.py` pins
the aiomqtt and paho behaviour this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho


@dataclass(frozen=True, slots=True)
class Received:
    """One PUBLISH as it came off the wire; `connection` says which one may ack it."""

    topic: str
    body: bytes
    mid: int
    qos: int
    connection: int


class Inbox:
    """Collects messages from paho's callback; `take` hands them out in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client
        self._paho.manual_ack_set(True)
        self._paho.on_message = self._on_message
        self._waiting: list[Received] = []
        self._arrived = asyncio.Event()
        self._connection = 0
        self.lost: Exception | None = None

    def connecting(self) -> None:
        """Call before each connect: the broker sends queued messages right after CONNACK,
        before `async with client` returns. Messages from older connections can no longer
        be acked (their ids are void); the broker redelivers them, and the store counts the
        copies as duplicates."""
        self._connection += 1
        self.lost = None

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        # Runs on the event loop thread: aiomqtt reads the socket from loop.add_reader.
        self._waiting.append(
            Received(
                message.topic, bytes(message.payload), message.mid, message.qos, self._connection
            )
        )
        self._arrived.set()

    async def watch(self, client: aiomqtt.Client) -> None:
        """Notice the connection dropping: aiomqtt's iterator raises then (and never yields,
        since our `on_message` bypasses its queue)."""
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            self.lost = exc
            self._arrived.set()

    async def take(self, limit: int, timeout: float) -> list[Received]:
        """Up to `limit` waiting messages; waits up to `timeout` when there are none."""
        if not self._waiting and self.lost is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        batch, self._waiting = self._waiting[:limit], self._waiting[limit:]
        return batch

    def ack(self, batch: list[Received]) -> int:
        """PUBACK each message of the current connection, in arrival order (MQTT §4.6)."""
        acked = 0
        for message in batch:
            if message.connection == self._connection and message.qos > 0:
                self._paho.ack(message.mid, message.qos)
                acked += 1
        return acked

    def __len__(self) -> int:
        return len(self._waiting)
