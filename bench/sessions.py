"""Persistent MQTT sessions, registered before a stream is published so a backlog waits for them.

The same session settings as the bridge's (`bridge.session`): MQTT 5, clean start off, a
session expiry, so the backlog the baseline drains is queued exactly like the bridge's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiomqtt

from bench.stream import PREFIX
from bridge.session import SessionOptions
from bridge.session import session_options as bridge_session

SESSION_EXPIRY_S = 3600
CONNECT_TIMEOUT_S = 10
TOPIC_FILTER = f"{PREFIX}#"


def session_options() -> SessionOptions:
    """The bridge's persistent MQTT 5 session, with the benchmark's expiry."""
    return bridge_session("5", session_expiry_s=SESSION_EXPIRY_S)


async def _register(port: int, client_id: str, topic_filter: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        timeout=CONNECT_TIMEOUT_S,
        **session_options(),
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
