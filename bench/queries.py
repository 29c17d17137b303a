"""The `query` scenario (issue 11): random searches of each kind against a large store,
through `StoreReader.search` and `histogram`, the calls the sidecar makes, timed one by one.

The store is one the user names (`--store`): prefilled here with `bench.corpus` events
through `StoreWriter.record` when it holds none, else used as it is. The random parameters
come from the corpus (its topics, its needles and common words) and, for time ranges, from
the store's own span, so a store whose prefill stopped early is still queried where it has
events. Every kind is ordered newest first, as a log search shows it.

A fast wrong answer is not a result: the first histograms are checked against a count of
the same events paged out through `search`, and a kind that finds nothing at all where the
corpus says it must raises BenchError.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from bench.corpus import Corpus, fold
from bench.prefill import prefill_corpus
from bench.procs import BenchError
from bench.scenarios import BenchConfig
from bridge.query import MAX_LIMIT, Query, parse_query
from bridge.store import QueryTimeout, StoreReader, open_reader, open_writer, parse_store_url

PAGE = 100
DEEP_PAGE = 1000
HISTOGRAM_INTERVAL_S = 60
# Deep pages are drawn from this many queries per kind: finding where page 1,000 starts
# means paging through 99,900 events, untimed, once per query.
DEEP_POOL = 10
# Histograms checked against a count of the same events paged out through `search`.
CHECKED_HISTOGRAMS = 5
# Kinds that must find something in a store of the corpus: an empty answer there is a
# broken store or query, not a fast one.
MUST_FIND = ("needle", "page1_topic", "page1_common")


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of query: a random draw of it, and how one is run (events or count found)."""

    draw: Callable[[], Query]
    run: Callable[[StoreReader, Query], int]


def query(cfg: BenchConfig) -> dict[str, Any]:
    """The scenario as `logagg bench --query` runs it: on `--store`, `--queries` per kind."""
    if cfg.store is None:
        raise BenchError("the query scenario needs --store (sqlite:///… or postgresql://…)")
    return measure_queries(
        cfg.store, prefill=cfg.prefill, samples=cfg.queries, deep_page=cfg.deep_page
    )


def measure_queries(
    url: str, *, prefill: int, samples: int, deep_page: int = DEEP_PAGE, seed: int = 11
) -> dict[str, Any]:
    """`samples` random queries of each kind against the store at `url` (first filled with
    `prefill` corpus events if it holds none; opened as the bridge opens it, so a store of
    an older schema is upgraded first): p50/p95/max per kind, and what was checked."""
    corpus = Corpus(prefill)
    target = parse_store_url(url)
    with closing(open_writer(target)) as writer:
        held = writer.stats().unique_processed
    prefill_s = None
    if held == 0 and prefill:
        prefill_s = round(prefill_corpus(url, corpus), 1)
        held = prefill
    with closing(open_reader(target)) as store:
        span = store.time_span(Query(now=corpus.end))
        if span is None:
            raise BenchError(f"the store at {target.display} holds no events to query")
        kinds = _kinds(store, corpus, random.Random(seed), span, deep_page)
        results = {name: _measure(store, kind, samples) for name, kind in kinds.items()}
        checked = _check_histograms(store, kinds["histogram_topic_day"])
    for name in MUST_FIND:
        if results[name]["mean_found"] == 0:
            raise BenchError(f"query kind {name} found nothing in {samples} queries")
    return {
        "method": f"{samples} random queries per kind through StoreReader.search/histogram,"
        f" one at a time, newest first, limit {PAGE}; page {deep_page} from the cursor a"
        f" client holds after page {deep_page - 1} (a pool of {DEEP_POOL} queries per kind)",
        "store": target.display,
        "events": held,
        "prefill_s": prefill_s,
        "span": [span[0].isoformat(), span[1].isoformat()],
        "deep_page": deep_page,
        "kinds": results,
        "deep_ratio": {
            k: round(results[f"deep_{k}"]["p50_ms"] / max(results[f"page1_{k}"]["p50_ms"], 0.01), 2)
            for k in ("topic", "common")
        },
        "histograms_checked": checked,
    }


def _kinds(
    store: StoreReader,
    corpus: Corpus,
    rng: random.Random,
    span: tuple[datetime, datetime],
    deep_page: int,
) -> dict[str, Kind]:
    """Each query kind of issue 11 with a draw of random parameters."""
    needles, common = [fold(w) for w in corpus.needles()], corpus.common()
    hour, day = timedelta(hours=1), timedelta(days=1)

    def parsed(*params: tuple[str, str]) -> Query:
        pairs = [*params, ("order", "desc"), ("limit", str(PAGE))]
        q = parse_query(pairs, now=corpus.end)
        if not isinstance(q, Query):
            raise BenchError(f"the bench's own query {pairs} was refused: {q}")
        return q

    def window(length: timedelta) -> list[tuple[str, str]]:
        room = max((span[1] - span[0] - length).total_seconds(), 0.0)
        since = span[0] + timedelta(seconds=rng.uniform(0, room))
        return [("since", since.isoformat()), ("until", (since + length).isoformat())]

    def topic() -> tuple[str, str]:
        return ("topic", rng.choice(corpus.topics))

    def word() -> tuple[str, str]:
        return ("q", rng.choice(common))

    def search(s: StoreReader, q: Query) -> int:
        return len(s.search(q))

    def histogram(s: StoreReader, q: Query) -> int:
        return sum(b.count for b in s.histogram(q, HISTOGRAM_INTERVAL_S))

    kinds = {
        "topic_hour": Kind(lambda: parsed(topic(), *window(hour)), search),
        # Folded: a needle with a diacritic is found only if the store folds it too.
        "needle": Kind(lambda: parsed(("q", rng.choice(needles))), search),
        "common_day": Kind(lambda: parsed(word(), *window(day)), search),
        "field_topic_day": Kind(
            lambda: parsed(("field", "level:error"), topic(), *window(day)), search
        ),
        "histogram_topic_day": Kind(lambda: parsed(topic(), *window(day)), histogram),
    }
    for name, draw in (("topic", topic), ("common", word)):
        firsts = [parsed(draw()) for _ in range(DEEP_POOL)]
        deep = [
            replace(q, position=start)
            for q in firsts
            if (start := _position(store, q, (deep_page - 1) * PAGE)) is not None
        ]
        if not deep:
            raise BenchError(
                f"no {name} query has {deep_page} pages in this store: pass a smaller --deep-page"
            )
        kinds[f"page1_{name}"] = Kind(partial(rng.choice, firsts), search)
        kinds[f"deep_{name}"] = Kind(partial(rng.choice, deep), search)
    return kinds


def _position(store: StoreReader, q: Query, skip: int) -> int | None:
    """The cursor's position after the first `skip` events of `q` (None: it has fewer)."""
    position = q.position
    while skip > 0:
        limit = min(MAX_LIMIT, skip)
        page = store.search(replace(q, limit=limit, position=position))
        if len(page) < limit:
            return None
        skip -= limit
        position = page[-1].seq
    return position


def _measure(store: StoreReader, kind: Kind, samples: int) -> dict[str, Any]:
    """Each query timed from the call to its answer; a timeout counts at the time it took."""
    queries = [kind.draw() for _ in range(samples)]
    times_ms, found, timeouts = [], 0, 0
    for q in queries:
        started = time.perf_counter()
        try:
            found += kind.run(store, q)
        except QueryTimeout:
            timeouts += 1
        times_ms.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(times_ms, n=100, method="inclusive")
    return {
        "n": samples,
        "p50_ms": round(cuts[49], 1),
        "p95_ms": round(cuts[94], 1),
        "max_ms": round(max(times_ms), 1),
        "mean_found": round(found / samples, 1),
        "timeouts": timeouts,
    }


def _check_histograms(store: StoreReader, kind: Kind) -> int:
    """The first histograms' totals against the same events counted through `search`."""
    for _ in range(CHECKED_HISTOGRAMS):
        q = kind.draw()
        counted, position = 0, None
        while page := store.search(replace(q, limit=MAX_LIMIT, position=position)):
            counted += len(page)
            position = page[-1].seq
        total = kind.run(store, q)
        if total != counted:
            raise BenchError(f"histogram total {total} != {counted} events found for {q}")
    return CHECKED_HISTOGRAMS
