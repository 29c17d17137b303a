"""Scaling out: several `logagg bridge` processes on one MQTT 5 shared subscription
(`$share/logagg/logs/#`) and one PostgreSQL, through crashes of a bridge and of PostgreSQL.

Tests name their store fixture (pg_url, private_postgres) before bridge_factory, so the
bridges are stopped before their database goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from api.settings import ApiSettings
from bridge.store import open_reader, parse_store_url
from logagg.views import server_sent_events
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import (
    BridgeProcess,
    Message,
    StartBridge,
    assert_exactly_once,
    distinct,
    key,
    make_stream,
    publish_raw,
    serving,
    wait_for_stats,
)

pytestmark = pytest.mark.broker

BRIDGES = 3
DUPLICATE = re.compile(r"duplicate dropped: topic=(\S+) event_id=(\S+)")


def start_bridges(start: StartBridge, store: str) -> list[BridgeProcess]:
    return [
        start(store=store, group="logagg", client_id=f"scale-bridge-{i}") for i in range(BRIDGES)
    ]


def dealt_stream(count: int, dup_ratio: float, *, seed: int) -> list[Message]:
    """`count` messages, `dup_ratio` of them repeats, laid out so that the copies of one event
    sit at positions that differ modulo the number of bridges.

    Mosquitto deals a shared subscription's messages to its members in turn, so position
    p goes to member p mod BRIDGES (up to a rotation): the copies of each repeated event
    reach different bridges.
    """
    rng = random.Random(seed)
    originals = make_stream(count - round(count * dup_ratio), 0.0, seed=seed)
    repeats = round(count * dup_ratio)
    thrice = repeats // 10  # a tenth of the repeated events come three times
    twice = rng.sample(range(len(originals)), repeats - thrice)
    copies = dict.fromkeys(range(len(originals)), 1)
    copies.update((i, 2) for i in twice)
    copies.update((i, 3) for i in rng.sample(twice, thrice))
    # Slot sizes that interleave exactly (the first slots take the remainder).
    sizes = [count // BRIDGES + (s < count % BRIDGES) for s in range(BRIDGES)]
    slots: list[list[int]] = [[] for _ in range(BRIDGES)]
    for i in (i for i, n in copies.items() if n > 1):
        for s in rng.sample(range(BRIDGES), copies[i]):
            slots[s].append(i)
    singles = [i for i, n in copies.items() if n == 1]
    for s in range(BRIDGES):
        take = sizes[s] - len(slots[s])
        slots[s] += singles[:take]
        singles = singles[take:]
        rng.shuffle(slots[s])
    return [originals[slots[p % BRIDGES][p // BRIDGES]] for p in range(count)]


def logged_duplicates(bridge: BridgeProcess) -> list[tuple[str, str]]:
    return [(t, e) for t, e in DUPLICATE.findall(bridge.output())]


@pytest.mark.slow
def test_three_bridges_share_the_stream_and_store_each_event_once(
    pg_url: str,
    broker: Mosquitto,
    bridge_factory: StartBridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100,000 events, 30% duplicates, three bridges on one shared subscription and one
    PostgreSQL: each event stored once, counters exact, and the copies of every repeated
    event were handled by different bridges (seen in their logs: each bridge dropped
    duplicates from one slot of the deal only, and the slots differ)."""
    monkeypatch.setenv("LOGAGG_DUPLICATE_LOG_PER_S", "1000000")  # name every duplicate
    stream = dealt_stream(100_000, 0.3, seed=11)
    want = distinct(stream)
    bridges = start_bridges(bridge_factory, pg_url)
    began = time.monotonic()
    publish_raw(broker.port, stream)
    stats = wait_for_stats(pg_url, lambda s: s.received >= len(stream), timeout=240)
    elapsed = time.monotonic() - began
    assert (stats.unique_processed, stats.duplicate_dropped) == (want, len(stream) - want)
    assert_exactly_once(pg_url, stream)

    slots_of_key: dict[tuple[str, str], set[int]] = {}
    for position, message in enumerate(stream):
        slots_of_key.setdefault(key(message), set()).add(position % BRIDGES)
    dealt_to = []
    for bridge in bridges:
        assert bridge.stop() == 0
        dropped = logged_duplicates(bridge)
        assert dropped, bridge.output()[-2000:]
        # The one slot all of this bridge's duplicates came from.
        (slot,) = set.intersection(*(slots_of_key[k] for k in dropped))
        dealt_to.append(slot)
        committed = re.search(r"bridge stopped after (\d+) committed", bridge.output())
        assert committed is not None
        assert int(committed[1]) == len(stream) // BRIDGES + (slot < len(stream) % BRIDGES)
    assert sorted(dealt_to) == list(range(BRIDGES))
    assert sum(len(logged_duplicates(b)) for b in bridges) == stats.duplicate_dropped
    print(f"\n{len(stream)} messages through {BRIDGES} bridges in {elapsed:.1f}s")


def run_with_interruption(
    broker: Mosquitto, store: str, stream: list[Message], at: int, interrupt: Callable[[], None]
) -> None:
    """Publish `stream` from a thread; once the store has received `at`, call `interrupt`."""
    publisher = threading.Thread(target=publish_raw, args=(broker.port, stream))
    publisher.start()
    try:
        wait_for_stats(store, lambda s: s.received >= at, timeout=120)
        interrupt()
    finally:
        publisher.join(timeout=120)
    assert not publisher.is_alive()


@pytest.mark.slow
def test_bridge_sigkilled_among_three_loses_nothing(
    pg_url: str, broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """One of three bridges SIGKILLed mid-stream and restarted under its client id: the broker
    kept dealing it messages meanwhile, and it gets them, and its unacked ones, back."""
    stream = make_stream(30_000, 0.3, seed=12)
    bridges = start_bridges(bridge_factory, pg_url)
    victim = bridges[1]

    def crash_and_restart() -> None:
        victim.stop(signal.SIGKILL)
        time.sleep(1.0)  # the stream goes on; a third of it is queued for the dead member
        bridge_factory(store=pg_url, group="logagg", client_id="scale-bridge-1")

    run_with_interruption(broker, pg_url, stream, 8_000, crash_and_restart)
    wait_for_stats(pg_url, lambda s: s.unique_processed >= distinct(stream), timeout=120)
    assert_exactly_once(pg_url, stream)


@pytest.mark.slow
def test_dead_member_keeps_its_share_until_it_returns(
    pg_url: str, broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """Mosquitto (2.0) deals shared-subscription messages round-robin without checking that a
    member is online: a dead member's share waits in its session, it is not redistributed.

    Measured here: with one of three bridges down, about a third of the stream is held until
    that bridge returns (and would be lost if its session expired). A clustered broker such
    as EMQX instead dispatches only to connected members by default, so the survivors would
    take everything at once.
    """
    bridges = start_bridges(bridge_factory, pg_url)
    bridges[2].stop(signal.SIGKILL)
    stream = make_stream(3_000, 0.0, seed=21)
    publish_raw(broker.port, stream)
    time.sleep(3)
    with closing(open_reader(parse_store_url(pg_url))) as store:
        held = len(stream) - store.stats().received
    assert len(stream) * 0.2 < held < len(stream) * 0.45
    bridge_factory(store=pg_url, group="logagg", client_id="scale-bridge-2")
    wait_for_stats(pg_url, lambda s: s.received >= len(stream), timeout=60)
    assert_exactly_once(pg_url, stream)


class PostgresServer:
    """A PostgreSQL of our own in a temporary directory, so a test may stop and start it.

    As root it runs as the `postgres` user (PostgreSQL refuses root), in a directory that
    user owns.
    """

    def __init__(self) -> None:
        bindir = Path(shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl").parent
        self.pg_ctl = str(bindir / "pg_ctl")
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="logagg-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self._running = False

    @property
    def url(self) -> str:
        # A short connect_timeout: a bridge waits that long for a connection before it
        # reports the store unavailable.
        return (
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema=logagg&connect_timeout=2"
        )

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_owner, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "postgres.log")
        self._run(self.pg_ctl, "start", "-w", "-D", str(self.data), "-l", log, "-o", options)
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        if self._running:
            self._run(self.pg_ctl, "stop", "-w", "-D", str(self.data), "-m", mode)
            self._running = False

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.mark.slow
def test_postgres_restarted_mid_stream_loses_nothing(
    private_postgres: PostgresServer, broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """PostgreSQL stopped while three bridges write: they stop acking, say why, retry, and
    once it is back every event is stored once."""
    stream = make_stream(30_000, 0.3, seed=13)
    store = private_postgres.url
    bridges = start_bridges(bridge_factory, store)

    def restart_postgres() -> None:
        private_postgres.stop("fast")
        time.sleep(4.0)  # longer than connect_timeout: every bridge gives up waiting once
        private_postgres.start()

    run_with_interruption(broker, store, stream, 5_000, restart_postgres)
    wait_for_stats(store, lambda s: s.unique_processed >= distinct(stream), timeout=120)
    assert_exactly_once(store, stream)
    # The first failure is logged at once (then once per interval): whatever PostgreSQL's
    # words for it, the line names the store and a reason.
    reason = re.compile(
        r"store unavailable, holding \d+ unacknowledged messages: cannot write \S+: \S+"
    )
    for bridge in bridges:
        assert reason.search(bridge.output()), bridge.output()[-3000:]


Seen = list[tuple[int, str, str]]  # (seq, topic, event_id) in the order a reader got them
READ_ERRORS = (httpx.HTTPError, ValueError, KeyError)


class Follower(threading.Thread):
    """A reader that follows the store from seq 0 until it has seen `want` events (or its
    deadline passes): `read(after)` gives the next rows after `after`, maybe none yet; a
    failure (the store or the sidecar briefly away) is retried."""

    def __init__(self, name: str, read: Callable[[int], Seen], want: int) -> None:
        super().__init__(name=name, daemon=True)
        self.read, self.want = read, want
        self.seen: Seen = []
        self.failures = 0

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while len(self.seen) < self.want and time.monotonic() < deadline:
            try:
                rows = self.read(self.seen[-1][0] if self.seen else 0)
            except READ_ERRORS:
                self.failures += 1
                rows = []
            self.seen += rows
            if not rows:
                time.sleep(0.05)


def store_pages(store: str) -> Callable[[int], Seen]:
    reader = open_reader(parse_store_url(store))
    rng = random.Random(1)

    def read(after: int) -> Seen:
        try:
            rows = reader.events(topic=None, after=after, limit=rng.randint(1, 500))
        except Exception:  # StoreUnavailable while PostgreSQL is down
            return []
        return [(e.seq, e.topic, e.event_id) for e in rows]

    return read


def http_pages(client: httpx.Client) -> Callable[[int], Seen]:
    rng = random.Random(2)

    def read(after: int) -> Seen:
        response = client.get("/events", params={"after": after, "limit": rng.randint(1, 500)})
        if response.status_code != 200:
            return []
        return [(e["seq"], e["topic"], e["event_id"]) for e in response.json()["events"]]

    return read


def http_stream(client: httpx.Client) -> Callable[[int], Seen]:
    """The live stream from `after` (as Last-Event-ID), read for up to a second at a time:
    each call is a reconnect, as a browser's after the stream ends or breaks."""

    def read(after: int) -> Seen:
        rows: Seen = []
        headers = {"Last-Event-ID": str(after)}
        until = time.monotonic() + 1.0
        # A read timeout ends a quiet stream (it pings every 15 s only): keep what came.
        with (
            contextlib.suppress(httpx.ReadTimeout),
            client.stream("GET", "/events/stream", headers=headers, timeout=1) as response,
        ):
            if response.status_code != 200:
                return []
            for _, data in server_sent_events(response.iter_lines()):
                if data is not None:
                    e = json.loads(data)
                    rows.append((e["seq"], e["topic"], e["event_id"]))
                if time.monotonic() > until:
                    break
        return rows

    return read


def check_followers(store: str, followers: list[Follower]) -> None:
    """Each follower saw the stored events exactly once each, in seq order, none missed."""
    for follower in followers:
        follower.join(timeout=120)
    with closing(open_reader(parse_store_url(store))) as reader:
        stored = [
            (e.seq, e.topic, e.event_id) for e in reader.events(topic=None, after=0, limit=10**6)
        ]
    for follower in followers:
        assert not follower.is_alive(), f"{follower.name}: still reading"
        seqs = [seq for seq, _, _ in follower.seen]
        assert seqs == sorted(set(seqs)), f"{follower.name}: repeated or out of order"
        missed = sorted({seq for seq, _, _ in stored} - set(seqs))
        assert follower.seen == stored, f"{follower.name}: missed {len(missed)}: {missed[:20]}"


def start_followers(store: str, client: httpx.Client, want: int) -> list[Follower]:
    followers = [
        Follower("store pages", store_pages(store), want),
        Follower("/events pages", http_pages(client), want),
        Follower("/events/stream", http_stream(client), want),
        Follower("/events/stream 2", http_stream(client), want),
    ]
    for follower in followers:
        follower.start()
    return followers


@pytest.mark.slow
def test_readers_of_three_bridges_see_every_event_once_in_order(
    pg_url: str, broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """Three bridges commit concurrently (rows become visible out of seq order) while
    readers follow by `after`: the store's pages, /events pages and two live streams. Each
    sees every stored event exactly once, in seq order."""
    stream = dealt_stream(30_000, 0.3, seed=31)
    want = distinct(stream)
    start_bridges(bridge_factory, pg_url)
    settings = ApiSettings(broker=broker.url, store=parse_store_url(pg_url))
    with serving(settings) as client:
        followers = start_followers(pg_url, client, want)
        publish_raw(broker.port, stream)
        wait_for_stats(pg_url, lambda s: s.unique_processed >= want, timeout=240)
        check_followers(pg_url, followers)
    assert_exactly_once(pg_url, stream)


@pytest.mark.slow
def test_readers_stay_gap_free_through_a_bridge_sigkill_and_a_postgres_restart(
    private_postgres: PostgresServer, broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """Three bridges; mid-stream one is SIGKILLed and restarted, then PostgreSQL is
    restarted, while readers follow as above: every distinct event is stored once, and
    every reader saw each exactly once, in seq order."""
    stream = make_stream(30_000, 0.3, seed=32)
    want = distinct(stream)
    store = private_postgres.url
    bridges = start_bridges(bridge_factory, store)
    settings = ApiSettings(broker=broker.url, store=parse_store_url(store))

    def crash_bridge_then_postgres() -> None:
        bridges[1].stop(signal.SIGKILL)
        time.sleep(1.0)
        bridge_factory(store=store, group="logagg", client_id="scale-bridge-1")
        wait_for_stats(store, lambda s: s.received >= 12_000, timeout=120)
        private_postgres.stop("fast")
        time.sleep(3.0)
        private_postgres.start()

    with serving(settings) as client:
        followers = start_followers(store, client, want)
        run_with_interruption(broker, store, stream, 5_000, crash_bridge_then_postgres)
        wait_for_stats(store, lambda s: s.unique_processed >= want, timeout=180)
        check_followers(store, followers)
    assert_exactly_once(store, stream)
