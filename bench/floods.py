"""`python -m bench.floods`: the sidecar under a connection flood, and one stream's rate.

Flood: the real broker, bridge and `logagg api` (started with a 1,024 soft open-files limit,
as a login shell gives; `--open-files`), then `--streams` open `/events/stream` clients
(spread over the stream's topics, from the fresh store's start) and `--idle` bare sockets that send
nothing and reconnect whenever the sidecar closes them, while the publisher sends `--rate`
events/s for `--seconds` and two probes time `GET /healthz` and `GET /stats` (10 a second
each). Every stream must receive every event of its topic (counted against the store).

Single stream: a store prefilled with `--stream-events` events, one client streaming all
of them from `after=0` (the store read, the encoding and the socket), events/s from first
byte to last event. Live: one stream following the bridge as it drains `--stream-events`
queued for its session; the rates stored and streamed, and how long after the store held the
last event the stream delivered it.

`--sidecar-from DIR` runs another checkout's sidecar for a baseline in the same conditions
(the code before this change: `git archive 3be7960 | tar -x -C DIR`). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from bench.prefill import prefill
from bench.probe import cpu_seconds, peak_rss_mb
from bench.procs import BenchError, Child, start_api, start_bridge, start_flood
from bench.scenarios import _broker, _percentile
from bench.sessions import register
from bench.stream import TOPICS, StreamSpec
from bridge.store import open_reader, open_writer, parse_store_url
from supervise.mosquitto import free_port

SHELL_OPEN_FILES = 1024
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 10.0
SLOW_S = 0.1
MARK = b"\ndata: "


def _raise_own_open_files() -> None:
    """This process holds every client socket: it needs more than a shell's 1,024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(slots=True)
class StreamClient:
    """One `/events/stream` reader on a raw socket, counting the events it receives."""

    query: str
    status: int | None = None
    events: int = 0
    first_at: float | None = None
    last_at: float | None = None

    @property
    def topic(self) -> str:
        return dict(parse_qsl(self.query)).get("topic", "")

    async def run(self, port: int, until: int | None = None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            writer.write(
                f"GET /events/stream?{self.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                return
            tail = b""
            while until is None or self.events < until:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    return
                seen = tail + chunk
                found = seen.count(MARK)
                if found:
                    self.events += found
                    self.last_at = time.monotonic()
                    if self.first_at is None:
                        self.first_at = self.last_at
                tail = seen[-(len(MARK) - 1) :]
        finally:
            writer.close()


async def _idle_socket(port: int, closed: list[int]) -> None:
    """A socket that sends nothing; when the sidecar closes it, another takes its place."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        with suppress(OSError):
            await reader.read()
        writer.close()
        closed[0] += 1


async def _probe(client: httpx.AsyncClient, path: str, stop: asyncio.Event) -> dict[str, Any]:
    timings: list[float] = []
    slow: list[float] = []
    failures: dict[str, int] = {}
    began = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await client.get(path)
            if response.status_code >= 500 and path != "/healthz":
                failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
        except httpx.HTTPError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        timings.append(time.monotonic() - started)
        if timings[-1] > SLOW_S:
            slow.append(round(started - began, 1))
        await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))
    ordered = sorted(timings)
    return {
        "requests": len(ordered),
        "failures": failures,
        "p50_ms": _percentile(ordered, 0.5),
        "p99_ms": _percentile(ordered, 0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        f"slower_than_{SLOW_S * 1000:g}_ms_at_s": slow,
    }


async def _flood_clients(
    port: int, streams: int, idle: int, publish: Any, seconds: float, expect: Any
) -> dict[str, Any]:
    # after=0 on a fresh store: every event, however late a stream's first read comes.
    clients = [StreamClient(f"topic={TOPICS[i % len(TOPICS)]}&after=0") for i in range(streams)]
    tasks = [asyncio.create_task(c.run(port)) for c in clients]
    deadline = time.monotonic() + 60
    while sum(c.status is not None for c in clients) < streams:
        if time.monotonic() > deadline or any(t.done() and t.exception() for t in tasks):
            break
        await asyncio.sleep(0.1)
    opened = sum(c.status == 200 for c in clients)
    closed = [0]
    idlers = [asyncio.create_task(_idle_socket(port, closed)) for _ in range(idle)]
    await asyncio.sleep(1.0)
    over = StreamClient("last=0")
    with suppress(TimeoutError, OSError):  # no answer: status stays None
        await asyncio.wait_for(over.run(port, until=0), PROBE_TIMEOUT_S)
    stop = asyncio.Event()
    base = f"http://127.0.0.1:{port}"
    async with (
        httpx.AsyncClient(base_url=base, timeout=PROBE_TIMEOUT_S) as health_client,
        httpx.AsyncClient(base_url=base, timeout=PROBE_TIMEOUT_S) as stats_client,
    ):
        probes = [
            asyncio.create_task(_probe(health_client, "/healthz", stop)),
            asyncio.create_task(_probe(stats_client, "/stats", stop)),
        ]
        published = await asyncio.to_thread(publish)
        expected = await asyncio.to_thread(expect)
        drained = time.monotonic() + 60
        while time.monotonic() < drained and any(  # noqa: ASYNC110 (counts, not an event)
            c.events < expected.get(c.topic, 0) for c in clients if c.status == 200
        ):
            await asyncio.sleep(0.2)
        stop.set()
        healthz, stats = await asyncio.gather(*probes)
    for task in [*tasks, *idlers]:
        task.cancel()
    await asyncio.gather(*tasks, *idlers, return_exceptions=True)
    complete = sum(c.events == expected.get(c.topic, 0) for c in clients if c.status == 200)
    return {
        "streams_open": opened,
        "streams_complete": complete,
        "stream_over_cap_status": over.status,
        "events_delivered": sum(c.events for c in clients),
        "idle_sockets": idle,
        "idle_closed_by_sidecar": closed[0],
        "published": published,
        "healthz": healthz,
        "stats": stats,
        "seconds": seconds,
    }


def flood(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    spec = StreamSpec(round(args.rate * args.seconds), 0.0, 100, seed=7)
    store_url = f"sqlite:///{work / 'flood.db'}"
    api_log = work / "api.log"
    with ExitStack() as stack:
        mosq = stack.enter_context(_broker(work / "broker"))
        bridge = stack.enter_context(
            start_bridge(mosq.url, store_url, "bench-floods", "normal", work / "bridge.log")
        )
        port = free_port()
        api = stack.enter_context(
            start_api(mosq.url, store_url, port, api_log, env=env, open_files=args.open_files)
        )

        def publish() -> dict[str, Any]:
            if spec.count == 0:  # streams and sockets held open, nothing to send
                time.sleep(args.seconds)
                return {"sent": 0}
            with start_flood(mosq.port, spec, work / "publisher.log", rate=args.rate) as pub:
                return pub.result(args.seconds * 2 + 60)

        def expect() -> dict[str, int]:
            store = open_reader(parse_store_url(store_url))
            try:
                deadline = time.monotonic() + 60
                while (stats := store.stats()).unique_processed < min(spec.count, spec.distinct):
                    bridge.check_alive()
                    if time.monotonic() > deadline:
                        stored = stats.unique_processed
                        raise BenchError(f"bridge stored {stored} of {spec.distinct}")
                    time.sleep(0.1)
                return {t: s.unique_processed for t, s in stats.topics.items()}
            finally:
                store.close()

        cpu, started = cpu_seconds(api.pid), time.monotonic()
        result = asyncio.run(
            _flood_clients(port, args.streams, args.idle, publish, args.seconds, expect)
        )
        busy = (cpu_seconds(api.pid) - cpu) / (time.monotonic() - started)
        result["sidecar_cpu_percent"] = round(busy * 100, 1)
        result["sidecar_peak_rss_mb"] = peak_rss_mb(api.pid)
        api.check_alive()
    log = api_log.read_text(errors="replace")
    result["sidecar_log_lines"] = log.count("\n")
    result["too_many_open_files_lines"] = log.count("Too many open files")
    said = [line for line in log.splitlines() if "open files limit" in line]
    result["sidecar_open_files_log"] = said[:1]
    return result


def single_stream(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    path = work / "stream.db"
    prefill(path, args.stream_events, payload_bytes=100)
    with ExitStack() as stack:
        mosq = stack.enter_context(_broker(work / "broker-stream"))
        port = free_port()
        api: Child = stack.enter_context(
            start_api(mosq.url, f"sqlite:///{path}", port, work / "api-stream.log", env=env)
        )
        client = StreamClient("after=0")
        started = time.monotonic()
        asyncio.run(asyncio.wait_for(client.run(port, until=args.stream_events), 600))
        api.check_alive()
    if client.events < args.stream_events or client.first_at is None or client.last_at is None:
        raise BenchError(f"single stream: {client.events} of {args.stream_events} events")
    seconds = client.last_at - client.first_at
    return {
        "events": client.events,
        "seconds": round(seconds, 2),
        "first_event_after_s": round(client.first_at - started, 2),
        "events_per_s": round(client.events / seconds),
    }


def live_stream(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """One stream following the bridge as it drains a backlog of `--stream-events` (queued in
    the broker for its session first, so the bridge stores at full speed)."""
    spec = StreamSpec(args.stream_events, 0.0, 100, seed=11)
    store_url = f"sqlite:///{work / 'live.db'}"
    open_writer(parse_store_url(store_url)).close()  # the sidecar starts once its store is readable
    client = StreamClient("after=0")
    with ExitStack() as stack:
        mosq = stack.enter_context(_broker(work / "broker-live"))
        register(mosq.port, ["bench-live"])
        with start_flood(mosq.port, spec, work / "publisher-live.log") as pub:
            pub.result(600)
        port = free_port()
        stack.enter_context(start_api(mosq.url, store_url, port, work / "api-live.log", env=env))

        def stored_all(bridge: Child) -> float:
            store = open_reader(parse_store_url(store_url))
            try:
                deadline = time.monotonic() + 600
                while store.stats().unique_processed < spec.distinct:
                    bridge.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError("live: the bridge did not store everything in 600 s")
                    time.sleep(0.01)
                return time.monotonic()
            finally:
                store.close()

        async def run() -> tuple[float, float]:
            reading = asyncio.create_task(client.run(port, until=spec.distinct))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            bridge = stack.enter_context(
                start_bridge(mosq.url, store_url, "bench-live", "normal", work / "live.log")
            )
            stored_at = await asyncio.to_thread(stored_all, bridge)
            await asyncio.wait_for(reading, 600)
            return started, stored_at

        started, stored_at = asyncio.run(run())
    if client.events < spec.distinct or client.first_at is None or client.last_at is None:
        raise BenchError(f"live stream: {client.events} of {spec.distinct} events")
    return {
        "events": client.events,
        "stored_per_s": round(spec.distinct / (stored_at - started)),
        "streamed_per_s": round(client.events / (client.last_at - client.first_at)),
        "last_event_after_stored_s": round(client.last_at - stored_at, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floods", description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s published (0: none)")
    parser.add_argument("--stream-events", type=int, default=300_000)
    parser.add_argument("--sidecar-from", type=Path, help="run this checkout's sidecar")
    parser.add_argument(
        "--open-files", type=int, default=SHELL_OPEN_FILES, help="the sidecar's starting soft limit"
    )
    parser.add_argument("--only", choices=("flood", "stream", "live"))
    args = parser.parse_args(argv)
    _raise_own_open_files()
    env = dict(os.environ)
    if args.sidecar_from:
        # PYTHONSAFEPATH: `python -m` must not put the current directory first.
        env |= {"PYTHONPATH": str(args.sidecar_from.resolve()), "PYTHONSAFEPATH": "1"}
    result: dict[str, Any] = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    with tempfile.TemporaryDirectory(prefix="bench-floods-") as tmp:
        work = Path(tmp)
        try:
            if args.only in (None, "flood"):
                result["flood"] = flood(work, args, env)
            if args.only in (None, "stream"):
                result["single_stream"] = single_stream(work, args, env)
            if args.only in (None, "live"):
                result["live_stream"] = live_stream(work, args, env)
        except BenchError as exc:
            print(f"floods: {exc}", file=sys.stderr)
            return 1
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
