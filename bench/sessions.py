"""Persistent MQTT sessions, registered before a stream is published so a backlog waits for them.

The same session settings as the bridge's: MQTT 5, clean start off, a session
expiry, so the backlog the baseline drains is queued exactly like the bridge's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.stream import PREFIX

SESSION_EXPIRY_S = 3600
TOPIC_FILTER = f"{PREFIX}#"


def session_options() -> dict[str, object]:
    """`aiomqtt.Client` keyword arguments for a persistent MQTT 5 session."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    return {
        "protocol": aiomqtt.ProtocolVersion.V5,
        "clean_start": False,
        "properties": properties,
        "timeout": 10,
    }


async def _register(port: int, client_id: str, topic_filter: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        **session_options(),  # type: ignore[arg-type]
    ) as client:
        await client.subscribe(topic_filter, qos=1)


def shared_filter(group: str) -> str:
    """The filter a bridge started with `--group GROUP` subscribes to."""
    return f"$share/{group}/{TOPIC_FILTER}"


def register(port: int, client_ids: Iterable[str], topic_filter: str = TOPIC_FILTER) -> None:
    """Connect, subscribe to `topic_filter` (the bridge's without `--group`) with QoS 1,
    disconnect: the broker then queues everything published for each id until it returns
    (for a shared filter, its round-robin share)."""

    async def all_of_them() -> None:
        for client_id in client_ids:
            await _register(port, client_id, topic_filter)

    asyncio.run(all_of_them())
