"""Retention and the dedup horizon (issue 12), on both stores: what expires, what every
read still returns, what a re-sent copy counts as, and the counters through a SIGKILL."""

from __future__ import annotations

import json
import logging
import math
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api import ApiSettings
from bridge.event import Event
from bridge.query import Query, parse_query
from bridge.retention import (
    KEEP_FOREVER,
    MIN_DEFAULT_HORIZON_S,
    RetentionPolicy,
    Rule,
    make_policy,
    parse_duration,
    parse_rule,
)
from bridge.settings import BridgeSettings
from bridge.store import (
    PostgresUrl,
    Stats,
    StoredEvent,
    StoreOptions,
    StoreReader,
    StoreUrl,
    StoreWriter,
    open_reader,
    open_writer,
    parse_store_url,
    postgres_retention,
    sqlite_retention,
    sqlite_text,
)
from bridge.store.export import export_pages
from bridge.store.policy import SQLITE_PACE, chunks
from bridge.store.postgres_retention import (
    FENCE_SHARED,
    PURGE_LOCK,
    purge_chunk,
    rebuild_text_index,
)
from bridge.store.space import WAL_LIMIT_BYTES
from bridge.store.sqlite_text import text_path
from logagg.options import as_environment
from logagg.settings import UpSettings
from logagg.views import server_sent_events
from supervise.mosquitto import Mosquitto
from tests.helpers import (
    StartBridge,
    event,
    logagg_cli,
    nowhere,
    pg_connect,
    postgres,
    publish_raw,
    samples,
    serving,
    value,
    wait_for_stats,
)

NEVER: Callable[[], bool] = lambda: False  # noqa: E731 - a purge that is never stopped


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    """A URL for a store that does not exist yet, of each kind."""
    if request.param == "postgres":
        return parse_store_url(str(request.getfixturevalue("pg_url")))
    return parse_store_url(f"sqlite:///{tmp_path / 'store.db'}")


def writer(url: StoreUrl, retention: str, *rules: str, horizon: str | None = None) -> StoreWriter:
    """A writer declaring the policy the bridge's settings make of these values."""
    settings = BridgeSettings.model_validate(
        {"store": url, "retention": retention, "retention_topic": rules, "dedup_horizon": horizon}
    )
    return open_writer(url, settings.store_options)


def made(topic: str, event_id: str, *, age_s: float = 0.0) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp=datetime.now(UTC) - timedelta(seconds=age_s),
        source="test",
        payload={"msg": f"hello {event_id}", "n": 1},
    )


def keys(events: Sequence[StoredEvent | Event]) -> set[tuple[str, str]]:
    return {(e.topic, e.event_id) for e in events}


def ask(*params: tuple[str, str]) -> Query:
    query = parse_query(params, now=datetime.now(UTC))
    assert isinstance(query, Query), query
    return query


def everything_read(reader: StoreReader) -> dict[str, set[tuple[str, str]]]:
    """What each kind of read returns, as (topic, event_id) sets (histograms and spans as
    whether they see anything)."""
    plain, text, ranged = ask(), ask(("q", "hello")), ask(("since", "1h"))
    wildcard = ask(("topic", "+"))
    rate = reader.stored_per_second(seconds=600)
    return {
        "events": keys(reader.events(topic=None, after=0, limit=1000)),
        "events_newest": keys(reader.events(topic=None, after=0, limit=1000, newest=True)),
        "events_sized": keys(reader.events(topic=None, after=0, limit=1000, max_bytes=10**6)),
        "search": keys(reader.search(plain)),
        "search_text": keys(reader.search(text)),
        "search_time": keys(reader.search(ranged)),
        "search_wildcard": keys(reader.search(wildcard)),
        "search_desc": keys(reader.search(ask(("order", "desc")))),
        "histogram": {("count", str(sum(bar.count for bar in reader.histogram(plain, 60))))},
        "time_span": {("span", str(reader.time_span(plain) is not None))},
        "rate": {("count", str(sum(rate.counts.values())))},
        "export": {
            (event["topic"], event["event_id"])
            for page in export_pages(reader, plain)
            for event in map(json.loads, page.lines)
        },
    }


def row_count(url: StoreUrl) -> int:
    """Rows in the events table, expired or not: what the purge has left."""
    if isinstance(url, PostgresUrl):
        with pg_connect(url, autocommit=False) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
            return int(row[0]) if row else 0
    with closing(sqlite3.connect(url.path)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def assert_consistent(stats: Stats, rows: int) -> None:
    """The counters and the rows agree: every stored event is either still there or
    counted as expired, and every message received is counted once."""
    assert stats.received == stats.unique_processed + stats.duplicate_dropped + stats.rejected
    assert stats.retention is not None
    assert rows == stats.unique_processed - stats.retention.events_expired


# ---- settings and the policy ----


def test_retention_durations_parse_and_refuse() -> None:
    """Durations in s/m/h/d/w and forever; anything else refused with a reason."""
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("12h") == 43_200
    assert parse_duration("30d") == 30 * 86_400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("forever") is None
    for bad in ("", "10", "3x", "-1d", "0s", "1000000d"):
        assert isinstance(parse_duration(bad), str), bad
    assert isinstance(parse_rule("debug/#"), str)
    assert isinstance(parse_rule("a/#/b=1d"), str)
    assert isinstance(parse_rule("=1d"), str)
    assert isinstance(parse_rule("debug/#=1y"), str)


def test_retention_rules_first_match_wins() -> None:
    """Per-topic filters are tried in order; a topic none names keeps the default."""
    rules = [parse_rule(text) for text in ("debug/x=1h", "debug/#=1d", "audit/#=forever")]
    policy = make_policy(86_400, [rule for rule in rules if isinstance(rule, Rule)])
    assert policy.keep_s("debug/x") == 3600
    assert policy.keep_s("debug/y/z") == 86_400
    assert policy.keep_s("debug") == 86_400  # `#` names its parent too, as in MQTT
    assert policy.keep_s("audit/login") is None
    assert policy.keep_s("app") == 86_400
    assert policy.horizon_s == MIN_DEFAULT_HORIZON_S


def test_retention_horizon_default() -> None:
    """The horizon defaults to the longest finite retention, at least 7 days; nothing
    expiring needs no horizon."""
    assert make_policy(None, []).horizon_s is None
    assert make_policy(2.0, []).horizon_s == MIN_DEFAULT_HORIZON_S
    assert make_policy(30 * 86_400.0, []).horizon_s == 30 * 86_400
    assert make_policy(2.0, [], None).horizon_s is None
    assert make_policy(2.0, [], 5.0).horizon_s == 5.0
    assert make_policy(None, []) == KEEP_FOREVER


def test_retention_purge_interval_follows_retention() -> None:
    """A tenth of the shortest retention, between half a second and a minute."""
    assert make_policy(2.0, []).purge_interval_s == 0.5
    assert make_policy(300.0, []).purge_interval_s == 30
    assert make_policy(30 * 86_400.0, []).purge_interval_s == 60
    assert make_policy(None, []).purge_interval_s == 60


def test_retention_settings_pass_through_logagg_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """`logagg up` hands its bridge the settings as LOGAGG_* variables: the same policy."""
    up = UpSettings.model_validate(
        {"retention": "30d", "retention_topic": ["debug/#=1d", "audit/#=forever"]}
    )
    env = as_environment(up)
    assert env["LOGAGG_RETENTION"] == "30d"
    assert env["LOGAGG_RETENTION_TOPIC"] == "debug/#=1d,audit/#=forever"
    assert "LOGAGG_DEDUP_HORIZON" not in env  # the default, computed by the bridge
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    assert BridgeSettings().retention_policy == up.retention_policy


def test_retention_settings_from_flags_and_environment() -> None:
    """`--retention-topic` repeats; LOGAGG_RETENTION_TOPIC is comma-separated; bad values
    exit 2 naming the flag or variable."""
    shown = logagg_cli("bridge", "--help").output
    assert "--retention-topic" in shown
    assert "LOGAGG_RETENTION_TOPIC" in shown
    bad = logagg_cli("bridge", "--retention", "3 days")
    assert bad.exit_code == 2
    assert "--retention" in bad.stderr
    assert "not a duration" in bad.stderr
    bad = logagg_cli("bridge", "--retention-topic", "a/#/b=1d")
    assert bad.exit_code == 2
    assert "must be the last level" in bad.stderr
    bad = logagg_cli("bridge", "--retention-topic", "a=1d", "--retention-topic", "b/#=1y")
    assert bad.exit_code == 2
    assert "'b/#=1y'" in bad.stderr
    bad = logagg_cli("bridge", env={"LOGAGG_DEDUP_HORIZON": "soon"})
    assert bad.exit_code == 2
    assert "LOGAGG_DEDUP_HORIZON" in bad.stderr
    settings = BridgeSettings(retention_topic="debug/#=1d, audit/#=forever")  # type: ignore[arg-type]
    assert [r.text for r in settings.retention_topic] == ["debug/#=1d", "audit/#=forever"]


# ---- the stores ----


def test_retention_expired_events_gone_from_every_read(url: StoreUrl) -> None:
    """Every read hides expired events at once, before any purge; nothing is deleted."""
    store = writer(url, "1s")
    reader = open_reader(url)
    try:
        store.record([made("a", str(i)) for i in range(5)], [])
        seen = everything_read(reader)
        assert all(seen[name] for name in seen)
        assert len(seen["events"]) == 5
        assert seen["search_text"] == seen["events"]
        time.sleep(1.3)
        store.record([made("b", "fresh")], [])
        seen = everything_read(reader)
        for name in ("events", "events_newest", "events_sized", "search", "search_text"):
            assert seen[name] == {("b", "fresh")}, name
        for name in ("search_time", "search_wildcard", "search_desc", "export"):
            assert seen[name] == {("b", "fresh")}, name
        assert seen["histogram"] == {("count", "1")}
        assert seen["rate"] == {("count", "1")}
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.events_expired == 0
        assert row_count(url) == 6  # hidden, not yet deleted
        time.sleep(1.3)
        assert everything_read(reader)["time_span"] == {("span", "False")}
        assert reader.stats().retention.oldest_received_at is None  # type: ignore[union-attr]
    finally:
        reader.close()
        store.close()


def test_retention_purge_deletes_and_counts(url: StoreUrl) -> None:
    """The purge deletes what expired, keeps each key, and counts both with the rows."""
    store = writer(url, "1s", "b=forever")  # "fresh" outlives a slow purge
    reader = open_reader(url)
    try:
        store.record([made("a", str(i)) for i in range(2000)], [])
        time.sleep(1.2)
        store.record([made("b", "fresh")], [])
        purged = store.purge(NEVER)
        assert purged.events == 2000
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.events_expired == 2000
        assert stats.retention.keys_held == 2000
        assert row_count(url) == 1
        assert_consistent(stats, 1)
        assert store.purge(NEVER).events == 0
    finally:
        reader.close()
        store.close()


def test_retention_purge_rests_as_long_as_each_step_took() -> None:
    """The purge gives way: after each full step it rests at least as long as the step
    took (at most half the time is the purge's), and not after the last, short one."""
    took: list[float] = []
    rests: list[float] = []

    def step(limit: int) -> int:
        began = time.monotonic()
        time.sleep(0.01)
        took.append(time.monotonic() - began)
        return limit if len(took) < 5 else 0

    assert chunks(step, NEVER, SQLITE_PACE, rests.append) is not None
    assert len(rests) == 4
    assert all(rest >= step_s for rest, step_s in zip(rests, took, strict=False))


def test_retention_sqlite_purge_takes_deleted_events_out_of_the_text_index(
    tmp_path: Path,
) -> None:
    """The purge hands the text of what it deleted to the index's thread, which forgets it:
    the index holds only the event kept."""
    path = tmp_path / "store.db"
    store = writer(parse_store_url(f"sqlite:///{path}"), "1s", "b=forever")
    try:
        store.record([made("a", str(i)) for i in range(3000)], [])
        time.sleep(1.2)
        store.record([made("b", "fresh")], [])
        assert store.purge(NEVER).events == 3000
    finally:
        store.close()
    with closing(sqlite3.connect(text_path(path))) as conn:
        hits = conn.execute("SELECT rowid FROM events_fts WHERE events_fts MATCH 'hello'")
        assert len(hits.fetchall()) == 1


def test_retention_sqlite_text_index_compacted_after_each_turnover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under retention the text index stays within twice the size of one built afresh from
    the events kept: each time it has forgotten as many events as the store holds, its
    thread builds a new table beside it and swaps it in (FTS5's own merges, which drop
    deleted entries only when they reach the oldest segment, are off here). Built in small
    steps while the purge goes on, the new table holds exactly the events kept: each delete
    is told only to a table holding its event, and FTS5's integrity check passes."""
    monkeypatch.setattr(sqlite_text, "QUIET_S", 0.0)
    monkeypatch.setattr(sqlite_text, "STEP", 50)
    monkeypatch.setattr(sqlite_text, "COMPACT_AFTER", 1000)
    caplog.set_level(logging.INFO, logger="logagg.bridge.store")
    path = tmp_path / "store.db"
    store = writer(parse_store_url(f"sqlite:///{path}"), "1s")
    with closing(sqlite3.connect(text_path(path))) as conn:
        conn.execute("INSERT INTO events_fts (events_fts, rank) VALUES ('automerge', 0)")
        conn.commit()
    compactions: list[logging.LogRecord] = []
    try:
        for turn in range(5):  # 2,000 events a turn, each expired and purged by the next
            if turn:
                time.sleep(1.1)
                deadline = time.monotonic() + 30
                deleted = 0
                while deleted < 2000:  # all of it, though the index may lag under load
                    assert time.monotonic() < deadline, f"{deleted} of 2,000 purged"
                    deleted += store.purge(NEVER).events
            for start in range(turn * 2000, turn * 2000 + 2000, 100):
                store.record([made("a", f"event-{i}") for i in range(start, start + 100)], [])
        deadline = time.monotonic() + 30
        while len(compactions) < 3:  # about one after each of the four purges
            assert time.monotonic() < deadline, f"{len(compactions)} compactions"
            time.sleep(0.05)
            compactions = [r for r in caplog.records if r.getMessage().startswith("compacted")]
    finally:
        store.close()

    def index() -> tuple[int, set[int]]:
        """The index's bytes and the seqs it finds."""
        with closing(sqlite3.connect(text_path(path))) as conn:
            conn.execute("INSERT INTO events_fts (events_fts) VALUES ('integrity-check')")
            (size,) = conn.execute("SELECT sum(length(block)) FROM events_fts_data").fetchone()
            hits = conn.execute("SELECT rowid FROM events_fts WHERE events_fts MATCH 'hello'")
            return int(size), {seq for (seq,) in hits}

    size, found = index()
    with closing(sqlite3.connect(path)) as conn:
        seqs = {seq for (seq,) in conn.execute("SELECT seq FROM events")}
    assert len(seqs) == 2000
    assert found == seqs
    text_path(path).unlink()
    writer(parse_store_url(f"sqlite:///{path}"), "forever").close()  # built afresh
    fresh, _ = index()
    # Without compactions 3.75x; with them, what the purge deletes after the last one began.
    assert size <= 2 * fresh, (size, fresh)


def test_retention_sqlite_batches_and_purge_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a writer committing back to back and a purge of 20,000 expired events
    take turns: the writer commits between the purge's steps, at least 3 one-event batches
    per step as it has half the time (back to back, SQLite's busy handler let in 2; 4 to 8
    here, 3.7 on a slower machine under load), and the purge finishes."""
    store = writer(parse_store_url(f"sqlite:///{tmp_path / 'store.db'}"), "1s")
    steps = 0
    step = sqlite_retention._purge_chunk  # noqa: SLF001 - to count the purge's steps

    def counted(*args: Any, **kwargs: Any) -> int:
        nonlocal steps
        steps += 1
        return step(*args, **kwargs)

    monkeypatch.setattr(sqlite_retention, "_purge_chunk", counted)
    purged: list[int] = []
    try:
        for start in range(0, 20_000, 1000):
            store.record([made("a", str(i)) for i in range(start, start + 1000)], [])
        time.sleep(1.2)
        purging = threading.Thread(target=lambda: purged.append(store.purge(NEVER).events))
        purging.start()
        batches, deadline = 0, time.monotonic() + 120
        while purging.is_alive() and time.monotonic() < deadline:
            store.record([made("b", f"live-{batches}")], [])
            batches += 1
        purging.join(10)
        assert purged == [20_000]
        assert steps >= 10
        assert batches >= 3 * steps
    finally:
        store.close()


def test_retention_sqlite_wal_shrinks_back_after_a_purge(tmp_path: Path) -> None:
    """A reader's snapshot held through a burst of writes grows the WAL past its checkpoint
    size; after the purge and the next batch it is back within `WAL_LIMIT_BYTES` (without
    journal_size_limit it kept its high-water mark for good)."""
    path = tmp_path / "store.db"
    store = writer(parse_store_url(f"sqlite:///{path}"), "1s")
    wal = Path(f"{path}-wal")
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as held:
            held.execute("BEGIN")
            held.execute("SELECT count(*) FROM events").fetchone()
            for start in range(0, 10_000, 1000):
                big = [made("a", str(i)) for i in range(start, start + 1000)]
                store.record(
                    [e.model_copy(update={"payload": {"pad": "x" * 1000}}) for e in big], []
                )
            held.execute("COMMIT")
        assert wal.stat().st_size > 2 * WAL_LIMIT_BYTES
        time.sleep(1.2)
        assert store.purge(NEVER).events == 10_000
        store.record([made("a", "after")], [])
        assert wal.stat().st_size <= WAL_LIMIT_BYTES
    finally:
        store.close()


# slow: lets the duplicate horizon pass; the purge's counting is in the fast set
@pytest.mark.slow
def test_retention_horizon_counts_copies_then_forgets(url: StoreUrl) -> None:
    """Within the horizon a copy of an expired event is a duplicate and is not stored; once
    the key is forgotten, a copy is stored again (and counted as new)."""
    store = writer(url, "1s", horizon="2s")
    reader = open_reader(url)
    try:
        store.record([made("a", "1"), made("a", "2")], [])
        time.sleep(1.2)
        assert store.purge(NEVER).events == 2
        outcome = store.record([made("a", "1"), made("a", "3")], [])
        assert outcome.stored == 1
        assert outcome.duplicates == [("a", "1")]
        assert keys(reader.events(topic=None, after=0, limit=10)) == {("a", "3")}
        stats = reader.stats()
        assert stats.duplicate_dropped == 1
        assert stats.unique_processed == 3
        assert_consistent(stats, row_count(url))
        time.sleep(2.2)
        purged = store.purge(NEVER)
        assert purged.keys_forgotten == 2
        assert purged.events == 1
        outcome = store.record([made("a", "2")], [])
        assert outcome.stored == 1
        assert not outcome.duplicates
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.keys_forgotten == 2
        assert stats.retention.keys_held == 1
        assert keys(reader.events(topic=None, after=0, limit=10)) == {("a", "2")}
        assert_consistent(stats, row_count(url))
    finally:
        reader.close()
        store.close()


def test_retention_per_topic_overrides(url: StoreUrl) -> None:
    """First match wins: `keep/#` forever, `short/+` 1 s, the rest 1 h."""
    store = writer(url, "1h", "short/+=1s", "keep/#=forever", "short/#=1h")
    reader = open_reader(url)
    try:
        batch = [
            made(t, str(i)) for t in ("short/a", "short/a/b", "keep/x", "app") for i in range(3)
        ]
        store.record(batch, [])
        time.sleep(1.2)
        expected = {(e.topic, e.event_id) for e in batch if e.topic != "short/a"}
        seen = everything_read(reader)
        for name in ("events", "events_newest", "search", "search_text", "search_wildcard"):
            if name == "search_wildcard":  # `+`: one-level topics only
                assert seen[name] == {k for k in expected if k[0] == "app"}, name
            else:
                assert seen[name] == expected, name
        assert seen["histogram"] == {("count", "9")}
        assert keys(reader.search(ask(("topic", "short/a")))) == set()
        assert store.purge(NEVER).events == 3
        assert row_count(url) == 9
        assert_consistent(reader.stats(), 9)
    finally:
        reader.close()
        store.close()


def test_retention_late_events_stored_and_counted(url: StoreUrl) -> None:
    """An event whose timestamp is older than its retention on arrival is stored (retention
    is by arrival) and counted as late."""
    store = writer(url, "1h", "keep/#=forever")
    reader = open_reader(url)
    try:
        outcome = store.record(
            [made("a", "old", age_s=7200), made("a", "new"), made("keep/x", "old", age_s=10**6)],
            [],
        )
        assert outcome.stored == 3
        assert len(reader.events(topic=None, after=0, limit=10)) == 3
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.late == 1
        # A copy is not late again; another writer's late events add up (on PostgreSQL,
        # each writer counts them in its own row, in its batch's statement).
        other = writer(url, "1h", "keep/#=forever")
        try:
            outcome = other.record([made("a", "old", age_s=7200), made("b", "x", age_s=7200)], [])
        finally:
            other.close()
        assert outcome.stored == 1
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.late == 2
    finally:
        reader.close()
        store.close()


def test_retention_policy_lives_in_the_store(url: StoreUrl) -> None:
    """Readers take the policy the last bridge wrote, whatever their own options say; a
    bridge started without retention puts forever back."""
    store = writer(url, "1s")
    store.record([made("a", "1")], [])
    reader = open_reader(url, StoreOptions())
    try:
        time.sleep(1.2)
        assert reader.events(topic=None, after=0, limit=10) == []
        store.close()
        store = open_writer(url)  # forever
        assert len(reader.events(topic=None, after=0, limit=10)) == 1
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.policy == RetentionPolicy()
    finally:
        reader.close()
        store.close()


def test_retention_upgrade_from_schema_3(url: StoreUrl) -> None:
    """A schema 3 store (before retention) opens as schema 4 with its events intact."""
    store = open_writer(url)
    store.record([made("a", str(i)) for i in range(10)], [])
    store.close()
    drop = (
        "DROP TABLE expired_keys; DROP TABLE retention_counts;"
        " UPDATE meta SET value = '3' WHERE key = 'schema_version';"
        " DELETE FROM meta WHERE key = 'retention_policy'"
    )
    if isinstance(url, PostgresUrl):
        with pg_connect(url) as conn:
            conn.execute(drop)
    else:
        with closing(sqlite3.connect(url.path)) as conn:
            conn.executescript(drop)
    store = writer(url, "1h")
    reader = open_reader(url)
    try:
        assert len(reader.events(topic=None, after=0, limit=100)) == 10
        stats = reader.stats()
        assert stats.retention is not None
        assert stats.retention.policy.default_s == 3600
        assert store.purge(NEVER).events == 0
    finally:
        reader.close()
        store.close()


def test_retention_postgres_one_purger_at_a_time(pg_url: str) -> None:
    """While another session holds the purge lock, a bridge's purge skips its pass."""
    url = postgres(pg_url)
    store = writer(url, "1s")
    try:
        store.record([made("a", str(i)) for i in range(10)], [])
        time.sleep(1.2)
        with pg_connect(url, autocommit=False) as other:
            other.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (PURGE_LOCK,)
            )
            purged = store.purge(NEVER)
            assert purged.skipped
            assert purged.events == 0
        assert store.purge(NEVER).events == 10
    finally:
        store.close()


def text_index(conn: psycopg.Connection[Any]) -> tuple[int, list[str]]:
    """The text index's file number, and the names of the events table's invalid indexes."""
    (number,) = conn.execute(
        "SELECT relfilenode FROM pg_class WHERE oid = 'events_tsv'::regclass"
    ).fetchone() or (0,)
    invalid = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index"
        " WHERE indrelid = 'events'::regclass AND NOT indisvalid"
    ).fetchall()
    return int(number), [name for (name,) in invalid]


def test_retention_postgres_text_index_rebuilt_after_a_turnover(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the purge has deleted as many events as the table holds (and REBUILD_AFTER),
    the GIN text index is rebuilt, concurrently; what a rebuild cut short left (an invalid
    copy) is dropped first; searches find what is kept; no rebuild again until the next
    turnover."""
    monkeypatch.setattr(postgres_retention, "REBUILD_AFTER", 1000)
    url = postgres(pg_url)
    store = writer(url, "1s", "b=forever")
    reader = open_reader(url)
    try:
        with pg_connect(url) as conn:
            store.record([made("a", f"old{i}") for i in range(3000)], [])
            # A rebuild killed midway leaves its copy, invalid: a failed CREATE INDEX
            # CONCURRENTLY leaves one just as well.
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("CREATE UNIQUE INDEX CONCURRENTLY events_tsv_ccnew ON events (topic)")
            before, invalid = text_index(conn)
            assert invalid == ["events_tsv_ccnew"]
            time.sleep(1.2)
            store.record([made("b", "fresh")], [])
            assert store.purge(NEVER).events == 3000
            after, invalid = text_index(conn)
            assert after != before
            assert invalid == []
            assert keys(reader.search(ask(("q", "fresh")))) == {("b", "fresh")}
            assert keys(reader.search(ask(("q", "old7")))) == set()
            store.record([made("a", f"new{i}") for i in range(10)], [])
            time.sleep(1.2)
            assert store.purge(NEVER).events == 10
            assert text_index(conn)[0] == after  # 10 deleted since: not due
    finally:
        reader.close()
        store.close()


def test_retention_postgres_text_index_rebuild_stops_when_told(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild waits for the transactions using the table; stopping cancels it at once,
    the index stays as it was and searches go on, and the next rebuild completes and leaves
    no invalid copy behind."""
    monkeypatch.setattr(postgres_retention, "REBUILD_AFTER", 100)
    url = postgres(pg_url)
    store = writer(url, "1s", "b=forever")
    reader = open_reader(url)
    try:
        store.record([made("a", str(i)) for i in range(200)], [])
        store.record([made("b", "kept")], [])
        with (
            pg_connect(url) as conn,
            pg_connect(url, autocommit=False) as old,
        ):
            with conn.transaction():
                assert purge_chunk(conn, "a", 10**12, 1000) == 200  # due now, not rebuilt
            number = text_index(conn)[0]
            old.execute("SELECT count(*) FROM events").fetchone()  # holds the table open
            began = time.monotonic()
            assert rebuild_text_index(conn, lambda: time.monotonic() > began + 1) is None
            assert time.monotonic() - began < 5
            assert keys(reader.search(ask(("q", "kept")))) == {("b", "kept")}
            old.rollback()
            assert rebuild_text_index(conn, NEVER) is not None
            rebuilt, invalid = text_index(conn)
            assert rebuilt != number
            assert invalid == []
            assert keys(reader.search(ask(("q", "kept")))) == {("b", "kept")}
    finally:
        reader.close()
        store.close()


def test_retention_postgres_text_index_rebuilt_once_by_two_bridges(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bridges that both saw a rebuild due rebuild it once: the second, taking the lock
    after the first has released it, finds it no longer due."""
    monkeypatch.setattr(postgres_retention, "REBUILD_AFTER", 100)
    url = postgres(pg_url)
    store = writer(url, "1s")
    try:
        store.record([made("a", str(i)) for i in range(200)], [])
        with (
            pg_connect(url) as conn,
            pg_connect(url) as other,
        ):
            with conn.transaction():
                assert purge_chunk(conn, "a", 10**12, 1000) == 200  # due now
            rebuilt: list[int] = []

            def other_rebuilds_first() -> bool:
                # Asked once the rebuild is seen due, before the lock is tried.
                if not rebuilt:
                    assert rebuild_text_index(other, NEVER) is not None
                    rebuilt.append(text_index(conn)[0])
                return False

            assert rebuild_text_index(conn, other_rebuilds_first) is None
            assert text_index(conn)[0] == rebuilt[0]
    finally:
        store.close()


def test_retention_postgres_copy_during_purge_is_duplicate(pg_url: str) -> None:
    """A copy arriving while a purge chunk deletes its event waits on the deleted row; once
    the chunk commits, its statement inserts it (its snapshot is older than the kept key),
    and the check after it finds the key, rolls back and runs the batch again behind the
    fence: a duplicate. Without that check it would be stored again."""
    url = postgres(pg_url)
    store = writer(url, "1h")
    reader = open_reader(url)
    try:
        store.record([made("a", "1")], [])
        outcome: list[object] = []
        with pg_connect(url, autocommit=False) as purger:
            assert purge_chunk(purger, "a", 2**62, 100) == 1
            copy = threading.Thread(
                target=lambda: outcome.append(store.record([made("a", "1")], []))
            )
            copy.start()
            blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            deadline = time.monotonic() + 10
            with psycopg.connect(url.conninfo, autocommit=True) as watcher:
                # The copy's statement has started and waits on the chunk's transaction.
                while watcher.execute(blocked, (purger.info.backend_pid,)).fetchone() != (1,):
                    assert time.monotonic() < deadline, "the copy never waited for the chunk"
                    time.sleep(0.05)
            assert copy.is_alive()
        # The purger's transaction commits here.
        copy.join(10)
        assert not copy.is_alive()
        assert outcome[0].stored == 0  # type: ignore[attr-defined]
        assert reader.events(topic=None, after=0, limit=10) == []
        stats = reader.stats()
        assert stats.unique_processed == 1
        assert stats.duplicate_dropped == 1
        assert stats.retention is not None
        assert stats.retention.events_expired == 1
    finally:
        reader.close()
        store.close()


def test_retention_postgres_batch_does_not_wait_for_a_chunk(pg_url: str) -> None:
    """A batch with no copy of an event being purged takes no lock a purge chunk holds: it
    commits while a chunk's transaction is open. The control: the fence, which a batch
    that raced a chunk takes to run again, is held by that chunk."""
    url = postgres(pg_url)
    store = writer(url, "1h")
    try:
        store.record([made("a", "1")], [])
        with pg_connect(url, autocommit=False) as purger:
            assert purge_chunk(purger, "a", 2**62, 100) == 1
            started = time.monotonic()
            assert store.record([made("b", "1"), made("a", "2")], []).stored == 2
            assert time.monotonic() - started < 5  # the old path waited for lock_timeout, 10 s
            with pg_connect(url) as retry:
                retry.execute("SET lock_timeout = '200ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    retry.execute(FENCE_SHARED)
    finally:
        store.close()


def test_retention_postgres_purge_keeps_the_key_plans_current(pg_url: str) -> None:
    """A session's cached plan for a key probe, made on the empty `expired_keys`, scans the
    whole table (the control); the purge that fills the table analyzes it as it grows, so
    the plan is made again and probes the index, and the planner's size of the table stays
    within twice the real one (the server here may run without autovacuum)."""
    url = postgres(pg_url)
    store = writer(url, "1s")
    probe = "EXPLAIN EXECUTE probe(1)"
    size = (
        "SELECT relpages, pg_relation_size(oid) / current_setting('block_size')::bigint"
        " FROM pg_class WHERE oid = 'expired_keys'::regclass"
    )
    try:
        with pg_connect(url) as session:
            session.execute("VACUUM ANALYZE expired_keys")
            session.execute("SET plan_cache_mode = force_generic_plan")
            session.execute("PREPARE probe (bigint) AS SELECT 1 FROM expired_keys WHERE key = $1")
            assert "Seq Scan" in str(session.execute(probe).fetchall())
            store.record([made("a", str(i)) for i in range(20_000)], [])
            time.sleep(1.2)
            assert store.purge(NEVER).events == 20_000
            assert "Index" in str(session.execute(probe).fetchall())
            known, real = session.execute(size).fetchone() or (0, 0)
            assert real > 16
            assert real <= 2 * known
    finally:
        store.close()


def test_retention_postgres_purge_locks_leave_the_watermark_moving(pg_url: str) -> None:
    """The purge lock and the fence are two-int4 advisory locks, which the readers' watermark
    does not count: held by sessions that also write `events` (a purge chunk's, a batch's
    fence), they leave every new batch visible at once. The control, a bigint lock held by
    such a session below the newest seq, freezes the watermark: the check can fail."""
    url = postgres(pg_url)
    store = writer(url, "1h")
    reader = open_reader(url)
    sessions: list[psycopg.Connection[tuple[object, ...]]] = []

    def holding(*statements: str) -> None:
        conn = pg_connect(url, autocommit=False)
        sessions.append(conn)
        conn.execute("LOCK TABLE events IN ROW EXCLUSIVE MODE")  # opens the transaction
        for statement in statements:
            conn.execute(statement)

    try:
        store.record([made("a", "0")], [])
        holding(FENCE_SHARED)  # a batch in flight, past the fence
        holding(f"SELECT pg_try_advisory_xact_lock({PURGE_LOCK}, hashtext(current_schema()))")
        for i in range(1, 4):
            store.record([made("a", str(i))], [])
            seen = reader.events(topic=None, after=0, limit=10)
            assert [e.event_id for e in seen] == [str(n) for n in range(i + 1)]
        holding("SELECT pg_advisory_xact_lock_shared(1::bigint)")
        store.record([made("a", "4")], [])
        assert len(reader.events(topic=None, after=0, limit=10)) == 4
    finally:
        for conn in sessions:
            conn.close()
        reader.close()
        store.close()


# ---- the bridge, through a real broker ----


@pytest.fixture(params=["sqlite", "postgres"])
def bridge_store(request: pytest.FixtureRequest, store_url: str) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return store_url


@pytest.mark.broker
def test_retention_bridge_purges_and_counts_copies(
    broker: Mosquitto, bridge_factory: StartBridge, bridge_store: str
) -> None:
    """A bridge with a 2 s retention hides and then deletes what expired; copies re-sent
    within the horizon are counted as duplicates."""
    bridge_factory(store=bridge_store, retention="2s", retention_topic="keep/#=forever")
    first = [("logs/app", json.dumps(event(f"e{i}", "app")).encode()) for i in range(20)]
    kept = [("logs/keep/x", json.dumps(event(f"k{i}", "keep/x")).encode()) for i in range(5)]
    publish_raw(broker.port, first + kept)
    wait_for_stats(bridge_store, lambda s: s.unique_processed == 25, timeout=30)
    url = parse_store_url(bridge_store)
    deadline = time.monotonic() + 30
    while row_count(url) > 5:
        assert time.monotonic() < deadline, "expired events not deleted within 30 s"
        time.sleep(0.2)
    with closing(open_reader(url)) as reader:
        assert {e.topic for e in reader.events(topic=None, after=0, limit=100)} == {"keep/x"}
    publish_raw(broker.port, first)
    stats = wait_for_stats(bridge_store, lambda s: s.received == 45, timeout=30)
    assert stats.duplicate_dropped == 20
    assert stats.unique_processed == 25
    assert_consistent(stats, row_count(url))


def _prefill(url: StoreUrl, count: int) -> None:
    """`count` events stored through the store's own writer, as the bridge writes them."""
    store = open_writer(url)
    try:
        for start in range(0, count, 5000):
            store.record([made("bulk", str(i)) for i in range(start, start + 5000)], [])
    finally:
        store.close()


def _stats(url: StoreUrl) -> Stats:
    with closing(open_reader(url)) as reader:
        return reader.stats()


# slow: SIGKILLs a bridge mid-purge and starts it again
@pytest.mark.slow
@pytest.mark.broker
def test_retention_counters_survive_sigkill_mid_purge(
    bridge_factory: StartBridge, bridge_store: str
) -> None:
    """Killed (SIGKILL) in the middle of purging a large expired backlog, the bridge
    leaves counters that agree with the rows; restarted, it finishes the purge."""
    url = parse_store_url(bridge_store)
    total = 20_000
    _prefill(url, total)
    time.sleep(1.1)
    bridge = bridge_factory(store=bridge_store, retention="1s", wait=False)
    deadline = time.monotonic() + 60
    while True:
        stats = _stats(url)
        assert stats.retention is not None
        if stats.retention.events_expired > 0:
            break
        assert time.monotonic() < deadline, bridge.output()
        time.sleep(0.02)
    bridge.stop(signal.SIGKILL)
    stats = _stats(url)
    assert stats.retention is not None
    assert 0 < stats.retention.events_expired < total, "the kill came after the purge ended"
    assert stats.retention.keys_held == stats.retention.events_expired
    assert_consistent(stats, row_count(url))
    bridge_factory(store=bridge_store, retention="1s")
    deadline = time.monotonic() + 120
    while row_count(url) > 0:
        assert time.monotonic() < deadline, "the restarted bridge did not finish the purge"
        time.sleep(0.2)
    stats = _stats(url)
    assert stats.retention is not None
    assert stats.retention.events_expired == total == stats.retention.keys_held
    assert stats.unique_processed == total
    assert_consistent(stats, 0)


def test_retention_shown_by_stats_metrics_and_cli(url: StoreUrl) -> None:
    """/stats, /metrics and `logagg stats` say the policy, the oldest event kept and what
    expired, from the store alone (the sidecar has no retention setting)."""
    store = writer(url, "1s", "keep/#=forever", horizon="forever")
    try:
        store.record([made("a", "1"), made("a", "2", age_s=10), made("keep/x", "1")], [])
        time.sleep(1.2)
        assert store.purge(NEVER).events == 2
        with serving(ApiSettings(store=url, broker=nowhere())) as client:
            kept = client.get("/stats").json()["retention"]
            assert kept["retention"] == "1s"
            assert kept["retention_s"] == 1
            assert kept["retention_topics"] == ["keep/#=forever"]
            assert kept["dedup_horizon"] == "forever"
            assert kept["dedup_horizon_s"] is None
            assert kept["events_expired"] == 2
            assert kept["keys_held"] == 2
            assert kept["late"] == 1
            assert kept["oldest_received_at"] is not None
            scrape = samples(client.get("/metrics").text)
            assert value(scrape, "logagg_retention_seconds") == 1
            assert value(scrape, "logagg_dedup_horizon_seconds") == math.inf
            assert value(scrape, "logagg_events_expired_total") == 2
            assert value(scrape, "logagg_dedup_keys_held") == 2
            assert value(scrape, "logagg_events_late_total") == 1
            oldest = value(scrape, "logagg_oldest_event_received_timestamp_seconds")
            assert time.time() - 60 < oldest < time.time()
            shown = logagg_cli("stats", "--api-url", str(client.base_url))
            assert shown.exit_code == 0, shown.stderr
            assert "retention   1s, keep/#=forever; keys kept forever more" in shown.stdout
            assert "events; keys held 2, forgotten 0; late 1" in shown.stdout
    finally:
        store.close()


# slow: lets events expire under a stream; the fast set checks every read skips them
@pytest.mark.slow
def test_retention_stream_resume_skips_expired(url: StoreUrl) -> None:
    """A stream resumed from a Last-Event-ID gets no event expired since, even while the
    shared poller still holds it in memory."""
    store = writer(url, "1s")
    try:
        store.record([made("a", "0")], [])
        with (
            serving(ApiSettings(store=url, broker=nowhere())) as client,
            client.stream("GET", "/events/stream", timeout=10) as live,
        ):
            events = server_sent_events(live.iter_lines())
            start, _ = next(events)  # the id alone: where a reconnect would resume
            store.record([made("a", str(i)) for i in range(1, 4)], [])
            got = [json.loads(data or "")["event_id"] for _, data in islice(events, 3)]
            assert got == ["1", "2", "3"]  # in the poller's memory now
            time.sleep(1.2)
            store.record([made("a", "fresh")], [])
            headers = {"Last-Event-ID": str(start)}
            with client.stream("GET", "/events/stream", headers=headers, timeout=10) as resumed:
                _, data = next(iter(server_sent_events(resumed.iter_lines())))
                assert json.loads(data or "")["event_id"] == "fresh"
    finally:
        store.close()
