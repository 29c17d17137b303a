"""The store contract, run against every store implementation."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from bridge.event import Event, Rejection
from bridge.store import (
    BatchOutcome,
    Durability,
    PostgresUrl,
    Refused,
    SchemaTooNew,
    SQLiteUrl,
    StoreOptions,
    StoreUnavailable,
    StoreUrl,
    StoreWriter,
    open_reader,
    open_writer,
    parse_store_url,
    redact_url,
)
from bridge.store.base import KEEP_REJECTED, KEEP_ROW_BYTES
from bridge.store.postgres import PostgresReader, PostgresWriter
from bridge.store.reading import first_recent
from bridge.store.sqlite import SQLiteReader, SQLiteWriter
from supervise.mosquitto import free_port
from tests.helpers import pg_connect, pg_execute, postgres


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    """A URL for a store that does not exist yet, of each kind."""
    if request.param == "postgres":
        return parse_store_url(str(request.getfixturevalue("pg_url")))
    return parse_store_url(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture
def store(url: StoreUrl) -> Iterator[StoreWriter]:
    opened = open_writer(url)
    yield opened
    opened.close()


def event(topic: str, event_id: str, **payload: object) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        source="test",
        payload=payload,
    )


def test_record_stores_new_events_and_counts_duplicates(store: StoreWriter) -> None:
    """Same (topic, event_id) again is a duplicate, also within one batch; the first wins."""
    first = store.record([event("a", "1", v=1), event("a", "2"), event("b", "1")], [])
    assert (first.stored, first.duplicates) == (3, [])
    second = store.record([event("a", "1", v=2), event("a", "3"), event("a", "3")], [])
    assert second.stored == 1
    assert second.duplicates == [("a", "1"), ("a", "3")]
    stored = store.events(topic="a", after=0, limit=10)
    assert [e.event_id for e in stored] == ["1", "2", "3"]
    assert stored[0].payload == {"v": 1}


def test_stats_agree_with_events_and_received_is_the_sum(store: StoreWriter) -> None:
    """Counters live in the event transaction, so they always match what is stored."""
    store.record([event("a", "1"), event("a", "1"), event("b", "9")], [])
    store.record([], [Refused("logs/x", b"\xff", Rejection("not_utf8", "bad bytes"))])
    stats = store.stats()
    assert (stats.unique_processed, stats.duplicate_dropped, stats.rejected) == (2, 1, 1)
    assert stats.received == 4
    assert stats.topics["a"].unique_processed == 1
    assert stats.topics["a"].duplicate_dropped == 1
    assert stats.rejected_by_code == {"not_utf8": 1}
    assert len(store.events(topic=None, after=0, limit=100)) == stats.unique_processed


def test_events_page_by_seq_and_filter_by_topic(store: StoreWriter) -> None:
    """`after` and `seq` give stable paging in arrival order."""
    store.record([event("t", str(i)) for i in range(5)] + [event("u", "x")], [])
    page1 = store.events(topic="t", after=0, limit=2)
    page2 = store.events(topic="t", after=page1[-1].seq, limit=10)
    assert [e.event_id for e in page1 + page2] == ["0", "1", "2", "3", "4"]
    seqs = [e.seq for e in page1 + page2]
    assert seqs == sorted(seqs)
    assert all(e.received_at for e in page2)


def test_newest_rows_come_oldest_first(store: StoreWriter) -> None:
    """`newest` gives the last rows (where a tail starts), still in arrival order."""
    store.record([event("t", str(i)) for i in range(6)] + [event("u", "x")], [])
    newest = store.events(topic="t", after=0, limit=2, newest=True)
    assert [e.event_id for e in newest] == ["4", "5"]
    everything = store.events(topic=None, after=0, limit=100, newest=True)
    assert len(everything) == 7
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    junk = [Refused("logs/t", b"?", Rejection("not_json", str(i))) for i in range(5)]
    store.record([], junk)
    assert [r.reason for r in store.rejected(after=0, limit=2, newest=True)] == ["3", "4"]


def test_events_page_stops_at_a_byte_budget_and_paging_misses_nothing(store: StoreWriter) -> None:
    """A page of large payloads is cut where they add up past `max_bytes` (never below one
    row); following `after` from its last row still reads every event once, in order."""
    store.record([event("a", str(i), text="x" * 1000) for i in range(10)], [])
    store.record([event("a", "huge", text="y" * 10_000)], [])
    seen: list[str] = []
    after, pages = 0, 0
    while page := store.events(topic="a", after=after, limit=100, max_bytes=2500):
        assert len(page) <= 2
        seen += [e.event_id for e in page]
        after, pages = page[-1].seq, pages + 1
    assert seen == [*map(str, range(10)), "huge"]
    assert pages == 6
    newest = store.events(topic=None, after=0, limit=100, newest=True, max_bytes=2500)
    assert [e.event_id for e in newest] == ["huge"]
    newest = store.events(topic=None, after=0, limit=3, newest=True, max_bytes=1_000_000)
    assert [e.event_id for e in newest] == ["8", "9", "huge"]


def test_rejected_keeps_reason_and_bounded_body(store: StoreWriter) -> None:
    """Refused messages are kept aside with why, and a prefix of what they were."""
    store.record([], [Refused("logs/t", b"x" * 100_000, Rejection("too_large", "too big"))])
    (rejected,) = store.rejected(after=0, limit=10)
    assert (rejected.code, rejected.reason, rejected.mqtt_topic) == (
        "too_large",
        "too big",
        "logs/t",
    )
    assert 0 < len(rejected.body) < 10_000


def test_rejected_body_with_nul_and_bad_bytes_is_kept_printable(store: StoreWriter) -> None:
    """Whatever bytes were refused can be kept (PostgreSQL text cannot hold NUL)."""
    store.record([], [Refused("logs/t", b'{"a":\x00}\xff', Rejection("not_json", "bad"))])
    (rejected,) = store.rejected(after=0, limit=10)
    assert rejected.body == '{"a":\\x00}\\xff'


def test_rejected_row_is_bounded_in_bytes_with_a_note_of_the_size(store: StoreWriter) -> None:
    """A 60 KB topic and a reason quoting it are kept cut, saying how large they were:
    topic, reason and body of one row together stay within KEEP_ROW_BYTES."""
    topic = "logs/" + "é" * 30_000
    reason = f"topic field {topic} does not match"
    body = b"\xff" * 70_000
    store.record([], [Refused(topic, body, Rejection("topic_mismatch", reason))] * 3)
    rows = store.rejected(after=0, limit=10)
    assert len(rows) == 3
    for row in rows:
        assert row.mqtt_topic.startswith("logs/éé")
        assert row.mqtt_topic.endswith(f"[{len(topic.encode())} bytes in all]")
        assert row.reason.startswith("topic field logs/éé")
        assert row.reason.endswith(f"[{len(reason.encode())} bytes in all]")
        assert row.body.startswith("\\xff\\xff")
        assert row.body.endswith("[70000 bytes in all]")
        size = sum(len(text.encode()) for text in (row.mqtt_topic, row.reason, row.body))
        assert size <= KEEP_ROW_BYTES
    stats = store.stats()
    assert (stats.rejected, stats.received, stats.rejected_by_code) == (3, 3, {"topic_mismatch": 3})


def test_rejected_table_is_bounded_but_counter_is_exact(store: StoreWriter) -> None:
    """A flood of garbage cannot fill the disk; the count still says how much there was."""
    junk = [Refused("logs/t", b"?", Rejection("not_json", "no")) for _ in range(KEEP_REJECTED + 50)]
    store.record([], junk)
    assert store.stats().rejected == KEEP_REJECTED + 50
    assert len(store.rejected(after=0, limit=KEEP_REJECTED + 100)) == KEEP_REJECTED


def test_heartbeats_are_per_bridge_and_timed_on_the_stores_clock(url: StoreUrl) -> None:
    """Each bridge's liveness is its own. Its uptime runs from its run's first beat, on the
    store's clock (the bridge sends no time, so it is never negative); a new run of the same
    bridge starts it afresh; past the alive window the bridge is dead."""
    with closing(open_writer(url, StoreOptions(alive_s=1.0))) as store:
        assert store.stats().uptime_s is None
        store.heartbeat("b1", "run-1")
        assert store.bridge_uptime("b2") is None
        time.sleep(0.5)
        store.heartbeat("b1", "run-1")
        store.heartbeat("b2", "run-a")
        b1, b2, oldest = store.bridge_uptime("b1"), store.bridge_uptime("b2"), store.stats()
        assert b1 is not None
        assert 0.45 <= b1 < 1.0
        assert b2 is not None
        assert 0 <= b2 < 0.3
        assert oldest.uptime_s is not None
        assert oldest.uptime_s >= b1 - 0.001
        store.heartbeat("b1", "run-2")  # b1 restarted
        restarted = store.bridge_uptime("b1")
        assert restarted is not None
        assert 0 <= restarted < 0.3
        time.sleep(1.1)
        assert store.bridge_uptime("b1") is None
        assert store.stats().uptime_s is None


def test_payload_round_trips_unicode_and_nesting(store: StoreWriter) -> None:
    """What goes in comes out, as JSON."""
    payload = {"msg": "żółw 🐢", "nested": {"list": [1, 2.5, None, True]}}
    store.record([event("t", "u", **payload)], [])
    (stored,) = store.events(topic="t", after=0, limit=1)
    assert stored.payload == json.loads(json.dumps(payload))


def test_timestamp_comes_back_as_written(store: StoreWriter) -> None:
    """The publisher's offset and microseconds survive, whatever the store keeps inside."""
    stamps = [
        datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-8))),
    ]
    store.record(
        [event("t", str(i)).model_copy(update={"timestamp": ts}) for i, ts in enumerate(stamps)],
        [],
    )
    stored = store.events(topic="t", after=0, limit=10)
    assert [e.timestamp for e in stored] == [ts.isoformat() for ts in stamps]
    assert all(datetime.fromisoformat(e.received_at).utcoffset() == timedelta(0) for e in stored)


def store_execute(url: StoreUrl, query: str) -> None:
    """Run one statement on either kind of store, behind its back."""
    if isinstance(url, PostgresUrl):
        pg_execute(url.url, query)
        return
    with closing(sqlite3.connect(url.path)) as conn, conn:
        conn.execute(query)


def test_stored_per_second_counts_the_recent_events_and_then_only_new_ones(
    store: StoreWriter, url: StoreUrl
) -> None:
    """The last minutes per second of the store's clock; events stored before are left out,
    and `after` counts only what came since."""
    store.record([event("t", str(i)) for i in range(5)], [])
    store_execute(url, "UPDATE events SET received_at = '2000-01-01T00:00:00.000000+00:00'")
    store.record([event("t", "5"), event("u", "6"), event("t", "5")], [])
    store.record([event("t", "7")], [])
    newest = store.events(topic=None, after=0, limit=1, newest=True)[0].seq
    with closing(open_reader(url)) as reader:
        rate = reader.stored_per_second(seconds=300)
        assert sum(rate.counts.values()) == 3
        assert all(rate.now - 301 < second <= rate.now for second in rate.counts)
        assert abs(rate.now - time.time()) < 5
        assert rate.next_after == newest
        idle = reader.stored_per_second(seconds=300, after=rate.next_after)
        assert (idle.counts, idle.next_after) == ({}, newest)
        store.record([event("t", "8")], [])
        later = reader.stored_per_second(seconds=300, after=rate.next_after)
        assert sum(later.counts.values()) == 1
        assert later.next_after > newest
        ahead = reader.stored_per_second(seconds=300, after=later.next_after + 10)
        assert (ahead.counts, ahead.next_after) == ({}, later.next_after)


def test_first_recent_bisects_over_gaps_in_seq() -> None:
    """Seq may have gaps (PostgreSQL spends one on every duplicate): the boundary is still the
    first recent row, found in a logarithmic number of lookups."""
    recent = {seq: seq >= 700 for seq in range(1, 1000, 3)}
    probes: list[int] = []

    def probe(seq: int) -> tuple[int, bool]:
        probes.append(seq)
        found = min(s for s in recent if s >= seq)
        return found, recent[found]

    assert 697 < first_recent(probe, 1, 998) <= 700
    assert len(probes) <= 11
    assert first_recent(lambda seq: (seq, True), 1, 998) == 1
    assert first_recent(lambda seq: (seq, False), 1, 998) == 998


def test_reader_reports_missing_store(url: StoreUrl) -> None:
    """The sidecar may start before the bridge: it says so instead of crashing."""
    with (
        closing(open_reader(url)) as reader,
        pytest.raises(StoreUnavailable, match="does not exist yet"),
    ):
        reader.stats()


def test_reader_sees_what_the_writer_committed_and_cannot_write(
    store: StoreWriter, url: StoreUrl
) -> None:
    """The sidecar's reader reads the bridge's data. It has no write method (the type
    checker holds the sidecar to that), and its database connections refuse writes too."""
    store.record([event("t", "1")], [])
    with closing(open_reader(url)) as reader:
        assert [e.event_id for e in reader.events(topic=None, after=0, limit=10)] == ["1"]
        assert isinstance(reader, SQLiteReader | PostgresReader)
        assert not hasattr(reader, "record")
        with (
            pytest.raises(StoreUnavailable, match=r"read-?only"),
            reader._read() as conn,  # noqa: SLF001 (what a write there would meet)
        ):
            conn.execute("DELETE FROM events")
    assert store.stats().unique_processed == 1


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    """A store written by a newer logagg is left alone, with a clear message."""
    url = parse_store_url(f"sqlite:///{tmp_path / 's.db'}")
    open_writer(url).close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(SchemaTooNew, match="upgrade logagg"):
        open_writer(url)


def test_sqlite_unwritable_store_raises_store_unavailable(tmp_path: Path) -> None:
    """Infrastructure failures surface as StoreUnavailable, which the bridge retries."""
    writer = open_writer(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"))
    blocker = sqlite3.connect(tmp_path / "s.db", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            writer.record([event("t", "1")], [])
    finally:
        blocker.rollback()
        blocker.close()
    assert writer.record([event("t", "1")], []).stored == 1
    writer.close()


def test_store_url_is_refused_when_parsed() -> None:
    """A typo in --store is a clear error, not a crash deep inside."""
    with pytest.raises(ValueError, match="unsupported store URL scheme 'mysql'"):
        parse_store_url("mysql://x")
    with pytest.raises(ValueError, match="needs a path"):
        parse_store_url("sqlite://x.db")


def test_store_url_is_read_once_into_its_parts() -> None:
    """Relative and absolute SQLite paths; libpq's URL without `schema`, and how to show it."""
    relative, absolute = "sqlite:///data/x.db", "sqlite:////abs/x.db"
    assert parse_store_url(relative) == SQLiteUrl(relative, Path("data/x.db"))
    assert parse_store_url(absolute) == SQLiteUrl(absolute, Path("/abs/x.db"))
    pg = postgres("postgresql://u:pw@db/x?schema=s&connect_timeout=2&sslmode=require")
    assert (pg.conninfo, pg.schema) == (
        "postgresql://u:pw@db/x?connect_timeout=2&sslmode=require",
        "s",
    )
    assert pg.connect_timeout_s == 2.0
    assert pg.display == "postgresql://u@db/x?schema=s&connect_timeout=2&sslmode=require"
    assert "pw" not in repr(pg)


def test_postgres_refuses_newer_schema(pg_url: str) -> None:
    """A schema written by a newer logagg is left alone, with a clear message."""
    open_writer(postgres(pg_url)).close()
    pg_execute(pg_url, "UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(SchemaTooNew, match="upgrade logagg"):
        open_writer(postgres(pg_url))


def test_postgres_reader_does_not_create_the_schema(pg_url: str) -> None:
    """Only the bridge creates tables; the sidecar waits for it."""
    with closing(open_reader(postgres(pg_url))) as reader, pytest.raises(StoreUnavailable):
        reader.stats()
    schema = pg_url.split("?schema=")[1]
    with psycopg.connect(pg_url.split("?")[0]) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_postgres_unreachable_raises_store_unavailable_without_the_password() -> None:
    """A server that is down is a StoreUnavailable naming why; the URL's password is not shown."""
    url = f"postgres://postgres:s3cret@127.0.0.1:{free_port()}/test?connect_timeout=1"
    with pytest.raises(StoreUnavailable) as caught:
        open_writer(postgres(url))
    message = str(caught.value)
    assert "refused" in message
    assert "postgres@127.0.0.1" in message
    assert "s3cret" not in message


def test_redact_url_drops_the_password() -> None:
    """Store URLs are shown in logs and HTTP answers: never with their password."""
    assert (
        redact_url("postgresql://u:pw@db:5432/x?password=pw&sslmode=require&schema=s")
        == "postgresql://u@db:5432/x?sslmode=require&schema=s"
    )


def test_postgres_bridges_starting_together_create_the_schema_once(pg_url: str) -> None:
    """Several bridges starting at once on an empty database all come up."""
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_writer(postgres(pg_url)), range(4)))
    for opened in stores:
        opened.record([event("t", "1")], [])
        opened.close()
    with closing(open_reader(postgres(pg_url))) as reader:
        assert reader.stats().unique_processed == 1


def test_postgres_concurrent_overlapping_batches_store_each_key_once(pg_url: str) -> None:
    """Two bridges recording overlapping keys at the same moment, in different orders: each
    key is stored once, new and duplicate counts add up exactly, and nobody deadlocks."""
    writers = [open_writer(postgres(pg_url)) for _ in range(2)]
    rounds, per_round, batch = 15, 300, 200
    start = threading.Barrier(len(writers), timeout=30)

    def run(n: int) -> list[BatchOutcome]:
        rng = random.Random(n)
        outcomes = []
        for r in range(rounds):
            ids = rng.sample(range(r * per_round, (r + 1) * per_round), batch)
            events = [event(f"t{i % 7}", str(i)) for i in ids]
            junk = [Refused("logs/x", b"?", Rejection(rng.choice("ab"), "no")) for _ in range(3)]
            start.wait()
            outcomes.append(writers[n].record(events, junk))
        return outcomes

    try:
        with ThreadPoolExecutor(len(writers)) as pool:
            results = [o for outcomes in pool.map(run, range(len(writers))) for o in outcomes]
        stats = writers[0].stats()
        stored = writers[0].events(topic=None, after=0, limit=rounds * per_round)
    finally:
        for w in writers:
            w.close()
    sent = len(writers) * rounds * batch
    keys = [(e.topic, e.event_id) for e in stored]
    assert len(keys) == len(set(keys))
    assert sum(o.stored for o in results) == len(keys) == stats.unique_processed
    assert sum(len(o.duplicates) for o in results) == sent - len(keys) == stats.duplicate_dropped
    assert stats.rejected == sum(stats.rejected_by_code.values()) == len(writers) * rounds * 3


def test_postgres_dropped_connection_is_replaced(pg_url: str) -> None:
    """After PostgreSQL dropped the store's connections (a restart, a failover), the next
    call gets a fresh one instead of failing."""
    with closing(open_writer(postgres(f"{pg_url}&application_name=logagg-dropped"))) as opened:
        opened.record([event("t", "1")], [])
        pg_execute(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'logagg-dropped'",
        )
        assert opened.record([event("t", "2")], []).stored == 1


@pytest.mark.parametrize(
    ("durability", "setting"),
    [(Durability.FULL, "on"), (Durability.NORMAL, "local"), (Durability.OFF, "off")],
)
def test_postgres_durability_is_synchronous_commit(
    pg_url: str, durability: Durability, setting: str
) -> None:
    """`--durability` chooses how long a commit waits, as documented in the store."""
    # A session setting is only visible from inside the session: ask a pooled connection.
    with (
        closing(PostgresWriter(postgres(pg_url), StoreOptions(durability))) as opened,
        opened._pool.connection() as conn,  # noqa: SLF001 (its own sessions are the point)
    ):
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row == (setting,)


@pytest.mark.parametrize("durability", list(Durability))
def test_sqlite_durability_is_synchronous(tmp_path: Path, durability: Durability) -> None:
    """`--durability` is SQLite's `synchronous` of the same name on the writer's connection."""
    path = tmp_path / "s.db"
    with closing(SQLiteWriter(path, StoreOptions(durability))) as opened:
        (level,) = opened._connection.execute("PRAGMA synchronous").fetchone()  # noqa: SLF001 (on its connection)
    assert level == {Durability.OFF: 0, Durability.NORMAL: 1, Durability.FULL: 2}[durability]


def test_postgres_sessions_carry_the_hold_timeouts(pg_url: str) -> None:
    """`store_hold_s` sets how long one session may hold the others: idle in a transaction
    that long, the server ends it; a lock wait gives up after twice that, a statement after
    six times."""
    with (
        closing(PostgresWriter(postgres(pg_url), StoreOptions(hold_s=1.5))) as opened,
        opened._pool.connection() as conn,  # noqa: SLF001 (its own sessions are the point)
    ):
        row = conn.execute(
            "SELECT current_setting('idle_in_transaction_session_timeout'),"
            " current_setting('lock_timeout'), current_setting('statement_timeout')"
        ).fetchone()
    assert row == ("1500ms", "3s", "9s")


def test_postgres_writer_stuck_inside_its_transaction_holds_readers_not_writers(
    pg_url: str,
) -> None:
    """A store session that stops inside its batch's transaction (as a SIGSTOPped bridge
    could, between its statement and the commit) holds no other writer: another one
    commits at once. Readers stop at the watermark below the stuck batch's seqs (it may
    still commit), until the server ends the session after `hold_s`; then they see the
    other writer's event, and the stuck batch, rolled back, goes in whole when retried."""
    hold_s = 1.0
    with ExitStack() as opened:

        def writer() -> PostgresWriter:
            made = PostgresWriter(postgres(pg_url), StoreOptions(hold_s=hold_s))
            return opened.enter_context(closing(made))

        stuck, other = writer(), writer()
        # Two writers that drew one counter slot wait on each other's rows (correct, only
        # slower: `SLOTS`); one in 64 runs did, and failed here.
        while other.slot == stuck.slot:
            other = writer()
        stuck.record([event("t", "0")], [])  # the schema exists
        statement, params = stuck.batch([event("t", "lost")], [])
        waited = []

        def stop_inside_transaction() -> None:
            with stuck._connection("write") as conn, conn.transaction():  # noqa: SLF001 (a writer stopped inside its transaction)
                conn.execute(statement, params)
                began = time.monotonic()
                assert other.record([event("t", "1")], []).stored == 1
                assert time.monotonic() - began < hold_s / 2  # not held
                seen = [e.event_id for e in other.events(topic=None, after=0, limit=10)]
                assert seen == ["0"]  # "1" is above the stuck batch's seqs
                while time.monotonic() - began < 10 and seen == ["0"]:
                    time.sleep(0.05)
                    seen = [e.event_id for e in other.events(topic=None, after=0, limit=10)]
                assert seen == ["0", "1"]
                waited.append(time.monotonic() - began)
                conn.execute("SELECT 1")  # wakes up: its session is gone

        with pytest.raises(StoreUnavailable, match="idle-in-transaction"):
            stop_inside_transaction()
        assert hold_s * 0.9 < waited[0] < hold_s * 2 + 1
        assert stuck.record([event("t", "1"), event("t", "lost")], []).stored == 1  # retried
        stats = other.stats()
        keys = [e.event_id for e in other.events(topic=None, after=0, limit=10)]
    assert keys == ["0", "1", "lost"]  # "lost" was rolled back with its session
    assert (stats.unique_processed, stats.duplicate_dropped) == (3, 1)


def test_postgres_lock_held_outside_logagg_is_waited_for_boundedly(pg_url: str) -> None:
    """A session that is not logagg's holds a counter row and walks away: a batch waits for
    the lock twice `hold_s`, then fails as unavailable, saying why (the bridge retries)."""
    with closing(open_writer(postgres(pg_url), StoreOptions(hold_s=0.5))) as store:
        store.record([event("t", "1")], [])
        with pg_connect(pg_url, autocommit=False) as blocker:
            blocker.execute("UPDATE topic_stats SET unique_processed = unique_processed")
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                store.record([event("t", "2")], [])
            waited = time.monotonic() - began
            blocker.rollback()
        assert 0.9 < waited < 3
        assert store.record([event("t", "2")], []).stored == 1
