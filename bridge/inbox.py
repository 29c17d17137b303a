"""The bridge's receive path: QoS 1 messages taken in batches, acknowledged only after commit.

aiomqtt 2.x gives no manual ack: paho sends PUBACK as soon as aiomqtt has
queued a message, so a crash loses whatever is queued, and its per-message
queue and task are most of the receive cost. We keep aiomqtt for the
connection (connect, subscribe, socket handling, keepalive) and, in this one
module, reach the paho client it wraps (`aiomqtt.Client._client`).

Manual ack on, and four of paho's methods replaced on that one instance,
because paho's pure-Python reading was the bridge's limit (profiled: ~75% of
the event loop, three `recv` calls and a `Properties` object per message):

- `_sock_recv` reads the socket 64 KiB at a time and serves paho's small
  reads from that buffer;
- `loop_read` keeps parsing packets while the buffer holds bytes (paho parses
  one packet per wake-up, and buffered bytes would never wake the loop);
- `_handle_publish` turns a QoS 0/1 PUBLISH straight into a `Received`, skipping
  paho's `MQTTMessage`, MQTT 5 `Properties`, topic matcher and debug log (the
  bridge uses none of them); QoS 2, which the bridge never subscribes with, still
  goes through paho;
- `ack` writes a batch's PUBACKs as one packet, the same bytes paho would send
  one by one.

A broker re-sends a retained message on every subscribe. The bridge resubscribes
on each connect, so without care each reconnect would record the retained event
again, as one more duplicate. MQTT 5 subscribes with retain handling 1 (see
`consumer`); for 3.1.1, which has no such option, a retained copy arriving on a
connection whose session was already present (CONNACK) is marked `resent`: it
only repeats what that session's first subscription already delivered, so the
consumer acknowledges it without recording it.

Reading also pauses while `max_waiting` messages, or `max_waiting_bytes` of bodies, wait
(the socket is taken off
the event loop and put back by `take`): Mosquitto 2.0 does not keep to our
receive maximum while it drains a session's queue (each in-order PUBACK
releases up to receive-maximum more), so without this the whole backlog would
pile up in memory. Only once `take` has been called on a connection, though:
until then the SUBACK we wait for may be queued behind the backlog, and the
broker, acked nothing yet, does keep to the receive maximum.

`tests/test_inbox.py` pins the aiomqtt and paho behaviour all this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.reasoncodes import ReasonCode

READ_SIZE = 64 * 1024
# Socket reads per wake-up: the loop also has commits to await and acks to send.
READS_PER_WAKEUP = 4
PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id: as paho sends it
_U16 = struct.Struct("!H")


class Received(NamedTuple):
    """One PUBLISH as it came off the wire; `connection` says which one may ack it."""

    topic: str
    body: bytes
    mid: int
    qos: int
    connection: int
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
        self._paho: paho.Client = client._client  # noqa: SLF001 (aiomqtt exposes no paho client; the inbox reads its socket)
        self._max_waiting = max_waiting
        self._max_waiting_bytes = max_waiting_bytes
        self._paused: object = None  # the socket taken off the event loop, while full
        self._taking = False  # `take` called on this connection: pausing cannot block it
        self._paho.manual_ack_set(True)
        self._paho.on_message = self._on_message  # QoS 2 only: see _handle_publish
        self._session_present = False
        on_connect = self._paho.on_connect
        assert on_connect is not None, "aiomqtt sets paho's on_connect when it is created"
        self._aiomqtt_on_connect = on_connect
        self._paho.on_connect = self._on_connect
        on_disconnect = self._paho.on_disconnect
        assert on_disconnect is not None, "aiomqtt sets paho's on_disconnect when it is created"
        self._aiomqtt_on_disconnect = on_disconnect
        self._paho.on_disconnect = self._on_disconnect
        # The reason code of the broker's DISCONNECT (MQTT 5): aiomqtt's message iterator,
        # which `watch` waits on, raises without it.
        self._disconnect_reason: ReasonCode | None = None
        self._v5 = self._paho.protocol == MQTTProtocolVersion.MQTTv5
        # Instance attributes shadow paho's methods for this client only.
        self._paho._sock_recv = self._recv  # type: ignore[method-assign]  # noqa: SLF001 (the inbox's read hook (class docstring))
        self._paho.loop_read = self._loop_read  # type: ignore[method-assign]
        self._paho._handle_publish = self._handle_publish  # type: ignore[method-assign]  # noqa: SLF001 (the inbox's publish hook (class docstring))
        self._buffer = b""
        self._offset = 0
        self._buffered_socket: object = None
        self._reads_left = 0
        self._waiting: list[Received] = []
        self._waiting_bytes = 0  # of the bodies in `_waiting`
        self._arrived = asyncio.Event()
        self._connection = 0
        self.lost: Exception | None = None

    def connecting(self) -> None:
        """Call before each connect: the broker sends queued messages right after CONNACK,
        before `async with client` returns. Messages from older connections can no longer
        be acked (their ids are void); the broker redelivers them, and the store counts the
        copies as duplicates."""
        self._connection += 1
        self._paused = None
        self._taking = False
        self.lost = None
        self._disconnect_reason = None

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, *rest: Any) -> None:
        """Notes whether the broker kept our session, then hands the CONNACK to aiomqtt."""
        self._session_present = bool(flags.session_present)
        self._aiomqtt_on_connect(client, userdata, flags, *rest)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, *rest: Any) -> None:
        """Keeps the broker's reason (e.g. 0x8E, session taken over), then tells aiomqtt."""
        reason = rest[0] if rest else None
        # The first only: paho reports the socket closing after the DISCONNECT as 0x80.
        if self._disconnect_reason is None and isinstance(reason, ReasonCode) and reason.is_failure:
            self._disconnect_reason = reason
        self._aiomqtt_on_disconnect(client, userdata, flags, *rest)

    # Reading: runs on the event loop thread (aiomqtt reads the socket from loop.add_reader).

    def _recv(self, bufsize: int) -> bytes:
        """paho's `_sock_recv`, from a buffer filled `READ_SIZE` bytes at a time."""
        sock = self._paho._sock  # noqa: SLF001 (paho's socket, read by the inbox)
        if sock is not self._buffered_socket:  # a new connection: the old bytes are void
            self._buffer, self._offset, self._buffered_socket = b"", 0, sock
        if self._offset >= len(self._buffer):
            if self._reads_left <= 0:
                raise BlockingIOError  # this wake-up's share is read; the socket will wake us
            self._reads_left -= 1
            # paho's own: SSL "want read" becomes BlockingIOError, end of stream b"".
            self._buffer, self._offset = paho.Client._sock_recv(self._paho, READ_SIZE), 0  # noqa: SLF001 (paho's own read, under the hook)
        chunk = self._buffer[self._offset : self._offset + bufsize]
        self._offset += len(chunk)
        return chunk

    def _loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's `loop_read`, but it returns only when the buffer is empty: bytes left in
        it would wait for the socket to become readable again, which may never happen."""
        client = self._paho
        full = self._taking and self._full()
        if full and self._buffered() == 0 and not self._tls_pending():
            self._pause()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._reads_left = READS_PER_WAKEUP
        while True:
            if client._sock is None:  # noqa: SLF001 (paho's socket, read by the inbox)
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = client._packet_read()  # noqa: SLF001 (paho's packet loop, run one packet at a time)
            if rc > 0:
                return client._loop_rc_handle(rc)  # noqa: SLF001 (paho's packet loop, run one packet at a time)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN and self._buffered() == 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _buffered(self) -> int:
        return len(self._buffer) - self._offset

    def _tls_pending(self) -> bool:
        """Bytes TLS has decrypted and nobody has read: the socket will not signal them, and
        aiomqtt's reader calls `loop_read` again while there are any."""
        pending = getattr(self._paho._sock, "pending", None)  # noqa: SLF001 (paho's socket, read by the inbox)
        return pending is not None and int(pending()) > 0

    def _pause(self) -> None:
        """Stop watching the socket: unread, it fills, and TCP holds the broker back."""
        sock = self._paho._sock  # noqa: SLF001 (paho's socket, read by the inbox)
        if sock is not None and self._paused is None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._paused = sock

    def _resume(self) -> None:
        sock, paused, self._paused = self._paho._sock, self._paused, None  # noqa: SLF001 (paho's socket, read by the inbox)
        if sock is not None and sock is paused:  # still the same connection
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        """The reader callback after a pause, as aiomqtt's: read until TLS holds nothing
        decrypted either; a failure ends the connection."""
        try:
            while True:
                self._paho.loop_read()
                if not self._tls_pending():
                    return
        except Exception as exc:  # aiomqtt's own callback treats any failure the same way
            self.lost = aiomqtt.MqttError(f"reading from the broker failed: {exc!r}")
            self._arrived.set()

    def _handle_publish(self) -> MQTTErrorCode:
        """A complete PUBLISH packet in paho's `_in_packet`: topic, packet id, MQTT 5
        properties (skipped), payload. With manual ack, paho sends nothing for QoS 0 or 1."""
        packet = self._paho._in_packet  # noqa: SLF001 (the packet paho is handling)
        command: int = packet["command"]
        data: bytearray = packet["packet"]
        qos = (command & 0x06) >> 1
        if qos > 1:
            return paho.Client._handle_publish(self._paho)  # noqa: SLF001 (paho's own handling, under the hook)
        try:
            (length,) = _U16.unpack_from(data)
            pos = 2 + length
            topic = data[2:pos].decode("utf-8", "replace")
            mid = 0
            if qos:
                (mid,) = _U16.unpack_from(data, pos)
                pos += 2
            if self._v5:  # properties: a variable-length size, then that many bytes
                size, shift = 0, 0
                while True:
                    byte = data[pos]
                    pos += 1
                    size |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                pos += size
        except (struct.error, IndexError) as exc:
            raise MalformedPacket(f"truncated PUBLISH: {exc}") from exc
        if pos > len(data):
            raise MalformedPacket("PUBLISH properties run past the packet")
        # RETAIN set and DUP clear: a fresh retained copy, sent because we subscribed. A DUP
        # one is the broker resending what we left unacked, which we must still record.
        resent = self._session_present and command & 0x09 == 0x01
        self._hold(Received(topic, bytes(data[pos:]), mid, qos, self._connection, resent))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _hold(self, message: Received) -> None:
        self._waiting.append(message)
        self._waiting_bytes += len(message.body)
        self._arrived.set()

    def _full(self) -> bool:
        return (
            len(self._waiting) >= self._max_waiting
            or self._waiting_bytes >= self._max_waiting_bytes
        )

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._hold(
            Received(
                message.topic, bytes(message.payload), message.mid, message.qos, self._connection
            )
        )

    async def watch(self, client: aiomqtt.Client) -> None:
        """Notice the connection dropping: aiomqtt's iterator raises then (and never yields,
        since our reading bypasses its queue)."""
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            reason = self._disconnect_reason
            self.lost = aiomqtt.MqttCodeError(reason, "Disconnected") if reason else exc
            self._arrived.set()

    async def take(
        self, limit: int, timeout: float, max_bytes: int | None = None
    ) -> list[Received]:
        """Up to `limit` waiting messages whose bodies add up to at most `max_bytes` (but
        always one, whatever its size); waits up to `timeout` when there are none."""
        self._taking = True
        if not self._waiting and self.lost is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        count, size = 0, 0
        for message in self._waiting[:limit]:
            if count and max_bytes is not None and size + len(message.body) > max_bytes:
                break
            count, size = count + 1, size + len(message.body)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        self._waiting_bytes -= size
        if self._paused is not None and not self._full():
            self._resume()
        return batch

    def ack(self, batch: list[Received]) -> int:
        """PUBACK each message of the current connection, in arrival order (MQTT §4.6).

        Consecutive PUBACKs go out as one write; a QoS 2 message (never seen by the
        bridge, which subscribes with QoS 1) takes paho's own path, in its place."""
        acked = 0
        pubacks: list[bytes] = []
        for message in batch:
            if message.connection != self._connection or message.qos == 0:
                continue
            acked += 1
            if message.qos == 1:
                pubacks.append(_PUBACK.pack(PUBACK, 2, message.mid))
                continue
            self._send(pubacks)
            pubacks = []
            self._paho.ack(message.mid, message.qos)
        self._send(pubacks)
        return acked

    def _send(self, pubacks: list[bytes]) -> None:
        if pubacks:
            self._paho._packet_queue(PUBACK, b"".join(pubacks), 0, 1)  # noqa: SLF001 (PUBACKs written in one send through paho's queue)

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def waiting_bytes(self) -> int:
        return self._waiting_bytes
