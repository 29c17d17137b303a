"""Pins the aiomqtt and paho-mqtt behaviour the receive path relies on, against a real broker.

bridge/inbox.py reaches aiomqtt's private paho client for manual acks; if a
release moves it, these tests say so before any data is at risk.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.inbox import Inbox
from logagg.mosquitto import Mosquitto

pytestmark = pytest.mark.broker


def persistent_client(broker: Mosquitto, client_id: str) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
        timeout=5,
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


def test_aiomqtt_still_wraps_a_paho_client_with_manual_ack() -> None:
    """The private attribute and paho methods the inbox uses exist."""

    async def check() -> None:
        client = aiomqtt.Client("127.0.0.1", 1)
        assert isinstance(client._client, paho.Client)
        assert callable(client._client.manual_ack_set)
        assert callable(client._client.ack)

    asyncio.run(check())


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
            batch = []
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
        stale = [m for m in await inbox.take(100, timeout=0)]
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
            watcher = asyncio.create_task(inbox.watch(client))
            await asyncio.sleep(0.2)
            broker.stop()
            async with asyncio.timeout(10):
                await watcher
            assert isinstance(inbox.lost, aiomqtt.MqttError)
            assert await inbox.take(10, timeout=5) == []  # returns at once, no hang

    asyncio.run(scenario())
