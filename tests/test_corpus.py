"""The search benchmark's corpus and harness: reproducible, as described, and loadable into
both stores through their real schema."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

import bench.corpus
from bench.corpus import EPOCH, Corpus, fold
from bench.prefill import prefill_corpus
from bench.query_spike import build_indexes, measure_queries, search_text
from bridge.store import open_store


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


def test_search_text_folds_and_splits_like_unicode61() -> None:
    """Letters and digits kept, case and diacritics folded, everything else a separator."""
    text = search_text("e204-0", "auth-prod-01", {"m": "Résumé naïve_x", "n": 3, "l": ["Ø/b"]})
    assert text == "e204 0 auth prod 01 resume naive x o b"


def test_prefill_corpus_fills_sqlite_through_its_schema(tmp_path: Path) -> None:
    """Every event readable by the store, ts_us exact, the counters raised to match."""
    url = f"sqlite:///{tmp_path / 'corpus.db'}"
    corpus = Corpus(500)
    prefill_corpus(url, corpus)
    store = open_store(url, readonly=True)
    try:
        assert store.stats().unique_processed == 500
        stored = store.events(topic=None, after=0, limit=1000)
    finally:
        store.close()
    rows = list(corpus.rows())
    assert [(e.topic, e.event_id, e.timestamp) for e in stored] == [
        (r.topic, r.event_id, r.timestamp) for r in rows
    ]
    with sqlite3.connect(tmp_path / "corpus.db") as conn:
        ts = [t for (t,) in conn.execute("SELECT ts_us FROM events ORDER BY seq")]
    assert ts == [r.ts_us for r in rows]


@pytest.mark.usefixtures("postgres_reachable")
def test_prefill_corpus_fills_postgres_through_its_schema(pg_url: str) -> None:
    """The same events come back from PostgreSQL, with their offsets."""
    corpus = Corpus(500)
    prefill_corpus(pg_url, corpus)
    store = open_store(pg_url, readonly=True)
    try:
        assert store.stats().unique_processed == 500
        stored = store.events(topic=None, after=0, limit=1000)
    finally:
        store.close()
    assert [(e.event_id, e.timestamp, e.payload) for e in stored] == [
        (r.event_id, r.timestamp, json.loads(r.payload)) for r in corpus.rows()
    ]


def test_query_spike_runs_every_sqlite_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each candidate builds and each query kind runs on a small store, text found."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    corpus = Corpus(2000)
    prefill_corpus(url, corpus)
    build_indexes(url, ["topic_ts", "ts", "spans", "level_expr", "fts_contentless"])
    capsys.readouterr()
    measure_queries(url, corpus, 5, [], seed=1)
    results = {r["kind"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {"topic_hour", "needle", "common_day_spans", "histogram_topic_day"} <= set(results)
    assert results["common_day_spans"]["mean_rows"] > 0
    assert results["page1_common"]["mean_rows"] == 100
