"""A stuck bridge cannot stall the others or look healthy (issue 9, item 8).

Bridges on one PostgreSQL commit concurrently, each batch in one statement: one stopped
mid-stream holds no lock, and the others and the readers go on. Liveness
is per bridge (`logagg ready --client-id`), on the store's clock, never the bridge's.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from api import ApiSettings
from bridge.store import StoreOptions, open_reader, parse_store_url
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    LOGAGG,
    PG_TEST_URL,
    BridgeProcess,
    StartBridge,
    assert_exactly_once,
    distinct,
    make_stream,
    publish_raw,
    serving,
    wait_for_stats,
)

pytestmark = pytest.mark.broker

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)


def ready(store: str, client_id: str) -> subprocess.CompletedProcess[str]:
    """`logagg ready` as the compose healthcheck runs it (the environment's settings)."""
    args = [*LOGAGG, "ready", "--store", store, "--client-id", client_id]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def wait_until(what: str, done: Callable[[], bool], timeout: float) -> float:
    """Poll `done` until it holds; the seconds it took."""
    began = time.monotonic()
    while not done():
        assert time.monotonic() - began < timeout, f"not {what} within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - began


def holds_locks(conn: psycopg.Connection[tuple[object, ...]], application: str) -> int:
    """How many locks the sessions of that application name hold right now."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.granted AND a.application_name = %s",
        (application,),
    ).fetchone()
    return int(str(row[0])) if row else 0


@contextmanager
def frozen(bridge: BridgeProcess) -> Iterator[None]:
    """SIGSTOP `bridge` while it commits batch after batch; SIGCONT it on leaving."""
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        bridge.process.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_bridge_stopped_mid_stream_holds_neither_writers_nor_readers(
    pg_url: str, broker: Mosquitto, bridge_factory: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three bridges; one SIGSTOPped while it commits batch after batch. A batch is one
    statement, which the server finishes without the client: the frozen bridge holds no
    lock, the other two keep storing during the freeze and readers keep seeing what they
    store (the watermark is not held), the frozen one is not reported alive, and once
    resumed it goes on: every event stored once, nothing counted twice."""
    hold_s, alive_s = 1.0, 4.0
    monkeypatch.setenv("LOGAGG_STORE_HOLD_S", str(hold_s))
    monkeypatch.setenv("LOGAGG_BRIDGE_ALIVE_S", str(alive_s))
    stream = make_stream(40_000, 0.3, seed=31)
    more = make_stream(5_000, 0.0, seed=32)
    names = [f"stuck-test-{i}" for i in range(3)]
    bridges = [
        bridge_factory(store=f"{pg_url}&application_name={name}", group="logagg", client_id=name)
        for name in names
    ]
    victim = bridges[0]
    publisher = threading.Thread(target=publish_raw, args=(broker.port, stream))
    late = threading.Thread(target=publish_raw, args=(broker.port, more))
    publisher.start()
    try:
        wait_for_stats(pg_url, lambda s: s.received >= 2_000, timeout=60)
        with (
            closing(open_reader(parse_store_url(pg_url), StoreOptions(alive_s=alive_s))) as store,
            frozen(victim),
        ):
            time.sleep(hold_s)  # whatever it was doing is over
            before = store.stats().received
            (newest,) = store.events(topic=None, after=0, limit=1, newest=True)
            late.start()  # traffic during the freeze, whatever of the first is stored already
            time.sleep(alive_s + 1)  # past store_hold_s and past the liveness window
            during = store.stats().received - before
            readable = len(store.events(topic=None, after=newest.seq, limit=100_000))
            alive = [store.bridge_uptime(name) is not None for name in names]
            with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
                held = holds_locks(conn, names[0])
        print(f"\n{during} stored during the freeze, {readable} of them readable")
        assert held == 0  # the frozen bridge holds nothing
        assert during >= 1_000  # the other two kept storing
        assert readable >= 1_000  # and readers see it
        assert alive == [False, True, True]  # stuck is not healthy
    finally:
        for thread in (publisher, late):
            if thread.ident is not None:  # started
                thread.join(timeout=120)
    assert not publisher.is_alive()
    assert not late.is_alive()
    stream += more
    stats = wait_for_stats(pg_url, lambda s: s.received >= len(stream), timeout=120)
    time.sleep(1)  # anything counted twice would show by now
    with closing(open_reader(parse_store_url(pg_url), StoreOptions(alive_s=alive_s))) as store:
        stats = store.stats()
        assert store.bridge_uptime(names[0]) is not None  # back, and beating
    assert (stats.received, stats.unique_processed) == (len(stream), distinct(stream))
    assert_exactly_once(pg_url, stream)


def test_ready_answers_for_the_named_bridge(
    pg_url: str, broker: Mosquitto, bridge_factory: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bridges on one store: after one is SIGKILLed, `logagg ready` for it fails within
    the liveness window while the other's still succeeds."""
    alive_s = 2.0
    monkeypatch.setenv("LOGAGG_BRIDGE_ALIVE_S", str(alive_s))
    killed, kept = (
        bridge_factory(store=pg_url, group="logagg", client_id=name)
        for name in ("ready-killed", "ready-kept")
    )
    for name in ("ready-killed", "ready-kept"):
        done = ready(pg_url, name)
        assert done.returncode == 0, done.stderr
    killed.stop(signal.SIGKILL)
    took = wait_until(
        "reported dead", lambda: ready(pg_url, "ready-killed").returncode == 1, alive_s + 5
    )
    assert "not ready: bridge ready-killed has no heartbeat in the last 2s" in (
        ready(pg_url, "ready-killed").stderr
    )
    kept_now = ready(pg_url, "ready-kept")
    assert kept_now.returncode == 0, kept_now.stderr
    print(f"\nkilled bridge reported not ready after {took:.1f}s")
    kept.stop()


def faked_clock(offset: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime, its clocks moved by `offset`."""
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (Debian: apt-get install faketime)")
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset}


def log_clock_offset(bridge: BridgeProcess) -> float:
    """How far the bridge's clock is from ours, read off its first log line's time."""
    stamp = datetime.strptime(bridge.output()[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (stamp - datetime.now()).total_seconds()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_bridge_clock_an_hour_off_is_judged_on_the_stores_clock(
    kind: str,
    request: pytest.FixtureRequest,
    broker: Mosquitto,
    bridge_factory: StartBridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One bridge an hour ahead, one an hour behind (libfaketime): both reported alive while
    they work, each dead within the window after its SIGKILL, and /stats' uptime_s never
    negative nor longer than the bridges have run."""
    url = str(request.getfixturevalue("pg_url" if kind == "postgres" else "store_url"))
    alive_s = 3.0
    monkeypatch.setenv("LOGAGG_BRIDGE_ALIVE_S", str(alive_s))
    began = time.monotonic()
    ahead = bridge_factory(store=url, client_id="clock-ahead", env=faked_clock("+1h"))
    behind = bridge_factory(store=url, client_id="clock-behind", env=faked_clock("-1h"))
    # libfaketime is in effect in each (their log's clock), and in none of ours.
    assert 3500 < log_clock_offset(ahead) < 3700
    assert -3700 < log_clock_offset(behind) < -3500
    uptimes: list[float | None] = []
    with (
        serving(
            ApiSettings(broker=broker.url, store=parse_store_url(url), bridge_alive_s=alive_s)
        ) as api,
        closing(open_reader(parse_store_url(url), StoreOptions(alive_s=alive_s))) as store,
    ):

        def alive(client_id: str) -> bool:
            uptimes.append(api.get("/stats").json()["uptime_s"])
            return store.bridge_uptime(client_id) is not None

        stream = make_stream(2_000, 0.2, seed=32)
        publish_raw(broker.port, stream)
        wait_for_stats(url, lambda s: s.received >= len(stream))
        # Working, and for longer than the window: both alive all along.
        while time.monotonic() - began < 2 * alive_s:
            assert alive("clock-ahead")
            assert alive("clock-behind")
            time.sleep(0.2)
        for name in ("clock-ahead", "clock-behind"):
            done = ready(url, name)
            assert done.returncode == 0, done.stderr
        ahead.stop(signal.SIGKILL)
        wait_until("ahead reported dead", lambda: not alive("clock-ahead"), alive_s + 5)
        assert alive("clock-behind")
        assert ready(url, "clock-ahead").returncode == 1
        behind.stop(signal.SIGKILL)
        wait_until("behind reported dead", lambda: not alive("clock-behind"), alive_s + 5)
        assert api.get("/stats").json()["uptime_s"] is None
        ran = time.monotonic() - began
    assert_exactly_once(url, stream)
    seen = [u for u in uptimes if u is not None]
    assert seen
    assert all(0 <= u <= ran for u in seen), (min(seen), max(seen), ran)
