"""Pins the aiomqtt and paho-mqtt behaviour the receive path relies on, against a real broker.

bridge/receive/inbox.py reads from aiomqtt's private paho client and acknowledges itself,
replacing three of that client's methods (see bridge/receive/paho_internals.py); if a release
changes how they behave, these tests say so before any data is at risk
(tests/test_paho_internals.py checks the members are still there).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.receive.acks import Acks
from bridge.receive.inbox import Inbox, Received
from bridge.receive.wire import PUBACK, READ_SIZE, ReadBuffer, decode_publish
from bridge.session import session_options
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import publish_raw

pytestmark = pytest.mark.broker


def persistent_client(
    broker: Mosquitto,
    client_id: str,
    *,
    receive_maximum: int | None = None,
    port: int | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port or broker.port,
        identifier=client_id,
        tls_context=tls_context,
        timeout=5,
        **session_options("5", session_expiry_s=3600, receive_maximum=receive_maximum),
    )


async def publish(broker: Mosquitto, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as pub:
        for body in payloads:
            await pub.publish("logs/t", body, qos=1)


async def receive(inbox: Inbox, want: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(10):
        while len(got) < want:
            got += [m.body for m in await inbox.take(100, timeout=0.5)]
    return got


async def most_held_while_publishing(
    broker: Mosquitto,
    client: aiomqtt.Client,
    inbox: Inbox,
    bodies: list[bytes],
    held: Callable[[Inbox], int],
    at_least: int = 0,
) -> int:
    """Subscribe, start consuming (so pausing may start), publish `bodies` and return the
    most the inbox held (`held`) while the broker took them, and until it held `at_least`
    (the broker may still be sending after it acknowledged the last)."""
    await client.subscribe("logs/#", qos=1)
    assert await inbox.take(1, timeout=0) == []
    publishing = asyncio.create_task(
        asyncio.to_thread(publish_raw, broker.port, [("logs/t", b) for b in bodies])
    )
    most = 0
    async with asyncio.timeout(30):
        while not publishing.done() or most < at_least:
            most = max(most, held(inbox))
            await asyncio.sleep(0.01)
    await publishing
    return most


async def take_all(
    inbox: Inbox, count: int, limit: int, max_bytes: int | None = None
) -> list[list[Received]]:
    """Take and ack batches until `count` messages came."""
    batches: list[list[Received]] = []
    async with asyncio.timeout(30):
        while sum(map(len, batches)) < count:
            batch = await inbox.take(limit, timeout=1, max_bytes=max_bytes)
            inbox.ack(batch)
            batches.append(batch)
    return batches


def test_unacked_message_is_redelivered_after_reconnect(broker: Mosquitto) -> None:
    """Manual ack really withholds PUBACK: a message not acked comes back on the session."""

    async def scenario() -> None:
        client = persistent_client(broker, "pin-redeliver")
        inbox = Inbox(client)
        inbox.connecting()
        async with client:
            await client.subscribe("logs/#", qos=1)
            await publish(broker, b"one", b"two")
            assert await receive(inbox, 2) == [b"one", b"two"]
            # Crash-like: drop the socket without acknowledging anything.
        inbox.connecting()
        async with client:
            again = await receive(inbox, 2)
            assert again == [b"one", b"two"]
            assert inbox.ack(await inbox.take(100, timeout=0)) == 0  # nothing left over
        # The redelivered copies were never acked either; ack them now, then nothing returns.
        inbox.connecting()
        async with client:
            batch: list[Received] = []
            async with asyncio.timeout(10):
                while len(batch) < 2:
                    batch += await inbox.take(100, timeout=0.5)
            assert inbox.ack(batch) == 2
            await asyncio.sleep(0.3)  # let the PUBACKs leave before disconnecting
        inbox.connecting()
        async with client:
            assert await inbox.take(100, timeout=1.0) == []

    asyncio.run(scenario())


def test_ack_skips_messages_from_an_earlier_connection(broker: Mosquitto) -> None:
    """A message id from a dropped connection is void: acking it could ack another message."""

    async def scenario() -> None:
        client = persistent_client(broker, "pin-generation")
        inbox = Inbox(client)
        inbox.connecting()
        async with client:
            await client.subscribe("logs/#", qos=1)
            await publish(broker, b"old")
            await receive(inbox, 1)
        stale = list(await inbox.take(100, timeout=0))
        inbox.connecting()
        async with client:
            (redelivered,) = await inbox.take(100, timeout=5)
            assert redelivered.body == b"old"
            assert inbox.ack(stale) == 0
            assert inbox.ack([redelivered]) == 1

    asyncio.run(scenario())


def test_watch_notices_broker_going_away(broker: Mosquitto) -> None:
    """aiomqtt's message iterator raises on disconnect even though it never yields to us."""

    async def scenario() -> None:
        client = persistent_client(broker, "pin-watch")
        inbox = Inbox(client)
        inbox.connecting()
        async with client:
            await client.subscribe("logs/#", qos=1)
            watcher = asyncio.create_task(inbox.watch(client))
            await publish(broker, b"held")
            (held,) = await inbox.take(10, timeout=5)
            broker.stop()
            async with asyncio.timeout(10):
                await watcher
            assert isinstance(inbox.lost, aiomqtt.MqttError)
            assert await inbox.take(10, timeout=5) == []  # returns at once, no hang
            assert inbox.ack([held]) == 0  # its connection is gone: no PUBACK, none counted

    asyncio.run(scenario())


def test_coalesced_pubacks_are_the_bytes_paho_sends() -> None:
    """A batch's PUBACKs are queued as one write of the bytes paho's ack() queues one by one;
    none once its connection is dropped, and none counted when queueing fails."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    queued: list[tuple[int, bytes]] = []

    def capture(
        command: int,
        packet: bytes | bytearray,
        mid: int = 0,
        qos: int = 0,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        queued.append((command, bytes(packet)))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign]
    client.manual_ack_set(True)
    client.ack(0x1234, 1)
    client.ack(7, 1)
    paho_bytes = b"".join(packet for _, packet in queued)
    queued.clear()

    acks = Acks(capture)
    connection = acks.connecting()
    batch = [Received("logs/t", b"", mid, 1, connection) for mid in (0x1234, 7)]
    assert acks.send([*batch, Received("logs/t", b"", 0, 0, connection)]) == 2
    assert queued == [(PUBACK, paho_bytes)]

    queued.clear()
    connection.drop()
    assert acks.send(batch) == 0
    assert queued == []

    failing = Acks(lambda command, packet: MQTTErrorCode.MQTT_ERR_NO_CONN)
    assert failing.send([m._replace(connection=failing.connecting()) for m in batch]) == 0


def _publish_packet(topic: bytes, mid: int, body: bytes) -> bytes:
    """A QoS 1 MQTT 5 PUBLISH (no properties), as a broker sends it."""
    rest = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + body
    length, size = b"", len(rest)
    while True:
        byte, size = size % 128, size // 128
        length += bytes([byte | (128 if size else 0)])
        if not size:
            break
    return bytes([0x32]) + length + rest


def test_whole_publish_takes_only_complete_publish_packets_from_the_buffer() -> None:
    """The inbox decodes a PUBLISH itself only when all of it is in the buffer; anything
    else (another packet, a PUBLISH cut by the buffer's end) stays there for paho."""
    big = _publish_packet(b"logs/t", 2, b"y" * 300)  # a 2-byte remaining length
    chunks = [_publish_packet(b"logs/t", 1, b"x"), big, b"\xd0\x00", big[:4]]
    buffer = ReadBuffer(lambda size: b"".join(chunks))
    buffer.reads_left = 1
    assert buffer.whole_publish() is None  # nothing read yet: paho reads first
    assert buffer.recv(1) == b"\x32"  # paho takes a byte: the buffer is filled
    buffer.clear()
    buffer.reads_left = 1
    buffer.recv(0)
    first = buffer.whole_publish()
    assert first is not None
    assert decode_publish(*first, v5=True) == ("logs/t", b"x", 1, 1, False)
    second = buffer.whole_publish()
    assert second is not None
    assert decode_publish(*second, v5=True) == ("logs/t", b"y" * 300, 2, 1, False)
    assert buffer.whole_publish() is None  # a PINGRESP: paho's
    assert buffer.recv(2) == b"\xd0\x00"
    assert buffer.whole_publish() is None  # cut short: paho reads the rest when it comes
    assert len(buffer) == 4
    malformed = ReadBuffer(lambda size: b"\x30\xff\xff\xff\xff\x01")
    malformed.reads_left = 1
    malformed.recv(0)
    assert malformed.whole_publish() is None  # a 5-byte length: paho refuses it


def test_inbox_reads_properties_qos0_and_payloads_larger_than_its_buffer(
    broker: Mosquitto,
) -> None:
    """MQTT 5 properties are skipped, not mistaken for payload; big bodies arrive whole."""
    big = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)  # several buffer fills
    sent = [(b"small", 1), (big, 1), (b"qos zero", 0), (b"last", 1)]

    async def scenario() -> None:
        client = persistent_client(broker, "pin-fast-path")
        inbox = Inbox(client)
        inbox.connecting()
        async with client:
            await client.subscribe("logs/#", qos=1)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("k", "v" * 300)]
            props.ContentType = "application/json"
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
            ) as pub:
                for body, qos in sent:
                    await pub.publish("logs/t", body, qos=qos, properties=props)
            got: list[Received] = []
            async with asyncio.timeout(10):
                while len(got) < len(sent):
                    got += await inbox.take(100, timeout=0.5)
            assert [(m.body, m.qos, m.topic) for m in got] == [
                (body, qos, "logs/t") for body, qos in sent
            ]
            assert inbox.ack(got) == 3  # QoS 0 needs no PUBACK

    asyncio.run(scenario())


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: enough for a TLS listener in a test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = folder / "server.crt", folder / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_inbox_stops_reading_while_full(tmp_path: Path, tls: bool) -> None:
    """With the broker sending far past max_waiting, the inbox holds about max_waiting
    (plus one read's worth) until taken from, then yields everything in order. Over TLS
    too, where decrypted bytes wait inside the SSL object, not in the socket."""
    count, max_waiting = 20_000, 100
    bodies = [f"{i:06d}".encode() + b"x" * 200 for i in range(count)]
    one_read = 4 * READ_SIZE // len(bodies[0])
    crt, key = _self_signed(tmp_path)
    tls_port = free_port()
    broker = Mosquitto(
        free_port(),
        tmp_path / "broker",
        extra_config=f"listener {tls_port} 127.0.0.1\ncertfile {crt}\nkeyfile {key}",
    )

    async def scenario() -> None:
        # A receive maximum above the stream: the broker sends it all as fast as it can.
        client = persistent_client(
            broker,
            "pin-full",
            receive_maximum=65_000,
            port=tls_port if tls else None,
            tls_context=ssl.create_default_context(cafile=str(crt)) if tls else None,
        )
        inbox = Inbox(client, max_waiting=max_waiting)
        inbox.connecting()
        async with client:
            most = await most_held_while_publishing(broker, client, inbox, bodies, len)
            assert most <= max_waiting + one_read < count
            batches = await take_all(inbox, count, 50)
        assert [m.body for batch in batches for m in batch] == bodies

    broker.start()
    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_inbox_takes_and_holds_bodies_up_to_a_byte_budget(broker: Mosquitto) -> None:
    """Batches are cut by the bytes of their bodies (a larger message comes alone), and
    reading pauses while `max_waiting_bytes` wait, whatever the broker's window allows."""
    body = b"x" * 100_000
    bodies = [f"{i:03d}".encode() + body for i in range(40)] + [b"y" * 500_000]
    budget = 600_000

    async def scenario() -> None:
        client = persistent_client(broker, "pin-bytes", receive_maximum=65_000)
        inbox = Inbox(client, max_waiting=10_000, max_waiting_bytes=budget)
        inbox.connecting()
        async with client:
            most = await most_held_while_publishing(
                broker, client, inbox, bodies, lambda held: held.waiting_bytes, budget
            )
            # Paused at the budget, give or take the packets of one wake-up's reads.
            assert budget <= most <= budget + 4 * READ_SIZE + len(bodies[0])
            batches = await take_all(inbox, len(bodies), 1000, max_bytes=250_000)
        for batch in batches:
            assert len(batch) == 1 or sum(len(m.body) for m in batch) <= 250_000
        got = [m for batch in batches for m in batch]
        assert [m.body for m in got] == bodies

    asyncio.run(scenario())


def test_gather_waits_for_a_full_batch_or_the_commit() -> None:
    """While a batch commits, the consumer waits for a full batch to parse, or for the
    commit to end, whichever comes first; no message is taken meanwhile."""

    async def scenario() -> None:
        inbox = Inbox(aiomqtt.Client("127.0.0.1", free_port()), max_waiting=100)
        inbox.connecting()
        packet = _publish_packet(b"logs/t", 1, b"{}")[2:]  # after the 1-byte length
        commit = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(inbox.gather(3, commit))
        for _ in range(2):
            inbox._hold(0x32, packet)
            await asyncio.sleep(0.01)
            assert not waiting.done()
        inbox._hold(0x32, packet)
        await asyncio.wait_for(waiting, 1)  # a full batch
        assert len(inbox) == 3
        waiting = asyncio.create_task(inbox.gather(10, commit))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        commit.set_result(True)
        await asyncio.wait_for(waiting, 1)  # the commit's end
        assert len(inbox) == 3

    asyncio.run(scenario())
