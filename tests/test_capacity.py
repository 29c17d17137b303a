"""The disk cap (`--max-store-bytes`) and a full disk: the bridge stops writing and
acknowledging, says why everywhere a person looks, loses nothing, and resumes by itself
when there is room."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser
from psycopg import sql

from api import ApiSettings
from api.models import StatsReport
from bridge.capacity import Space
from bridge.settings import BridgeSettings
from bridge.store import StoreFull, StoreOptions, open_reader, open_writer, parse_store_url
from bridge.store.space import POSTGRES_MEASURE_BYTES, POSTGRES_USED_BYTES, sqlite_used_bytes
from bridge.store.sqlite import SQLiteWriter
from bridge.store.sqlite_text import text_path
from logagg.views import summary
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    PG_TEST_URL,
    Message,
    StartBridge,
    assert_exactly_once,
    key,
    open_dashboard,
    pg_connect,
    publish_raw,
    random_events,
    samples,
    serving,
    value,
    wait_for_stats,
)

T = TypeVar("T")
ALIVE_S = "3"
# Each message's body is about 1.1 kB.
PAD = "x" * 1000
BATCH = 100
# How far a SQLite store may pass its cap: one batch (`BATCH` messages of ~1.1 kB) as
# stored, rows and indexes: these take 1.3x their size (README, "Guarantees and limits").
SQLITE_OVERSHOOT = 2 * BATCH * 1100


def padded(count: int, run: str) -> list[Message]:
    return [
        (
            f"logs/cap{i % 3}",
            json.dumps(
                {
                    "event_id": f"{run}-{i}",
                    "timestamp": "2026-11-26T12:00:00+00:00",
                    "source": "test",
                    "payload": {"i": i, "pad": PAD},
                }
            ).encode(),
        )
        for i in range(count)
    ]


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout:g}s")


def health(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    answer = client.get("/healthz")
    return answer.status_code, answer.json()


def full_health(client: httpx.Client) -> dict[str, Any]:
    """Wait for /healthz to answer 503 because the store is full; its body."""

    last: list[object] = []

    def check() -> dict[str, Any] | None:
        status, body = health(client)
        last[:] = [status, body]
        return body if status == 503 and body["store_space"] != "ok" else None

    try:
        return wait_until(check, 90, "/healthz saying the store is full")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it said {last}") from None


def stored(url: str) -> int:
    with closing(open_reader(parse_store_url(url))) as store:
        return store.stats().unique_processed


def held(url: str, seconds: float) -> int:
    """The stored count, checked not to move for `seconds`: nothing is being written."""
    before = stored(url)
    time.sleep(seconds)
    assert stored(url) == before, "the bridge kept writing while the store was full"
    return before


@contextmanager
def sidecar_on(broker: Mosquitto, url: str) -> Iterator[httpx.Client]:
    settings = ApiSettings(broker=broker.url, store=parse_store_url(url), bridge_alive_s=3)
    with serving(settings) as client:
        yield client


def file_used(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return sqlite_used_bytes(conn)


def sqlite_used(path: Path) -> int:
    """The bridge's measure: the store's file and its text index's."""
    return file_used(path) + (file_used(text_path(path)) if text_path(path).exists() else 0)


def say_full_everywhere(client: httpx.Client, reason: str, cap: int) -> None:
    """/stats and /metrics agree that the store is full; with a cap, the bridge holding
    it still beats (on a full disk its heartbeat, a write, cannot)."""
    stats = client.get("/stats").json()
    assert stats["store_full"] is True
    assert reason in stats["store_full_reason"]
    scrape = samples(client.get("/metrics").text)
    assert value(scrape, "logagg_store_full") == 1
    if cap:
        assert stats["uptime_s"] is not None
        assert stats["max_store_bytes"] == cap
        assert stats["store_used_bytes"] >= cap
        assert value(scrape, "logagg_store_max_bytes") == cap
        assert value(scrape, "logagg_store_used_bytes") >= cap


def say_room_again(client: httpx.Client) -> None:
    status, body = health(client)
    assert status == 200, body
    assert body["store_space"] == "ok"
    stats = client.get("/stats").json()
    assert stats["store_full"] is False
    assert value(samples(client.get("/metrics").text), "logagg_store_full") == 0


pytestmark = pytest.mark.broker


def test_cap_stops_acking_says_why_and_resumes_with_a_larger_cap(
    tmpfs: Callable[[str], Path], broker: Mosquitto, bridge_factory: StartBridge, browser: Browser
) -> None:
    """At the cap the bridge holds what it has and the broker the rest, and says so (log,
    /healthz, /stats, /metrics, the dashboard's pill); a restart with a larger cap stores
    every event, those published during the stop too, exactly once."""
    path = tmpfs("64m") / "logagg.db"
    url = f"sqlite:///{path}"
    cap = 1_000_000
    flags = {"store": url, "bridge_alive_s": ALIVE_S, "batch_size": str(BATCH)}
    bridge = bridge_factory(max_store_bytes="1MB", **flags)
    with sidecar_on(broker, url) as client:
        first = padded(2000, "first")
        publish_raw(broker.port, first)  # the broker acknowledges; the bridge stops at the cap
        body = full_health(client)
        assert "reached its cap" in body["store_space"]
        assert "of --max-store-bytes 1.0 MB" in body["store_space"]
        say_full_everywhere(client, "reached its cap", cap)
        page = open_dashboard(browser, client, live=False)
        page.wait_for_selector("#store.bad", timeout=10_000)
        assert page.inner_text("#store") == "store full: not writing"
        assert "reached its cap" in (page.get_attribute("#store", "title") or "")
        page.close()
        during = padded(300, "during")
        publish_raw(broker.port, during)
        count = held(url, 4)
        assert 0 < count < len(first)
        assert cap <= sqlite_used(path) <= cap + SQLITE_OVERSHOOT
        log = bridge.output()
        assert log.count("store full for") == 1, log  # once, then every 30 s
        assert "1.0 MB" in log
        assert "holding" in log

        bridge.stop()
        bridge_factory(max_store_bytes="64MB", **flags)
        wait_for_stats(url, lambda s: s.unique_processed >= len(first) + len(during))
        assert_exactly_once(url, first + during)
        wait_until(lambda: health(client)[0] == 200 or None, 30, "/healthz 200")
        say_room_again(client)


# slow: a third bridge run on the cap; the fast set has it stop and resume
@pytest.mark.slow
def test_cap_resumes_by_itself_when_rows_are_deleted(
    tmpfs: Callable[[str], Path], broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """Rows deleted (here the kept rejected messages, as retention deletes events) go to
    SQLite's freelist: the measure falls and the bridge resumes without a restart."""
    path = tmpfs("64m") / "logagg.db"
    url = f"sqlite:///{path}"
    flags = {"store": url, "bridge_alive_s": ALIVE_S, "batch_size": str(BATCH)}
    bridge = bridge_factory(**flags)
    refused = [(f"logs/bad{i}", b"not json " + PAD.encode()) for i in range(600)]
    publish_raw(broker.port, refused)
    wait_for_stats(url, lambda s: s.rejected >= len(refused))
    bridge.stop()
    # A cap the store has reached: the first batch finds it full.
    bridge = bridge_factory(max_store_bytes=str(sqlite_used(path)), **flags)
    with sidecar_on(broker, url) as client:
        events = padded(200, "resume")
        publish_raw(broker.port, events)
        full_health(client)
        assert held(url, 2) == 0

        with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
            conn.execute("DELETE FROM rejected")
        wait_for_stats(url, lambda s: s.unique_processed >= len(events), timeout=90)
        with closing(open_reader(parse_store_url(url))) as store:
            rows = store.events(topic=None, after=0, limit=len(events) + 1)
            stats = store.stats()
        assert sorted((e.topic, e.event_id) for e in rows) == sorted(map(key, events))
        assert stats.received == stats.unique_processed + stats.duplicate_dropped + stats.rejected
        wait_until(lambda: health(client)[0] == 200 or None, 30, "/healthz 200")
        say_room_again(client)
        assert "store has room again" in bridge.output()


def test_full_disk_stops_acking_says_why_and_resumes_when_space_is_freed(
    tmpfs: Callable[[str], Path], broker: Mosquitto, bridge_factory: StartBridge
) -> None:
    """A disk that really fills (ENOSPC, no cap): the same stop, the same signs, and the
    bridge resumes by itself once a file elsewhere on the disk is removed."""
    disk = tmpfs("32m")
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 27 * 1024 * 1024)
    url = f"sqlite:///{disk / 'logagg.db'}"
    bridge = bridge_factory(store=url, bridge_alive_s=ALIVE_S, batch_size=str(BATCH))
    with sidecar_on(broker, url) as client:
        events = padded(4000, "enospc")
        publish_raw(broker.port, events)
        body = full_health(client)
        assert "is full" in body["store_space"], body
        say_full_everywhere(client, "is full", 0)
        assert held(url, 3) < len(events)
        assert bridge.output().count("store full for") == 1, bridge.output()

        ballast.unlink()
        wait_for_stats(url, lambda s: s.unique_processed >= len(events), timeout=90)
        assert_exactly_once(url, events)
        wait_until(lambda: health(client)[0] == 200 or None, 30, "/healthz 200")
        say_room_again(client)
        assert "store has room again" in bridge.output()


def pg_used(url: str) -> int:
    with pg_connect(url) as conn:
        (used,) = conn.execute(POSTGRES_USED_BYTES).fetchone() or (0,)
    return int(used)


# slow: the cap's second store; the fast set has it on SQLite
@pytest.mark.slow
def test_postgres_cap_stops_acking_and_resumes_with_a_larger_cap(
    broker: Mosquitto, bridge_factory: StartBridge, pg_url: str
) -> None:
    """PostgreSQL's measure (logagg's tables in its schema) against a tiny cap."""
    flags = {"store": pg_url, "bridge_alive_s": ALIVE_S, "batch_size": str(BATCH)}
    bridge_factory(**flags).stop()  # creates the schema
    cap = pg_used(pg_url) + 300_000
    bridge = bridge_factory(max_store_bytes=str(cap), **flags)
    with sidecar_on(broker, pg_url) as client:
        first = padded(2000, "pg")
        publish_raw(broker.port, first)
        body = full_health(client)
        assert "reached its cap" in body["store_space"]
        say_full_everywhere(client, "reached its cap", cap)
        count = held(pg_url, 3)
        assert 0 < count < len(first)
        # Measured at least once a second and per 1 MiB of messages; one batch more; these
        # messages take 1.5x their size as stored (README, "Guarantees and limits").
        assert pg_used(pg_url) <= cap + 2 * (POSTGRES_MEASURE_BYTES + BATCH * 1100)
        assert bridge.output().count("store full for") == 1

        bridge.stop()
        bridge_factory(**flags)  # no cap
        wait_for_stats(pg_url, lambda s: s.unique_processed >= len(first))
        assert_exactly_once(pg_url, first)
        wait_until(lambda: health(client)[0] == 200 or None, 30, "/healthz 200")
        say_room_again(client)


@pytest.fixture
def fsm_database(postgres_reachable: None) -> Iterator[str]:
    """A PostgreSQL database of its own with pg_freespacemap installed (the extension is
    per database: the shared one is left as it is), dropped afterwards."""
    name = f"logagg_fsm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(PG_TEST_URL)._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_freespacemap")
        yield url
    finally:
        with psycopg.connect(PG_TEST_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_postgres_cap_sees_room_retention_made(
    fsm_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store held at its cap: retention deletes rows, a vacuum (autovacuum's work; off on
    the shared server) records their room in the free space map, and the measure falls
    below the cap though the files keep their size; new rows fill that room rather than
    grow the files. Without the extension the cap stays reached, and the log says why."""
    url = parse_store_url(fsm_database)
    settings = BridgeSettings.model_validate(
        {"store": url, "retention": "1s", "retention_topic": ["keep/#=forever"]}
    )
    store = open_writer(url, settings.store_options)
    try:
        empty = store.used_bytes()
        store.record(random_events(3000, seed=3), [])
        files = store.used_bytes()
        per_1000 = (files - empty) // 3
        cap = files * 9 // 10  # reached: the map's room is a few partly filled pages
        space = Space(max_bytes=cap, measure_every_bytes=0)
        with pytest.raises(StoreFull):
            space.check(store, 0)
        # Newer rows after the expired ones, as in a live store: the vacuum cannot cut the
        # files' empty end off, and the room stays inside them.
        kept = [e.model_copy(update={"topic": f"keep/{e.topic}"}) for e in random_events(300, 5)]
        store.record(kept, [])
        files = store.used_bytes()
        time.sleep(1.2)
        assert store.purge(lambda: False).events == 3000
        with pytest.raises(StoreFull):  # deleted, not yet vacuumed: no room yet
            space.check(store, 0)
        with psycopg.connect(fsm_database, autocommit=True) as conn:
            conn.execute("VACUUM")
        vacuumed = store.used_bytes()
        assert vacuumed >= files  # the files did not shrink (the kept keys, the maps added)
        space = Space(max_bytes=cap, measure_every_bytes=0)
        space.check(store, 0)  # room again
        assert space.used is not None
        assert space.used < cap
        # Until the map is read again (a second at least), what this bridge commits is
        # taken from its room: a batch as large as the room leaves none.
        space.check(store, space.reusable)
        with pytest.raises(StoreFull):
            space.check(store, 0)
        space = Space(max_bytes=cap, measure_every_bytes=0)
        store.record(random_events(1000, seed=4), [])
        # The heap's room was filled, not the disk (indexes still grow: their pages of
        # deleted entries are not all free yet).
        assert store.used_bytes() - vacuumed < per_1000 // 2

        with psycopg.connect(fsm_database, autocommit=True) as conn:
            conn.execute("DROP EXTENSION pg_freespacemap")
        space = Space(max_bytes=cap, measure_every_bytes=0)
        with pytest.raises(StoreFull):
            space.check(store, 0)
        assert "pg_freespacemap extension is not installed" in caplog.text
    finally:
        store.close()


def test_sqlite_measure_counts_freed_pages_as_room(tmp_path: Path) -> None:
    """Rows deleted free their pages at once in the measure, though the file keeps its size;
    the text index's file counts too."""
    path = tmp_path / "logagg.db"
    store = SQLiteWriter(path, StoreOptions())
    try:
        empty = store.used_bytes()
        store.record(random_events(2000, seed=7), [])
        assert store.text_indexed(timeout=10)
        grown = store.used_bytes()
        assert grown > empty + 200_000
        events_bytes = file_used(path)
        assert grown == sqlite_used(path) > events_bytes
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("DELETE FROM events")
        with closing(sqlite3.connect(text_path(path), isolation_level=None)) as conn:
            conn.execute("INSERT INTO events_fts (events_fts) VALUES ('delete-all')")
        assert store.used_bytes() < empty + (grown - empty) // 4
        assert path.stat().st_size + Path(f"{path}-wal").stat().st_size >= events_bytes
    finally:
        store.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("20GB", 20_000_000_000), ("500MB", 500_000_000), ("1GiB", 2**30), ("4096", 4096)],
)
def test_max_store_bytes_takes_units(given: str, expected: int) -> None:
    """Decimal and binary units, as the README documents them."""
    assert BridgeSettings(max_store_bytes=given).max_store_bytes == expected  # type: ignore[arg-type]


def test_max_store_bytes_is_off_by_default_and_refuses_zero() -> None:
    assert BridgeSettings().max_store_bytes is None
    with pytest.raises(ValueError, match="greater than 0"):
        BridgeSettings(max_store_bytes=0)  # type: ignore[arg-type]


def test_logagg_stats_says_the_store_is_full_or_how_much_of_its_cap() -> None:
    """`logagg stats` adds a store line only when there is a cap or the store is full."""
    base = StatsReport(
        received=0,
        unique_processed=0,
        duplicate_dropped=0,
        rejected=0,
        topics={},
        topics_total=0,
        rejected_by_code={},
        uptime_s=1.0,
    )
    assert "\nstore " not in summary(base)
    capped = base.model_copy(update={"store_used_bytes": 450_000, "max_store_bytes": 1_000_000})
    assert "store       450.0 kB of its cap 1.0 MB (45%)" in summary(capped)
    reason = "bridge b: the store reached its cap: 1.0 MB used"
    full = capped.model_copy(update={"store_full": True, "store_full_reason": reason})
    assert f"store       FULL, not writing: {reason}" in summary(full)
