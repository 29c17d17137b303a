"""The bridge's receive path: QoS 1 messages taken in batches, acknowledged only after commit.

aiomqtt 2.x gives no manual ack: paho sends PUBACK as soon as aiomqtt has
queued a message, so a crash loses whatever is queued, and its per-message
queue and task are most of the receive cost. We keep aiomqtt for the
connection (connect, subscribe, socket handling, keepalive) and replace the
reading of the paho client it wraps, with four small units this module wires
together:

- `paho_internals`: every private aiomqtt/paho member used (three of paho's methods
  replaced on that one instance), and nothing else;
- `wire`: buffered socket reads, PUBLISH decoding, PUBACK encoding;
- `backlog`: what waits for the consumer, bounded, and reading paused while full;
- `acks`: PUBACK only after commit, only on the live connection, in arrival order.

paho parses one packet per wake-up, and buffered bytes would never wake the
loop, so the inbox's `loop_read` keeps parsing while its buffer holds bytes.

A broker re-sends a retained message on every subscribe. The bridge resubscribes
on each connect, so without care each reconnect would record the retained event
again, as one more duplicate. MQTT 5 subscribes with retain handling 1 (see
`consumer`); for 3.1.1, which has no such option, a retained copy arriving on a
connection whose session was already present (CONNACK) is marked `resent`: it
only repeats what that session's first subscription already delivered, so the
consumer acknowledges it without recording it.

`tests/test_inbox.py` and `tests/test_paho_internals.py` pin the aiomqtt and paho
behaviour all this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.reasoncodes import ReasonCode

from bridge.receive.acks import Acks, Connection
from bridge.receive.backlog import Backlog, ReadPause
from bridge.receive.paho_internals import PahoInternals
from bridge.receive.wire import ReadBuffer, decode_publish

# Socket reads per wake-up: the loop also has commits to await and acks to send.
READS_PER_WAKEUP = 4


class Received(NamedTuple):
    """One PUBLISH as it came off the wire; `connection` says whether it may still be acked."""

    topic: str
    body: bytes
    mid: int
    qos: int
    connection: Connection
    # A retained copy re-sent only because we resubscribed to a session that had the
    # subscription already: acknowledged, never recorded (see the module's docstring).
    resent: bool = False


class Inbox:
    """Collects messages from paho's reading; `take` hands them out in arrival order."""

    def __init__(
        self,
        client: aiomqtt.Client,
        *,
        max_waiting: int = 2000,
        max_waiting_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._paho = PahoInternals(client)
        self._v5 = self._paho.client.protocol == MQTTProtocolVersion.MQTTv5
        self._buffer = ReadBuffer(self._paho.paho_recv)
        self._backlog: Backlog[Received] = Backlog(max_waiting, max_waiting_bytes)
        self._pause = ReadPause()
        self._acks = Acks(self._paho.queue_pubacks)
        self._arrived = asyncio.Event()
        self._session_present = False
        # The reason code of the broker's DISCONNECT (MQTT 5): aiomqtt's message iterator,
        # which `watch` waits on, raises without it.
        self._disconnect_reason: ReasonCode | None = None
        self.lost: Exception | None = None
        paho_client = self._paho.client
        on_connect, on_disconnect = paho_client.on_connect, paho_client.on_disconnect
        assert on_connect is not None, "aiomqtt sets paho's on_connect when it is created"
        assert on_disconnect is not None, "aiomqtt sets paho's on_disconnect when it is created"
        self._aiomqtt_on_connect, self._aiomqtt_on_disconnect = on_connect, on_disconnect
        paho_client.on_connect = self._on_connect
        paho_client.on_disconnect = self._on_disconnect
        self._paho.install(
            recv=self._buffer.recv, loop_read=self._loop_read, handle_publish=self._handle_publish
        )

    def connecting(self) -> None:
        """Call before each connect: the broker sends queued messages right after CONNACK,
        before `async with client` returns. Messages from older connections can no longer
        be acked (their ids are void); the broker redelivers them, and the store counts the
        copies as duplicates."""
        self._acks.connecting()
        self._buffer.clear()
        self._pause.reset()
        self.lost = None
        self._disconnect_reason = None

    def _lose(self, error: Exception) -> None:
        self._acks.lost()
        self.lost = error
        self._arrived.set()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, *rest: Any) -> None:
        """Notes whether the broker kept our session, then hands the CONNACK to aiomqtt."""
        self._session_present = bool(flags.session_present)
        self._aiomqtt_on_connect(client, userdata, flags, *rest)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, *rest: Any) -> None:
        """Drops the connection (its ids are void from now on), keeps the broker's reason
        (e.g. 0x8E, session taken over), then tells aiomqtt."""
        self._acks.lost()
        reason = rest[0] if rest else None
        # The first only: paho reports the socket closing after the DISCONNECT as 0x80.
        if self._disconnect_reason is None and isinstance(reason, ReasonCode) and reason.is_failure:
            self._disconnect_reason = reason
        self._aiomqtt_on_disconnect(client, userdata, flags, *rest)

    # Reading: runs on the event loop thread (aiomqtt reads the socket from loop.add_reader).

    def _loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's `loop_read`, but it returns only when the buffer is empty: bytes left in
        it would wait for the socket to become readable again, which may never happen.
        The whole PUBLISH packets in the buffer are decoded here (paho reads a packet in
        three calls and takes a lock and the clock for each); paho reads everything else,
        and the packet that runs past the buffer's end."""
        full = self._pause.armed and self._backlog.full()
        if full and not self._buffer and not self._tls_pending():
            self._pause.pause(self._paho.socket())
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._buffer.reads_left = READS_PER_WAKEUP
        read_packet, socket = self._paho.read_packet, self._paho.socket
        whole_publish = self._buffer.whole_publish
        while True:
            if socket() is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self._buffer and self._paho.between_packets():
                packet = whole_publish()
                if packet is not None:
                    try:
                        while packet is not None:
                            self._hold(*packet)
                            packet = whole_publish()
                    except MalformedPacket:  # as paho's reading handles it
                        return self._paho.failed(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                    self._paho.heard_from_broker()
                    continue
            rc = read_packet()
            if rc > 0:
                return self._paho.failed(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not self._buffer:
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _tls_pending(self) -> bool:
        """Bytes TLS has decrypted and nobody has read: the socket will not signal them, and
        aiomqtt's reader calls `loop_read` again while there are any."""
        pending = getattr(self._paho.socket(), "pending", None)
        return pending is not None and int(pending()) > 0

    def _readable(self) -> None:
        """The reader callback after a pause, as aiomqtt's: read until TLS holds nothing
        decrypted either; a failure ends the connection."""
        try:
            while True:
                self._loop_read()
                if not self._tls_pending():
                    return
        except Exception as exc:  # aiomqtt's own callback treats any failure the same way
            self._lose(aiomqtt.MqttError(f"reading from the broker failed: {exc!r}"))

    def _handle_publish(self) -> MQTTErrorCode:
        """A complete PUBLISH packet in paho's hands; paho sends no PUBACK for it."""
        self._hold(*self._paho.in_packet())
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _hold(self, command: int, data: bytes | bytearray) -> None:
        topic, body, mid, qos, fresh_retained = decode_publish(command, data, v5=self._v5)
        resent = self._session_present and fresh_retained
        self._backlog.hold(Received(topic, body, mid, qos, self._acks.current, resent))
        self._arrived.set()

    async def watch(self, client: aiomqtt.Client) -> None:
        """Notice the connection dropping: aiomqtt's iterator raises then (and never yields,
        since our reading bypasses its queue)."""
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            reason = self._disconnect_reason
            self._lose(aiomqtt.MqttCodeError(reason, "Disconnected") if reason else exc)

    async def take(
        self, limit: int, timeout: float, max_bytes: int | None = None
    ) -> list[Received]:
        """Up to `limit` waiting messages whose bodies add up to at most `max_bytes` (but
        always one, whatever its size); waits up to `timeout` when there are none."""
        self._pause.armed = True
        if not self._backlog and self.lost is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        batch = self._backlog.take(limit, max_bytes)
        if self._pause.paused and not self._backlog.full():
            self._pause.resume(self._paho.socket(), self._readable)
        return batch

    async def gather(self, count: int, until: asyncio.Future[Any]) -> None:
        """Wait until `count` messages wait (a full batch), `until` is done, or the
        connection is lost, whichever comes first."""

        def wake(_: asyncio.Future[Any]) -> None:
            self._arrived.set()

        until.add_done_callback(wake)
        try:
            while len(self._backlog) < count and not until.done() and self.lost is None:
                self._arrived.clear()
                await self._arrived.wait()
        finally:
            until.remove_done_callback(wake)

    def wake(self) -> None:
        """End a `take` waiting for messages now (it returns what is there, maybe nothing):
        how a stopping bridge is not kept up to its timeout."""
        self._arrived.set()

    def ack(self, batch: list[Received]) -> int:
        """PUBACK the batch (after its commit): see `acks`. Returns how many were sent."""
        return self._acks.send(batch)

    def __len__(self) -> int:
        return len(self._backlog)

    @property
    def waiting_bytes(self) -> int:
        return self._backlog.bytes
