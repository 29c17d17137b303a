"""The search benchmark's corpus and harness: reproducible, as described, and loadable into
both stores through their real schema."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest

import bench.corpus
from bench.corpus import EPOCH, Corpus, fold
from bench.prefill import prefill_corpus
from bench.queries import measure_queries
from bridge.query import Query, parse_query
from bridge.store import StoredEvent, open_reader, parse_store_url


def test_corpus_slices_reproduce_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any slice equals the same events of the whole run, across block boundaries."""
    monkeypatch.setattr(bench.corpus, "BLOCK", 100)
    whole = list(Corpus(450).rows())
    assert len(whole) == 450
    assert list(Corpus(450).rows(150, 320)) == whole[150:320]
    assert list(Corpus(450, seed=12).rows(0, 50)) != whole[:50]


def test_corpus_events_are_as_described() -> None:
    """Valid JSON payloads with 5-20 words, the timestamps' offsets, ts_us in the span."""
    corpus = Corpus(3000)
    rows = list(corpus.rows())
    for row in rows:
        payload = json.loads(row.payload)
        assert 5 <= len(payload["msg"].split()) <= 20
        assert payload["level"] in {"info", "debug", "warn", "error"}
        moment = datetime.fromisoformat(row.timestamp)
        assert round((moment - EPOCH).total_seconds() * 1e6) == row.ts_us
        assert moment.utcoffset().total_seconds() == row.utc_offset_s  # type: ignore[union-attr]
        assert corpus.start_us - 301_000_000 <= row.ts_us < corpus.end_us
    assert len({r.topic for r in rows}) == 50
    assert any(r.utc_offset_s for r in rows)


# slow: counts 20,000 generated events
@pytest.mark.slow
def test_corpus_word_shares_match_the_counts() -> None:
    """The common words are in at least 10% of events, as `share` predicts (±1.5 points)."""
    corpus = Corpus(20_000)
    counts: Counter[str] = Counter()
    for row in corpus.rows():
        counts.update(set(json.loads(row.payload)["msg"].split()))
    common = corpus.common()
    assert common[:2] == ["the", "to"]
    for word in common:
        share = corpus.share(corpus.words.index(word))
        assert share >= 0.10
        assert abs(counts[word] / 20_000 - share) < 0.015
    for word in corpus.needles():
        assert 0.8e-4 < corpus.share(corpus.words.index(word)) < 1.25e-4


def test_corpus_words_stay_distinct_once_folded() -> None:
    """`remove_diacritics` cannot merge two words: no two fold to the same form."""
    words = Corpus(1).words
    assert len({fold(w) for w in words}) == len(words) == 50_000
    assert sum(not w.isascii() for w in words) > 1000


def _stored(url: str) -> tuple[int, list[StoredEvent], int]:
    """The store's count, its events in seq order, and how many a needle search finds."""
    with closing(open_reader(parse_store_url(url))) as store:
        count = store.stats().unique_processed
        stored = store.events(topic=None, after=0, limit=1000)
        query = parse_query([("q", "request"), ("limit", "1000")], now=EPOCH)
        assert isinstance(query, Query)
        found = len(store.search(query))
    return count, stored, found


def test_prefill_corpus_fills_sqlite_as_the_bridge_does(tmp_path: Path) -> None:
    """Every event readable, in order, with its `ts` and found by a text search."""
    url = f"sqlite:///{tmp_path / 'corpus.db'}"
    corpus = Corpus(500)
    prefill_corpus(url, corpus, batch=200)
    count, stored, found = _stored(url)
    rows = list(corpus.rows())
    assert count == 500
    assert [(e.topic, e.event_id, e.timestamp) for e in stored] == [
        (r.topic, r.event_id, r.timestamp) for r in rows
    ]
    assert found == sum('"request' in r.payload or " request" in r.payload for r in rows) > 0
    with sqlite3.connect(tmp_path / "corpus.db") as conn:
        ts = [t for (t,) in conn.execute("SELECT ts FROM events ORDER BY seq")]
    assert ts == [r.ts_us for r in rows]


@pytest.mark.usefixtures("postgres_reachable")
def test_prefill_corpus_fills_postgres_as_the_bridge_does(pg_url: str) -> None:
    """The same events come back from PostgreSQL, with their offsets, found by text (in
    seq order per batch sorted by key, as PostgreSQL's `record` inserts them)."""
    corpus = Corpus(500)
    prefill_corpus(pg_url, corpus, batch=200)
    count, stored, found = _stored(pg_url)
    rows = list(corpus.rows())
    assert count == 500
    assert sorted((e.topic, e.event_id, e.timestamp, e.payload) for e in stored) == sorted(
        (r.topic, r.event_id, r.timestamp, json.loads(r.payload)) for r in rows
    )
    assert found == sum('"request' in r.payload or " request" in r.payload for r in rows) > 0


# slow: a store of 20,000 events
@pytest.mark.slow
def test_query_scenario_finds_real_answers(tmp_path: Path) -> None:
    """Every kind runs on a small store; what it finds is there: pages full, needles and
    histograms found, each histogram's total the count of the events its query matches."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    report = measure_queries(url, prefill=20_000, samples=20, deep_page=3)
    kinds = report["kinds"]
    assert report["events"] == 20_000
    assert report["histograms_checked"] > 0
    assert set(kinds) == {
        "topic_hour",
        "needle",
        "common_day",
        "field_topic_day",
        "histogram_topic_day",
        "page1_topic",
        "deep_topic",
        "page1_common",
        "deep_common",
    }
    for name in ("page1_topic", "page1_common"):
        assert kinds[name]["mean_found"] == 100, name
    for name in (
        "deep_topic",
        "deep_common",
        "needle",
        "common_day",
        "histogram_topic_day",
        "topic_hour",
    ):
        assert kinds[name]["mean_found"] > 0, name
    assert all(k["n"] == 20 and k["timeouts"] == 0 for k in kinds.values())
