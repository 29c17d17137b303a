"""The retention scenarios of issue 12: a live stream while a backlog of expired events is
purged (`--retention-purge`), and the store's size over ten retention windows (`--retention-flat`).

Retention is by arrival, so a backlog written by `prefill_corpus` (through the bridge's own
`record()`, every search index as in production) expires `retention_s` after it was written:
the scenario waits for that before it starts the bridge with the retention. The same live
stream, measured as the latency scenario measures it (payload `sent_at` to the row being
visible to a reader polling the store), runs first on the same store with a bridge without
retention (the baseline, nothing to purge), then with the retention while the purge runs.
The purge's progress is read from the store's oldest `seq` (the backlog is the lowest seqs;
the purge deletes oldest first), a lookup of the primary key, so watching it costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import Corpus
from bench.prefill import prefill_corpus
from bench.procs import BenchError, LoggedProcess, start_bridge, start_flood
from bench.scenarios import (
    LATENCY_POLL_S,
    BenchConfig,
    _broker,
    _fresh_store,
    _percentile,
    _store,
)
from bench.stream import StreamSpec
from bench.watch import StoreWatch
from bridge.store import open_writer, parse_store_url
from supervise.mosquitto import Mosquitto

CLIENT_ID = "bench-retention"
# How often the purge's progress (the oldest seq) and the store's size are read.
PROGRESS_EVERY_S = 0.5
SIZE_EVERY_S = 5.0
# SQLite: each table's size (a read of every page) in every this many size samples.
TABLES_EVERY = 12
# The flat verdict: the last third's largest size may exceed the first third's by this much.
FLAT_TOLERANCE = 0.10


def _retention_options(cfg: BenchConfig) -> list[str]:
    """The bridge's retention, and a dedup horizon as long: the keys of expired events are
    then forgotten one window later, so they too take a bounded room (the default horizon,
    at least 7 days, would keep ten minutes' keys, growing, through the whole run)."""
    window = f"{cfg.retention_s}s"
    return ["--retention", window, "--dedup-horizon", window]


@dataclass(slots=True)
class LiveReader:
    """A thread reading every row stored after `start_seq` as it becomes visible, as the
    latency scenario does: `(sent_at, publish→visible seconds)` per row, in `samples`."""

    url: str
    start_seq: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        watch = StoreWatch(self.url)
        last = self.start_seq
        try:
            while not self._stop.is_set():
                rows = watch.sent_at_since(last)
                now = time.time()
                if rows:
                    self.samples.extend((sent, now - sent) for _, sent in rows)
                    last = rows[-1][0]
                time.sleep(LATENCY_POLL_S)
        finally:
            watch.close()

    def wait_for(self, count: int, timeout: float, alive: LoggedProcess) -> None:
        """Until `count` rows have been read (a distinct event each): none lost, none twice."""
        deadline = time.monotonic() + timeout
        while len(self.samples) < count:
            alive.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"retention: the reader saw {len(self.samples)} rows of {count}")
            time.sleep(0.05)
        time.sleep(0.05)  # a row too many would show now
        if len(self.samples) != count:
            raise BenchError(f"retention: the reader saw {len(self.samples)} rows of {count}")

    @contextlib.contextmanager
    def running(self) -> Iterator[LiveReader]:
        self._thread = threading.Thread(target=self._run, name="bench-retention-reader")
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def _latency(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"events": 0}
    ordered = sorted(samples)
    return {
        "events": len(ordered),
        "p50_ms": _percentile(ordered, 0.50),
        "p99_ms": _percentile(ordered, 0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _stream(cfg: BenchConfig, port: int, seconds: float, seed: int, log: Path) -> int:
    """`seconds` of the live stream at `cfg.rate`; the distinct events it sent."""
    spec = StreamSpec(max(1, round(cfg.rate * seconds)), cfg.dup_ratio, cfg.payload_bytes, seed)
    with start_flood(port, spec, log, rate=cfg.rate) as publisher:
        sent = int(publisher.result(seconds * 2 + 60)["sent"])
    if sent != spec.count:
        raise BenchError(f"publisher: {sent} of {spec.count} acknowledged")
    return spec.distinct


def _backlog(url: str, count: int) -> tuple[int, float | None]:
    """Fill the store at `url` with `count` corpus events unless it holds some already;
    the events it holds and the seconds the fill took (None when it was already filled)."""
    with closing(open_writer(parse_store_url(url))) as writer:
        held = writer.stats().unique_processed
    if held:
        return held, None
    return count, round(prefill_corpus(url, Corpus(count)), 1)


@dataclass(slots=True)
class PurgeWatch:
    """The purge's progress from outside, every `PROGRESS_EVERY_S`: the events the bridge
    counts as expired (it purges topic by topic, so the oldest seq alone would not show
    it), and the oldest seq, to see when no backlog row (seq <= `last`) is left."""

    url: str
    last: int
    base: int  # the counter before the bridge started: its first pass may beat our first poll
    since: float  # when the bridge started: the purge began after it
    progress: list[tuple[float, int]] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None

    def poll(self, stop: threading.Event) -> None:
        watch = StoreWatch(self.url)
        try:
            while not stop.is_set() and self.ended is None:
                now = time.time()
                # The oldest seq first: the counter, read after, includes every deletion
                # it shows (both are in each purge transaction).
                span = watch.seq_range()
                deleted = watch.expired() - self.base
                self.progress.append((now, deleted))
                if deleted and self.started is None:
                    # At the previous poll, which saw nothing deleted yet (or the start).
                    self.started = self.progress[-2][0] if len(self.progress) > 1 else self.since
                if span is None or span[0] > self.last:
                    self.ended = now
                time.sleep(PROGRESS_EVERY_S)
        finally:
            watch.close()


def purge(cfg: BenchConfig) -> dict[str, Any]:
    """`cfg.backlog` expired events purged under a live stream of `cfg.rate` events/s:
    the purge's rate and duration, and the stream's latency during it against the same
    stream, same store, with no purge (a bridge without retention, just before)."""
    work = cfg.work / "retention-purge"
    work.mkdir(parents=True, exist_ok=True)
    url = cfg.store if cfg.store is not None else _store(work, "store")[1]
    backlog, prefill_s = _backlog(url, cfg.backlog)
    watch = StoreWatch(url)
    try:
        span = watch.seq_range()
        newest = watch.newest_received_at()
        rows = watch.counts(rows=True).rows
    finally:
        watch.close()
    if span is None or newest is None:
        raise BenchError(f"retention: no backlog in {parse_store_url(url).display}")
    # Expired by the time the bridge with the retention starts (after the baseline stream).
    wait_s = max(0.0, newest + cfg.retention_s + 1 - time.time() - cfg.duration)
    time.sleep(wait_s)
    with _broker(work / "broker") as mosq:
        base = _baseline(cfg, mosq, url, work, span[1])
        during, watch_purge, after, bridge_start = _purging(cfg, mosq, url, work, span)
    if watch_purge.started is None:
        raise BenchError(f"retention: nothing purged within {cfg.timeout:g} s")
    # Unfinished (after `cfg.timeout`): the rate so far, from the bridge's counter.
    finished = watch_purge.ended is not None
    ended = watch_purge.ended or watch_purge.progress[-1][0]
    seconds = ended - watch_purge.started
    deleted = rows if finished else watch_purge.progress[-1][1]
    on = [lat for sent, lat in during if watch_purge.started <= sent <= ended]
    before = [lat for sent, lat in during if sent < watch_purge.started]
    base_lat, on_lat = _latency(base), _latency(on)
    purging = [(t, n) for t, n in watch_purge.progress if t >= watch_purge.started]
    step = max(1, len(purging) // 20)
    return {
        "method": "baseline: the stream to a bridge without retention on the prefilled store; "
        "then a bridge with the retention on it, the stream running until the backlog is "
        "gone; latency as the latency scenario (payload sent_at to visible to a reader "
        f"polling the store every {LATENCY_POLL_S * 1000:g} ms); purge from the bridge's "
        f"events_expired counter and the store's oldest seq every {PROGRESS_EVERY_S:g} s",
        "store": "postgresql" if url.startswith("postgresql://") else "sqlite",
        "backlog": rows,
        "finished": finished,
        "deleted": deleted,
        "prefilled": backlog,
        "prefill_s": prefill_s,
        "retention_s": cfg.retention_s,
        "rate": cfg.rate,
        "waited_for_expiry_s": round(wait_s, 1),
        "purge_started_after_s": round(watch_purge.started - bridge_start, 1),
        "purge_s": round(seconds, 1),
        "purge_per_s": round(deleted / seconds, 1) if seconds > 0 else None,
        "purge_progress": [
            {"s": round(t - watch_purge.started, 1), "deleted": n}
            for t, n in [*purging[:-1:step], purging[-1]]
        ],
        "baseline": base_lat,
        "during_purge": on_lat,
        "before_purge_started": _latency(before),
        "after_purge": _latency(after),
        "p99_ratio": round(on_lat["p99_ms"] / base_lat["p99_ms"], 2)
        if on_lat["events"] and base_lat["events"]
        else None,
        "p99_ms": on_lat.get("p99_ms"),
    }


def _baseline(cfg: BenchConfig, mosq: Mosquitto, url: str, work: Path, top: int) -> list[float]:
    """The stream for `cfg.duration` s to a bridge without retention: its latencies."""
    with (
        start_bridge(mosq.url, url, CLIENT_ID, cfg.durability, work / "bridge-base.log") as bridge,
        LiveReader(url, top).running() as reader,
    ):
        distinct = _stream(cfg, mosq.port, cfg.duration, 601, work / "publisher-base.log")
        reader.wait_for(distinct, cfg.timeout, bridge)
    return [lat for _, lat in reader.samples]


def _purging(
    cfg: BenchConfig, mosq: Mosquitto, url: str, work: Path, span: tuple[int, int]
) -> tuple[list[tuple[float, float]], PurgeWatch, list[float], float]:
    """The bridge with the retention, the stream in rounds of `cfg.duration` s until the
    backlog is gone, then one more round: the samples during, the purge watch, the
    latencies after the purge, and when the bridge started. After `cfg.timeout` s the
    rounds stop with the purge unfinished (no round after): its rate so far is a result."""
    watch = StoreWatch(url)
    try:
        top = (watch.seq_range() or (0, 0))[1]
        expired = watch.expired()
    finally:
        watch.close()
    bridge_start = time.time()
    progress = PurgeWatch(url, span[1], expired, bridge_start)
    stop = threading.Event()
    poller = threading.Thread(target=progress.poll, args=(stop,), name="bench-purge-watch")
    options = _retention_options(cfg)
    log = work / "bridge-purge.log"
    with (
        start_bridge(mosq.url, url, CLIENT_ID, cfg.durability, log, options=options) as bridge,
        LiveReader(url, top).running() as reader,
    ):
        poller.start()
        try:
            distinct, rounds = 0, 0
            deadline = time.monotonic() + cfg.timeout
            while progress.ended is None and time.monotonic() < deadline:
                bridge.check_alive()
                rounds += 1
                log_r = work / f"publisher-purge-{rounds}.log"
                distinct += _stream(cfg, mosq.port, cfg.duration, 610 + rounds, log_r)
            reader.wait_for(distinct, cfg.timeout, bridge)
            during, after = list(reader.samples), []
            if progress.ended is not None:
                log_r = work / "publisher-after.log"
                distinct += _stream(cfg, mosq.port, cfg.duration, 700, log_r)
                reader.wait_for(distinct, cfg.timeout, bridge)
                after = [lat for _, lat in reader.samples[len(during) :]]
        finally:
            stop.set()
            poller.join(10)
    return during, progress, after, bridge_start


def flat(cfg: BenchConfig) -> dict[str, Any]:
    """A steady stream at `cfg.rate` for `cfg.windows` times `cfg.retention_s` into a fresh store
    with that retention, its size on disk sampled every `SIZE_EVERY_S` s: does it stay flat?"""
    if cfg.windows < 4:
        raise BenchError(
            "retention-flat: --windows must be at least 4 (the first third counts from the"
            " end of the first window)"
        )
    work = cfg.work / "retention-flat"
    seconds = cfg.windows * cfg.retention_s
    every = min(SIZE_EVERY_S, seconds / 30)
    samples: list[dict[str, Any]] = []
    with _broker(work / "broker") as mosq, _fresh_store(cfg, work, "store") as url:
        options = _retention_options(cfg)
        log = work / "bridge.log"
        with start_bridge(mosq.url, url, CLIENT_ID, cfg.durability, log, options=options) as bridge:
            watch = StoreWatch(url)
            try:
                watch.mark()
                spec = StreamSpec(round(cfg.rate * seconds), cfg.dup_ratio, cfg.payload_bytes, 801)
                started = time.time()
                with start_flood(mosq.port, spec, work / "publisher.log", rate=cfg.rate) as pub:
                    while pub.process.poll() is None:
                        bridge.check_alive()
                        each = len(samples) % TABLES_EVERY == 0
                        samples.append(_size_sample(watch, time.time() - started, each))
                        time.sleep(every)
                    published = pub.result(seconds * 2 + 60)
                _, counts = watch.wait(
                    lambda c: c.received >= spec.count,
                    timeout=cfg.timeout,
                    alive=bridge.check_alive,
                )
                tables = watch.tables_bytes()
            finally:
                watch.close()
    if published["sent"] != spec.count or counts.rejected:
        raise BenchError(f"retention-flat: sent {published['sent']} of {spec.count}, {counts}")
    return {
        "method": f"a fresh store, retention {cfg.retention_s} s (dedup horizon as long), the "
        f"stream at {cfg.rate:g}/s for {seconds} s; size (SQLite: db + WAL; PostgreSQL: "
        f"pg_total_relation_size of each table) every {every:g} s; rows: seq span",
        "store": "postgresql" if url.startswith("postgresql://") else "sqlite",
        "retention_s": cfg.retention_s,
        "rate": cfg.rate,
        "achieved_rate": published["rate"],
        "seconds": seconds,
        "events": spec.count,
        "received": counts.received,
        **verdict(samples, cfg.retention_s, seconds),
        "tables_at_end": tables,
        "samples": samples,
    }


def _size_sample(watch: StoreWatch, at: float, tables: bool) -> dict[str, Any]:
    """The store's size now; with `tables` (SQLite: it reads every page), each table's too."""
    parts = watch.size_bytes()
    span = watch.seq_range()
    sample = {
        "s": round(at, 1),
        "bytes": sum(parts.values()),
        "parts": parts,
        "free": watch.free_bytes(),
        "rows": 0 if span is None else span[1] - span[0] + 1,
    }
    if tables and "db" in parts:
        sample["tables"] = watch.tables_bytes()
    return sample


def verdict(samples: list[dict[str, Any]], retention_s: float, seconds: float) -> dict[str, Any]:
    """The largest size in the first third of the run (once the first window has filled)
    and in the last third; flat when the last is at most `FLAT_TOLERANCE` above the first."""
    first = [s["bytes"] for s in samples if retention_s <= s["s"] < seconds / 3]
    last = [s["bytes"] for s in samples if s["s"] >= seconds * 2 / 3]
    if not first or not last:
        raise BenchError(f"retention-flat: too few size samples ({len(samples)})")
    first_max, last_max = max(first), max(last)
    return {
        "first_third_max_bytes": first_max,
        "last_third_max_bytes": last_max,
        "last_over_first": round(last_max / first_max, 3),
        "max_rows": max(s["rows"] for s in samples),
        "flat": last_max <= first_max * (1 + FLAT_TOLERANCE),
    }
