"""Connection floods (issue #9, item 5): the real `logagg api` process keeps answering with
many open streams and idle sockets, closes bare, slowloris and idle keep-alive sockets after
their timeouts, caps streams and connections with a 503 that says why, raises its open-files
limit; repeated error lines are summarised; streams are served from one poller, gap-free
even for a stream that fell behind it. `python -m bench.floods` is the full-size run."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import api.stream
from api.stream import Frame
from bench.floods import StreamClient
from bench.procs import Child, start_api
from bridge.lograte import RepeatFilter
from bridge.query import Query
from bridge.store import StoreReader
from logagg.views import server_sent_events
from supervise.mosquitto import Mosquitto, free_port
from tests.conftest import BridgeProcess, Sidecar, make_stream, publish_raw, wait_for_stats

# The test process holds every client socket: stay well inside a 1,024 limit.
STREAMS = 200
IDLE = 100


@dataclass(frozen=True, slots=True)
class Api:
    child: Child
    url: str
    port: int

    def log(self) -> str:
        return self.child.output()


@pytest.fixture
def api_process(
    broker: Mosquitto,
    bridge_factory: Callable[..., BridgeProcess],
    store_url: str,
    tmp_path: Path,
) -> Iterator[Callable[..., Api]]:
    """Starts `logagg api` as its own process, with `LOGAGG_<NAME>` settings from keywords,
    over a bridge's store (the sidecar counts as started once /healthz says 200); every one
    is stopped after the test."""
    bridge_factory()
    started: list[Child] = []

    def start(*, open_files: int | None = None, **settings: str) -> Api:
        port = free_port()
        env = {**os.environ, **{f"LOGAGG_{k.upper()}": v for k, v in settings.items()}}
        log = tmp_path / f"api-{len(started)}.log"
        child = start_api(broker.url, store_url, port, log, env=env, open_files=open_files)
        started.append(child)
        return Api(child, f"http://127.0.0.1:{port}", port)

    yield start
    for child in started:
        child.stop()


async def _timed(client: httpx.AsyncClient, path: str, times: int) -> list[float]:
    took = []
    for _ in range(times):
        started = time.monotonic()
        assert (await client.get(path)).status_code == 200
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return took


async def _idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.broker
def test_sidecar_holds_streams_and_idle_sockets_and_refuses_one_stream_more(
    api_process: Callable[..., Api], broker: Mosquitto, store_url: str
) -> None:
    """Started with a soft limit of 256 open files (so 300 sockets need the raise to the
    hard limit), capped at 200 streams: 200 streams and 100 idle sockets held, the 201st
    stream is a 503 with a reason and Retry-After, /healthz and /stats answer in time, and
    every stream gets every event of its topic, once."""
    sidecar = api_process(open_files=256, max_streams="200")
    url, port = sidecar.url, sidecar.port
    limits = Path(f"/proc/{sidecar.child.pid}/limits").read_text()
    soft, hard = next(line for line in limits.splitlines() if "open files" in line).split()[3:5]
    assert soft == hard
    assert int(soft) > 256
    assert f"open files limit raised from 256 to {hard}" in sidecar.log()

    async def scenario() -> tuple[list[StreamClient], dict[str, int], list[float], list[float]]:
        # after=0 (the store is fresh): every event, however late a stream's first read.
        clients = [StreamClient(f"topic=t{i % 5}&after=0") for i in range(STREAMS)]
        tasks = [asyncio.create_task(c.run(port)) for c in clients]
        deadline = time.monotonic() + 30
        while any(c.status is None for c in clients):
            assert time.monotonic() < deadline, "streams did not open in 30 s"
            await asyncio.sleep(0.05)
        assert {c.status for c in clients} == {200}
        idle = [await _idle(port) for _ in range(IDLE)]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            over = await client.get("/events/stream")
            assert over.status_code == 503
            assert over.headers["retry-after"] == str(api.stream.RETRY_AFTER_S)
            assert "too many open streams (200" in over.json()["detail"]
            await asyncio.to_thread(publish_raw, broker.port, make_stream(500, 0.0))
            health = await _timed(client, "/healthz", 20)
            stats = await _timed(client, "/stats", 20)
        stored = await asyncio.to_thread(
            wait_for_stats, store_url, lambda s: s.unique_processed == 500
        )
        expected = {t: s.unique_processed for t, s in stored.topics.items()}
        deadline = time.monotonic() + 30
        while any(c.events < expected[c.topic] for c in clients):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        for _, writer in idle:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        return clients, expected, health, stats

    clients, expected, health, stats = asyncio.run(scenario())
    assert [c.events for c in clients] == [expected[c.topic] for c in clients]
    # The targets (p99 200 ms and 500 ms at 1,000 streams) are bench.floods'; a shared CI
    # machine gets slack, but a store poll per stream (the old way) fails this.
    assert max(health) < 1.0, health
    assert max(stats) < 1.0, stats
    sidecar.child.check_alive()
    assert "Too many open files" not in sidecar.log()


@pytest.mark.broker
def test_bare_slowloris_and_idle_keep_alive_sockets_are_closed(
    api_process: Callable[..., Api],
) -> None:
    """Headers must be complete within LOGAGG_HEADER_TIMEOUT_S (1 s here) of the connection
    opening, however slowly they trickle in; an idle keep-alive connection is closed after
    LOGAGG_KEEP_ALIVE_TIMEOUT_S; a slow request that completes in time is served."""
    sidecar = api_process(header_timeout_s="1", keep_alive_timeout_s="1")
    url, port = sidecar.url, sidecar.port

    async def closed_after(talk: Callable[[asyncio.StreamWriter], Awaitable[object]]) -> float:
        """Seconds until the sidecar closes the socket while `talk` writes to it."""
        started = time.monotonic()
        reader, writer = await _idle(port)
        talker = asyncio.ensure_future(talk(writer))
        try:
            while await asyncio.wait_for(reader.read(65536), 10):
                pass
        finally:
            talker.cancel()
            writer.close()
        return time.monotonic() - started

    async def silent(_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def slowloris(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for n in range(100):
            await asyncio.sleep(0.2)
            writer.write(b"X-%d: y\r\n" % n)

    async def one_request_then_idle(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.6)  # the deadline counts from the open, so most of it gone
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    async def slow_but_complete() -> bytes:
        reader, writer = await _idle(port)
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            writer.write(part)
            await asyncio.sleep(0.25)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        writer.close()
        return head

    async def scenario() -> tuple[float, float, float, bytes]:
        bare, loris, idle, served = await asyncio.gather(
            closed_after(silent),
            closed_after(slowloris),
            closed_after(one_request_then_idle),
            slow_but_complete(),
        )
        return bare, loris, idle, served

    bare, loris, idle, served = asyncio.run(scenario())
    assert 0.9 <= bare < 3, bare
    assert 0.9 <= loris < 3, loris
    assert 1.5 <= idle < 4, idle  # answered at ~0.6 s, then 1 s idle
    assert served.startswith(b"HTTP/1.1 200")
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    sidecar.child.check_alive()


@pytest.mark.broker
def test_connections_past_the_cap_get_503_and_service_resumes(
    api_process: Callable[..., Api],
) -> None:
    """Past LOGAGG_MAX_CONNECTIONS a connection is answered 503 and closed at once (no
    descriptor is held, no accept() error logged); when the flood goes, service resumes."""
    sidecar = api_process(max_connections="50")
    url, port = sidecar.url, sidecar.port

    async def scenario() -> list[bytes]:
        held = [await _idle(port) for _ in range(50)]
        await asyncio.sleep(0.2)
        extra = [await _idle(port) for _ in range(10)]
        answers = [await asyncio.wait_for(reader.read(), 5) for reader, _ in extra]
        for _, writer in held + extra:
            writer.close()
        return answers

    answers = asyncio.run(scenario())
    assert all(a.startswith(b"HTTP/1.1 503") and b"too many connections" in a for a in answers)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = sidecar.log()
    assert "at most 50 connections" in log
    assert "Too many open files" not in log


def test_repeated_error_lines_are_summarised_per_interval() -> None:
    """A library's line repeated in a loop: the first five of a window go out, then one line
    with the count; other kinds of line, and logagg's own, are not held back; the count is
    exact."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    now = [0.0]  # the filter's clock: windows end when the test says, however slow the machine
    repeats = RepeatFilter(window_s=0.3, clock=lambda: now[0])
    handler.addFilter(repeats)
    log = logging.getLogger("test.floods.repeat")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    own = logging.getLogger("logagg.test")
    own.addHandler(handler)
    own.propagate = False
    try:
        for _ in range(10_000):
            log.error("socket.accept() out of system resource")
        log.warning("something else %d", 1)
        log.info("info is never held back")
        now[0] += 0.35
        log.error("socket.accept() out of system resource")  # a new window: summary first
        for _ in range(3):
            log.error("socket.accept() out of system resource")
        repeats.flush()  # nothing held back: no summary
        for _ in range(10):  # logagg's own lines limit themselves
            logging.getLogger("logagg.test").error("store unavailable")
    finally:
        log.removeHandler(handler)
        own.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    lines = out.getvalue().splitlines()
    accept = "ERROR test.floods.repeat: socket.accept() out of system resource"
    assert lines == [
        *[accept] * 5,
        "WARNING test.floods.repeat: something else 1",
        "INFO test.floods.repeat: info is never held back",
        f"{accept} … repeated 9995 more times within 0.3 s (not logged one by one)",
        *[accept] * 4,
        *["ERROR logagg.test: store unavailable"] * 10,
    ]


@pytest.mark.broker
def test_streams_behind_the_ring_catch_up_from_the_store_gap_free(
    broker: Mosquitto,
    bridge_factory: Callable[..., BridgeProcess],
    sidecar: Sidecar,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a ring of 20 events or 3,000 bytes and pages of 7, streams that start far behind
    (after=0, a topic, an old Last-Event-ID) read the store from their own cursor, then join
    the shared poller's ring; each receives exactly the stored events it asked for, in order."""
    monkeypatch.setattr(api.stream, "RING", 20)
    monkeypatch.setattr(api.stream, "PAGE", 7)
    monkeypatch.setattr(api.stream, "CHUNK", 5)
    monkeypatch.setattr(api.stream, "RING_BYTES", 3000)
    bridge_factory()
    client = sidecar(broker.url)
    first = make_stream(200, 0.0, seed=3)
    publish_raw(broker.port, first)
    wait_for_stats(store_url, lambda s: s.unique_processed == 200)
    stored = client.get("/events", params={"limit": 1000}).json()["events"]

    def read(count: int, headers: dict[str, str] | None = None, **params: str | int) -> list[int]:
        with client.stream(
            "GET", "/events/stream", params=params, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            events = (i for i, d in server_sent_events(response.iter_lines()) if d)
            return [int(next(events) or 0) for _ in range(count)]

    seqs = [e["seq"] for e in stored]
    assert read(200, after=0) == seqs
    t1 = [e["seq"] for e in stored if e["topic"] == "t1"]
    assert read(len(t1), topic="t1", after=0) == t1
    assert read(150, headers={"Last-Event-ID": str(seqs[49])}) == seqs[50:]
    # Live: a stream opened now gets the next 300 from the ring, with the poller trimming it
    # many times meanwhile.
    with client.stream("GET", "/events/stream", params={"last": 0}, timeout=30) as response:
        events = (i for i, d in server_sent_events(response.iter_lines()) if d)
        publish_raw(broker.port, make_stream(300, 0.0, seed=4))
        live = [int(next(events) or 0) for _ in range(300)]
    wait_for_stats(store_url, lambda s: s.unique_processed == 500)
    after = client.get("/events", params={"after": seqs[-1], "limit": 1000}).json()["events"]
    assert live == [e["seq"] for e in after]
    assert json.loads(client.get("/stats").content)["unique_processed"] == 500


@pytest.mark.broker
def test_open_streams_share_one_store_poller(
    broker: Mosquitto,
    bridge_factory: Callable[..., BridgeProcess],
    sidecar: Sidecar,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 open streams cost the store one poll per interval, not one each: over ~1.5 s of
    waiting, the store is read ~8 times (every 0.2 s), all by the shared poller; then an
    event reaches every stream."""
    reads: list[str] = []
    polled_by_hub, searched_by_stream = api.stream.read_frames, api.stream.search_frames

    def counted(store: StoreReader, *, after: int, limit: int, max_bytes: int) -> list[Frame]:
        reads.append("poller")
        return polled_by_hub(store, after=after, limit=limit, max_bytes=max_bytes)

    def searched(store: StoreReader, query: Query, *, after: int, max_bytes: int) -> list[Frame]:
        reads.append("stream")
        return searched_by_stream(store, query, after=after, max_bytes=max_bytes)

    monkeypatch.setattr(api.stream, "read_frames", counted)
    monkeypatch.setattr(api.stream, "search_frames", searched)
    bridge_factory()
    client = sidecar(broker.url)
    publish_raw(broker.port, make_stream(5, 0.0, seed=8))
    wait_for_stats(store_url, lambda s: s.unique_processed == 5)
    port = int(str(client.base_url).rsplit(":", 1)[1])

    async def scenario() -> list[StreamClient]:
        clients = [StreamClient("last=0") for _ in range(50)]
        tasks = [asyncio.create_task(c.run(port)) for c in clients]
        await asyncio.sleep(0.5)  # all open and waiting
        reads.clear()
        await asyncio.sleep(1.5)
        polled = len(reads)
        await asyncio.to_thread(publish_raw, broker.port, make_stream(1, 0.0, seed=9))
        deadline = time.monotonic() + 10
        while any(c.events < 1 for c in clients):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert 3 <= polled <= 12, reads
        return clients

    clients = asyncio.run(scenario())
    assert set(reads) == {"poller"}  # only the poller's reads (all topics), none per stream
    assert [c.events for c in clients] == [1] * 50
