"""The store contract, run against every store implementation."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.event import Event, Rejection
from bridge.store import Refused, SchemaTooNew, Store, StoreUnavailable, open_store
from bridge.store.sqlite import KEEP_REJECTED


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
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


def test_record_stores_new_events_and_counts_duplicates(store: Store) -> None:
    """Same (topic, event_id) again is a duplicate, also within one batch; the first wins."""
    first = store.record([event("a", "1", v=1), event("a", "2"), event("b", "1")], [])
    assert (first.stored, first.duplicates) == (3, [])
    second = store.record([event("a", "1", v=2), event("a", "3"), event("a", "3")], [])
    assert second.stored == 1
    assert second.duplicates == [("a", "1"), ("a", "3")]
    stored = store.events(topic="a", after=0, limit=10)
    assert [e.event_id for e in stored] == ["1", "2", "3"]
    assert stored[0].payload == {"v": 1}


def test_stats_agree_with_events_and_received_is_the_sum(store: Store) -> None:
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


def test_events_page_by_seq_and_filter_by_topic(store: Store) -> None:
    """`after` and `seq` give stable paging in arrival order."""
    store.record([event("t", str(i)) for i in range(5)] + [event("u", "x")], [])
    page1 = store.events(topic="t", after=0, limit=2)
    page2 = store.events(topic="t", after=page1[-1].seq, limit=10)
    assert [e.event_id for e in page1 + page2] == ["0", "1", "2", "3", "4"]
    seqs = [e.seq for e in page1 + page2]
    assert seqs == sorted(seqs)
    assert all(e.received_at for e in page2)


def test_rejected_keeps_reason_and_bounded_body(store: Store) -> None:
    """Refused messages are kept aside with why, and a prefix of what they were."""
    store.record([], [Refused("logs/t", b"x" * 100_000, Rejection("too_large", "too big"))])
    (rejected,) = store.rejected(after=0, limit=10)
    assert (rejected.code, rejected.reason, rejected.mqtt_topic) == (
        "too_large",
        "too big",
        "logs/t",
    )
    assert 0 < len(rejected.body) < 10_000


def test_rejected_table_is_bounded_but_counter_is_exact(store: Store) -> None:
    """A flood of garbage cannot fill the disk; the count still says how much there was."""
    junk = [Refused("logs/t", b"?", Rejection("not_json", "no")) for _ in range(KEEP_REJECTED + 50)]
    store.record([], junk)
    assert store.stats().rejected == KEEP_REJECTED + 50
    assert len(store.rejected(after=0, limit=KEEP_REJECTED + 100)) == KEEP_REJECTED


def test_heartbeat_gives_uptime(store: Store) -> None:
    """uptime_s is the running bridge's, and absent when no bridge is alive."""
    assert store.stats().uptime_s is None
    store.heartbeat("b1", time.time() - 42)
    uptime = store.stats().uptime_s
    assert uptime is not None
    assert 41 < uptime < 60


def test_payload_round_trips_unicode_and_nesting(store: Store) -> None:
    """What goes in comes out, as JSON."""
    payload = {"msg": "żółw 🐢", "nested": {"list": [1, 2.5, None, True]}}
    store.record([event("t", "u", **payload)], [])
    (stored,) = store.events(topic="t", after=0, limit=1)
    assert stored.payload == json.loads(json.dumps(payload))


def test_sqlite_reader_reports_missing_store(tmp_path: Path) -> None:
    """The sidecar may start before the bridge: it says so instead of crashing."""
    reader = open_store(f"sqlite:///{tmp_path / 'none.db'}", readonly=True)
    with pytest.raises(StoreUnavailable, match="does not exist yet"):
        reader.stats()


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    """A store written by a newer logagg is left alone, with a clear message."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_store(url).close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(SchemaTooNew, match="upgrade logagg"):
        open_store(url)


def test_sqlite_unwritable_store_raises_store_unavailable(tmp_path: Path) -> None:
    """Infrastructure failures surface as StoreUnavailable, which the bridge retries."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    writer = open_store(url)
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


def test_open_store_rejects_unknown_scheme() -> None:
    """A typo in --store is a clear error, not a crash deep inside."""
    with pytest.raises(ValueError, match="unsupported store URL scheme 'mysql'"):
        open_store("mysql://x")
