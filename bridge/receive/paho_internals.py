"""Every private aiomqtt and paho-mqtt member the receive path touches, and nothing else.

aiomqtt 2.x has no manual ack and paho's pure-Python reading was the bridge's
limit, so the inbox reaches the paho client aiomqtt wraps, reads its socket and
its half-read packet, queues raw packets and replaces three of its methods on
that one instance. Each member is named once here, with the paho behaviour it
relies on; `PROVEN` says which releases that was checked against, and
tests/test_paho_internals.py fails, naming the member, when an upgrade moves one.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

# Checked against these minor releases (pyproject.toml pins the same ranges).
PROVEN = {"aiomqtt": "2.5", "paho-mqtt": "2.2"}

# aiomqtt 2.5: `Client._client` is the paho client it creates in __init__ and drives from
# the event loop (loop_read from add_reader, loop_write from add_writer, loop_misc).
AIOMQTT_PAHO_CLIENT = "_client"
# paho 2.2: the connected socket (TCP or SSL), None while disconnected; replaced on reconnect.
SOCK = "_sock"
# paho 2.2: `_sock_recv(bufsize)` is paho's only socket read; it turns SSL want-read into
# BlockingIOError and returns b"" at end of stream. Replaced by the inbox's buffered read.
SOCK_RECV = "_sock_recv"
# paho 2.2: `loop_read(max_packets)` is what aiomqtt's reader calls; it parses at most a
# few packets per call. Replaced by the inbox's loop, which empties its read buffer.
LOOP_READ = "loop_read"
# paho 2.2: `_packet_read()` reads (through _sock_recv) and handles at most one packet;
# MQTT_ERR_AGAIN when the socket has no more bytes, > 0 when the connection failed.
PACKET_READ = "_packet_read"
# paho 2.2: `_loop_rc_handle(rc)` closes the socket and calls on_disconnect for a failed rc,
# as loop_read does.
LOOP_RC_HANDLE = "_loop_rc_handle"
# paho 2.2: `_handle_publish()` is called by _packet_read with a whole PUBLISH in
# `_in_packet`. Replaced by the inbox's decoder, which skips MQTTMessage and Properties.
HANDLE_PUBLISH = "_handle_publish"
# paho 2.2: `_in_packet` is a dict; "command" holds the fixed header's first byte and
# "packet" a bytearray of everything after the remaining length.
IN_PACKET = "_in_packet"
IN_PACKET_COMMAND = "command"
IN_PACKET_BYTES = "packet"
# paho 2.2: between packets, `_in_packet["command"]` is 0 (it is reset after each one).
IN_PACKET_IDLE = 0
# paho 2.2: the keepalive clock. `_packet_read` sets `_last_bytes_received` to
# `time_func()` (time.monotonic) under `_msgtime_mutex` for each packet it reads; the
# keepalive check pings, and in time gives up on, a broker heard from too long ago.
LAST_BYTES_RECEIVED = "_last_bytes_received"
MSGTIME_MUTEX = "_msgtime_mutex"
# paho 2.2: `_packet_queue(command, packet, mid, qos)` appends raw bytes to the out queue
# and asks aiomqtt's writer to send them; `reconnect()` clears that queue.
PACKET_QUEUE = "_packet_queue"
# `_packet_queue`'s mid and qos are read only for a PUBLISH (its on_publish callback); for
# PUBACK paho's own `_send_command_with_mid` passes the packet's mid and qos 1.
PUBACK_QUEUE_MID = 0  # a batch's PUBACKs carry many ids: none of them is "the" mid
PUBACK_QUEUE_QOS = 1

PahoRecv = Callable[[int], bytes]
PahoLoopRead = Callable[..., MQTTErrorCode]
PahoHandler = Callable[[], MQTTErrorCode]


class PahoInternals:
    """The paho client under one `aiomqtt.Client`, through the members named above."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client: paho.Client = getattr(client, AIOMQTT_PAHO_CLIENT)
        # Bound before any hook is installed: paho's own methods, which the hooks call.
        self.paho_recv: PahoRecv = getattr(self.client, SOCK_RECV)
        # One packet: read (through the recv hook) and handled (a PUBLISH by the hook).
        self.read_packet: Callable[[], MQTTErrorCode] = getattr(self.client, PACKET_READ)
        # The connected socket, or None (a C-level getter: read once per packet).
        self.socket: Callable[[], socket.socket | ssl.SSLSocket | None] = partial(
            attrgetter(SOCK), self.client
        )
        self._in_packet: Callable[[], dict[str, Any]] = partial(attrgetter(IN_PACKET), self.client)
        self._packet_fields: Callable[[dict[str, Any]], tuple[int, bytearray]] = itemgetter(
            IN_PACKET_COMMAND, IN_PACKET_BYTES
        )
        # What paho's loop_read does with a failed read: close, tell on_disconnect.
        self.failed: Callable[[MQTTErrorCode], MQTTErrorCode] = getattr(self.client, LOOP_RC_HANDLE)

    def install(
        self, *, recv: PahoRecv, loop_read: PahoLoopRead, handle_publish: PahoHandler
    ) -> None:
        """Instance attributes shadow paho's methods for this client only."""
        setattr(self.client, SOCK_RECV, recv)
        setattr(self.client, LOOP_READ, loop_read)
        setattr(self.client, HANDLE_PUBLISH, handle_publish)

    def in_packet(self) -> tuple[int, bytearray]:
        """The packet paho is handling: its first header byte and the bytes after the length
        (through C-level getters: this runs once per message)."""
        return self._packet_fields(self._in_packet())

    def between_packets(self) -> bool:
        """Whether paho has no half-read packet: the next bytes start a packet."""
        return bool(self._in_packet()[IN_PACKET_COMMAND] == IN_PACKET_IDLE)

    def heard_from_broker(self) -> None:
        """What paho notes for each packet it reads, for packets read without it."""
        with getattr(self.client, MSGTIME_MUTEX):
            setattr(self.client, LAST_BYTES_RECEIVED, paho.time_func())

    def queue_pubacks(self, command: int, pubacks: bytes) -> MQTTErrorCode:
        """Raw PUBACK packets, written in one send by aiomqtt's writer."""
        rc: MQTTErrorCode = getattr(self.client, PACKET_QUEUE)(
            command, pubacks, PUBACK_QUEUE_MID, PUBACK_QUEUE_QOS
        )
        return rc
