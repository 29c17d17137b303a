"""MQTT bytes the inbox reads and writes itself, without paho's per-message objects.

paho's pure-Python reading was the bridge's limit (profiled: ~75% of the event
loop, three `recv` calls and a `Properties` object per message). `ReadBuffer`
serves paho's small reads from one large one; `decode_publish` takes a whole
PUBLISH straight to topic, body and packet id, skipping paho's `MQTTMessage`,
MQTT 5 `Properties`, topic matcher and debug log (the bridge uses none of them);
`pubacks` encodes a batch's PUBACKs as the bytes paho would send one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from paho.mqtt.exception import MalformedPacket

READ_SIZE = 64 * 1024
PUBACK = 0x40
PUBLISH = 0x30
PACKET_TYPE = 0xF0
MAX_VARINT_SHIFT = 21  # the remaining length has at most 4 bytes
# PUBLISH fixed header flags (MQTT §3.3.1).
RETAIN = 0x01
QOS_MASK = 0x06
QOS_SHIFT = 1
DUP = 0x08
# Variable byte integer (MQTT §1.5.5): seven bits a byte, the high bit says "more".
VARINT_VALUE = 0x7F
VARINT_MORE = 0x80
VARINT_BITS = 7
_PUBACK_REMAINING_LENGTH = 2  # just the packet id
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length, packet id: as paho sends it
_U16 = struct.Struct("!H")


# One decoded PUBLISH: topic, body, packet id (0 for QoS 0), QoS, and whether it is a fresh
# retained copy (RETAIN set, DUP clear: sent because we subscribed; a DUP one is the broker
# resending what we left unacked). A plain tuple: a NamedTuple's constructor costs more
# than the rest of the decoding.
Publish = tuple[str, bytes, int, int, bool]


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """The variable byte integer at `at` and where it ends; None when `data` ends first or
    it runs past four bytes."""
    value, shift, end = 0, 0, len(data)
    while True:
        if at >= end or shift > MAX_VARINT_SHIFT:
            return None
        byte = data[at]
        at += 1
        value |= (byte & VARINT_VALUE) << shift
        if not byte & VARINT_MORE:
            return value, at
        shift += VARINT_BITS


def decode_publish(command: int, data: bytes | bytearray, *, v5: bool) -> Publish:
    """A whole PUBLISH: `command` is its first header byte, `data` what follows the
    remaining length (topic, packet id, MQTT 5 properties, payload). The bridge
    subscribes with QoS 1, so a QoS 2 PUBLISH is the broker's protocol error."""
    qos = (command & QOS_MASK) >> QOS_SHIFT
    if qos > 1:
        raise MalformedPacket(f"QoS {qos} PUBLISH on a QoS 1 subscription")
    try:
        (length,) = _U16.unpack_from(data)
        pos = 2 + length
        topic = data[2:pos].decode("utf-8", "replace")
        mid = 0
        if qos:
            (mid,) = _U16.unpack_from(data, pos)
            pos += 2
        if v5:  # properties: a variable-length size, then that many bytes (skipped)
            found = read_varint(data, pos)
            if found is None:
                raise MalformedPacket("truncated PUBLISH: the properties' length")
            size, pos = found
            pos += size
    except struct.error as exc:
        raise MalformedPacket(f"truncated PUBLISH: {exc}") from exc
    if pos > len(data):
        raise MalformedPacket("PUBLISH properties run past the packet")
    fresh_retained = command & (DUP | RETAIN) == RETAIN
    return topic, bytes(data[pos:]), mid, qos, fresh_retained


def pubacks(mids: Iterable[int]) -> bytes:
    """PUBACK packets for these ids, in order, concatenated."""
    return b"".join(_PUBACK.pack(PUBACK, _PUBACK_REMAINING_LENGTH, mid) for mid in mids)


class ReadBuffer:
    """Serves small reads from `READ_SIZE` ones; `reads_left` socket reads per wake-up."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buffer = b""
        self._offset = 0
        self.reads_left = 0

    def clear(self) -> None:
        """A new connection: the old one's bytes are void."""
        self._buffer, self._offset = b"", 0

    def __len__(self) -> int:
        return len(self._buffer) - self._offset

    def whole_publish(self) -> tuple[int, bytes] | None:
        """The PUBLISH at the head of the buffer, taken from it as (first header byte, what
        follows the remaining length), when the buffer holds all of it; else None and the
        buffer unchanged: another packet, one not all here yet, or a malformed length are
        left to paho's reading."""
        buffer, start = self._buffer, self._offset
        end = len(buffer)
        if start >= end or buffer[start] & PACKET_TYPE != PUBLISH:
            return None
        found = read_varint(buffer, start + 1)
        if found is None:
            return None
        length, at = found
        if at + length > end:
            return None
        self._offset = at + length
        return buffer[start], buffer[at : at + length]

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes; BlockingIOError once this wake-up's reads are used up (the
        socket wakes the loop again), b"" at end of stream, as the wrapped read."""
        if self._offset >= len(self._buffer):
            if self.reads_left <= 0:
                raise BlockingIOError
            self.reads_left -= 1
            self._buffer, self._offset = self._read(READ_SIZE), 0
        chunk = self._buffer[self._offset : self._offset + bufsize]
        self._offset += len(chunk)
        return chunk
