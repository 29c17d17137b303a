"""The sidecar's own MQTT link (api/mqtt_link.py): against the real broker, and against a
scripted peer on a real socket for what Mosquitto never does on cue (a refusal code, PUBACKs
split across reads, a PUBACK for an id not in flight, a drop mid-batch)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec

import aiomqtt
import pytest

from api.mqtt_link import Link, LinkError, Tally
from supervise.mosquitto import Mosquitto

P = ParamSpec("P")
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CONNACK_OK = b"\x20\x02\x00\x00"


def run(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """The test, run in its own event loop (pytest sees its fixtures through `wraps`)."""

    @functools.wraps(test)
    def sync(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


async def open_link(port: int, window: int = 10) -> Link:
    return await Link.open(
        "127.0.0.1",
        port,
        client_id="test-link",
        username=None,
        password=None,
        tls=None,
        window=window,
    )


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """A peer on a free port that plays `script` with whoever connects; yields the port.
    The script ends when the link hangs up; on leaving, whatever still plays is stopped."""
    playing: set[asyncio.Task[None]] = set()

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        playing.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(play, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in playing:
            task.cancel()
        await asyncio.gather(*playing, return_exceptions=True)
        await server.wait_closed()


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind = (await reader.readexactly(1))[0]
    size, shift = 0, 0
    while True:
        digit = (await reader.readexactly(1))[0]
        size |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    return kind, await reader.readexactly(size)


def packet_id(publish: bytes) -> bytes:
    topic_length = int.from_bytes(publish[:2], "big")
    return publish[2 + topic_length : 4 + topic_length]


@pytest.mark.broker
@run
async def test_messages_arrive_whole_and_in_order_through_a_small_window(
    broker: Mosquitto,
) -> None:
    """A batch 10 times the window, with payloads whose remaining length takes 1, 2 and 3
    bytes, reaches a subscriber unchanged and in order; every message is counted."""
    sizes = [0, 100, 127, 128, 16_383, 16_384, 200_000] * 3
    messages = [(f"t/{i}", bytes([65 + i % 26]) * size) for i, size in enumerate(sizes)]
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=10) as sub:
        await sub.subscribe("t/#", qos=1)
        link = await open_link(broker.port, window=2)
        tally = Tally(len(messages))
        await asyncio.wait_for(link.publish(messages, tally), 20)
        assert tally.acked == len(messages)
        received = []
        async with asyncio.timeout(20):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                received.append((message.topic.value, message.payload))
                if len(received) == len(messages):
                    break
        await link.close()
    assert received == messages


@run
async def test_a_refused_connect_says_why() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind, body = await read_packet(reader)
        assert (kind, body[:7]) == (0x10, b"\x00\x04MQTT\x04")
        writer.write(b"\x20\x02\x00\x05")
        await writer.drain()

    async with scripted(refuse) as port:
        with pytest.raises(LinkError, match="not authorised"):
            await asyncio.wait_for(open_link(port), 10)


@run
async def test_pubacks_split_across_reads_are_counted_and_free_their_ids() -> None:
    """PUBACKs arriving a byte at a time are each counted once; with a window of 2, a batch
    of 5 goes out as they free ids."""
    seen: list[bytes] = []

    async def ack_bytewise(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_OK)
        while True:
            kind, body = await read_packet(reader)
            assert kind == 0x32
            seen.append(body)
            for byte in b"\x40\x02" + packet_id(body):
                writer.write(bytes((byte,)))
                await writer.drain()
                await asyncio.sleep(0)

    async with scripted(ack_bytewise) as port:
        link = await open_link(port, window=2)
        tally = Tally(5)
        messages = [(f"t/{i}", b"x") for i in range(5)]
        await asyncio.wait_for(link.publish(messages, tally), 10)
        assert tally.acked == 5
        assert sorted({packet_id(b) for b in seen}) == [b"\x00\x01", b"\x00\x02"]
        await link.close()


@run
async def test_a_puback_for_an_id_not_in_flight_drops_the_connection() -> None:
    async def stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_OK)
        await read_packet(reader)
        writer.write(b"\x40\x02\x12\x34")
        await writer.drain()
        await reader.read()

    async with scripted(stray) as port:
        link = await open_link(port)
        tally = Tally(1)
        with pytest.raises(LinkError, match="packet id 4660, which is not in flight"):
            await asyncio.wait_for(link.publish([("t", b"x")], tally), 10)
        assert tally.acked == 0
        assert not link.alive


@run
async def test_a_drop_mid_batch_fails_it_with_the_count_acknowledged() -> None:
    async def ack_three_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_packet(reader)
        writer.write(CONNACK_OK)
        for _ in range(3):
            _, body = await read_packet(reader)
            writer.write(b"\x40\x02" + packet_id(body))
        await writer.drain()
        writer.close()

    async with scripted(ack_three_then_drop) as port:
        link = await open_link(port)
        tally = Tally(10)
        with pytest.raises(LinkError, match="connection"):
            await asyncio.wait_for(link.publish([("t", b"x")] * 10, tally), 10)
        assert tally.acked == 3


@run
async def test_ids_of_a_request_that_gave_up_are_freed_by_their_late_pubacks() -> None:
    """A request past its deadline counts nothing more; its ids come back when the broker
    acknowledges them, and the next request uses them."""
    release = asyncio.Event()

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_OK)
        held = [packet_id((await read_packet(reader))[1]) for _ in range(2)]
        await release.wait()
        for ident in held:
            writer.write(b"\x40\x02" + ident)
        while True:
            _, body = await read_packet(reader)
            writer.write(b"\x40\x02" + packet_id(body))

    async with scripted(late) as port:
        link = await open_link(port, window=2)
        first = Tally(2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(link.publish([("t", b"a")] * 2, first), 0.3)
        second = Tally(2)
        sending = asyncio.ensure_future(link.publish([("t", b"b")] * 2, second))
        await asyncio.sleep(0.1)
        assert not sending.done(), "no id is free until the late PUBACKs come"
        release.set()
        await asyncio.wait_for(sending, 10)
        assert (first.acked, second.acked) == (0, 2)
        await link.close()
