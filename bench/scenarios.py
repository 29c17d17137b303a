"""The five measurements. Each starts its own Mosquitto (the project's config, a free port), so
no scenario inherits another's queues, and stops everything it started, whatever happens.

Every scenario checks its counts (each distinct event stored once, nothing rejected) and
raises `BenchError` when they are wrong: a fast wrong answer is not a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from bench.flood import DEFAULT_WINDOW
from bench.prefill import prefill
from bench.probe import cpu_by_pid, cpu_seconds, peak_rss_mb, rss_mb
from bench.procs import (
    BenchError,
    LoggedProcess,
    start_api,
    start_baseline,
    start_bridge,
    start_bridges,
    start_flood,
)
from bench.profile import sampled
from bench.sessions import TOPIC_FILTER, register, shared_filter
from bench.stream import PREFIX, StreamSpec, drafts
from bench.watch import Counts, StoreWatch
from bridge.event import Event, parse_message
from bridge.settings import BridgeSettings
from bridge.store import (
    Durability,
    PostgresUrl,
    StoreOptions,
    StoreReader,
    open_reader,
    open_writer,
    parse_store_url,
)
from supervise.mosquitto import Mosquitto, free_port

POLL_S = 0.005
LATENCY_POLL_S = 0.001
HTTP_BATCHES = (1000, 100)
HTTP_CLIENTS = 4
# The bridge's default commit batch: the store-only measurement writes batches of this size.
BATCH_SIZE = BridgeSettings.model_fields["batch_size"].default
BRIDGE_IDS = ("bench-baseline", "bench-bridge")
# Several bridges share the stream as README's "Scaling out" runs them: `--group logagg`.
GROUP = "logagg"
# `--compare-scaling`: (store, bridges), each draining the same backlog size.
SCALING = (
    ("sqlite", 1),
    ("postgresql", 1),
    ("postgresql", 2),
    ("postgresql", 3),
    ("postgresql", 4),
)
# `--compare-scaling`'s live tail: bridges on PostgreSQL at `rate`, read through the watermark.
TAIL_BRIDGES = 3


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run; `logagg bench` fills it from its flags."""

    work: Path
    count: int = 150_000
    dup_ratio: float = 0.1
    rate: float = 1000.0
    duration: float = 30.0
    payload_bytes: int = 100
    durability: str = "full"
    prefill: int = 10_000_000
    growth_count: int = 60_000
    memory_count: int = 1_000_000
    http_count: int = 30_000
    repeat: int = 1
    timeout: float = 600.0
    # The query scenario: random queries of each kind, and the deep page compared to page 1.
    queries: int = 200
    deep_page: int = 1000
    # The drain's bridges and their store (None: a fresh SQLite file per run).
    bridges: int = 1
    store: str | None = None
    # The retention scenarios (issue 12): expired events purged under the live stream, and
    # the stream for `windows` retentions to see the store's size stay flat.
    backlog: int = 5_000_000
    retention_s: int = 60
    windows: int = 10
    # The HTTP scenario: another checkout whose sidecar runs too, for a before/after.
    sidecar_from: Path | None = None

    def __post_init__(self) -> None:
        counts = ("count", "prefill", "growth_count", "memory_count", "http_count", "repeat")
        for name in (
            *counts,
            "bridges",
            "queries",
            "deep_page",
            "backlog",
            "retention_s",
            "windows",
        ):
            if getattr(self, name) < (0 if name == "prefill" else 1):
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.queries < 2:
            raise ValueError(f"queries must be at least 2 (for percentiles), not {self.queries}")
        if not 0 <= self.dup_ratio < 1:
            raise ValueError(f"dup_ratio must be in [0, 1), not {self.dup_ratio}")
        if self.rate <= 0 or self.duration <= 0 or self.timeout <= 0:
            raise ValueError("rate, duration and timeout must be positive")
        if self.durability not in tuple(Durability):
            levels = ", ".join(Durability)
            raise ValueError(f"durability must be one of {levels}, not {self.durability!r}")
        if self.store is not None and not self.store.startswith(("postgresql://", "sqlite://")):
            raise ValueError(f"--store takes a postgresql:// or sqlite:// URL, not {self.store!r}")

    def spec(self, count: int, seed: int) -> StreamSpec:
        return StreamSpec(count, self.dup_ratio, self.payload_bytes, seed)


@contextlib.contextmanager
def _broker(work: Path) -> Iterator[Mosquitto]:
    mosq = Mosquitto(free_port(), work)
    mosq.start()
    try:
        yield mosq
    finally:
        mosq.stop()


def _store(work: Path, name: str) -> tuple[Path, str]:
    path = (work / f"{name}.db").resolve()
    return path, f"sqlite:///{path}"


@contextlib.contextmanager
def _fresh_store(cfg: BenchConfig, work: Path, name: str) -> Iterator[str]:
    """A store URL nothing has written to: a new SQLite file in `work`, or, with `cfg.store`,
    a new schema `bench_<random>` in that PostgreSQL, dropped afterwards."""
    if cfg.store is None:
        yield _store(work, name)[1]
        return
    pg = parse_store_url(cfg.store)
    assert isinstance(pg, PostgresUrl)  # checked in BenchConfig
    conninfo = pg.conninfo
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{conninfo}{'&' if urlsplit(conninfo).query else '?'}schema={schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _bridge_ids(n: int) -> tuple[list[str], str]:
    """Client ids of `n` bridges and the filter their sessions subscribe to: one bridge
    runs as by default, several share `--group logagg`."""
    if n == 1:
        return [BRIDGE_IDS[1]], TOPIC_FILTER
    return [f"{BRIDGE_IDS[1]}-{i}" for i in range(1, n + 1)], shared_filter(GROUP)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _check(counts: Counts, spec: StreamSpec, sent: int, what: str) -> None:
    """Unique stored must equal distinct sent; every copy received, none rejected."""
    problems = []
    if counts.unique != spec.distinct or counts.rows != spec.distinct:
        problems.append(
            f"stored {counts.unique} unique ({counts.rows} rows), sent {spec.distinct} distinct"
        )
    if counts.received < sent or counts.rejected:
        problems.append(f"received {counts.received} of {sent}, rejected {counts.rejected}")
    if problems:
        raise BenchError(f"{what}: wrong counts: {'; '.join(problems)}")


def _publish(port: int, spec: StreamSpec, log: Path, timeout: float) -> int:
    with start_flood(port, spec, log) as publisher:
        sent = int(publisher.result(timeout)["sent"])
    if sent != spec.count:
        raise BenchError(f"publisher: {sent} of {spec.count} acknowledged")
    return sent


@dataclass(slots=True)
class BridgeRun:
    """Bridges draining a backlog: the real processes, watched from the store and /proc.
    CPU is per 1,000 events, from the first stored row on; `cpu_s_per_1000` sums the bridges.
    `backends`: PostgreSQL only, the bridges' server processes by state and wait event,
    averaged over the store polls (e.g. 0.3 "active Lock:transactionid": on average 0.3
    batches waiting for another's transaction, which inserted the same key first).
    `profile`: py-spy's summary, when asked (see `bench.profile`)."""

    rate: float
    seconds: float
    cpu_s_per_1000: float
    bridges_cpu_s_per_1000: list[float]
    broker_cpu_s_per_1000: float
    postgres_cpu_s_per_1000: float | None
    backends: dict[str, float] | None
    peak_rss_mb: float
    counts: Counts
    profile: dict[str, Any] | None = None


def _drain_with_bridges(
    cfg: BenchConfig,
    mosq: Mosquitto,
    url: str,
    client_ids: list[str],
    sent: int,
    logs: Path,
    *,
    profile: Path | None = None,
) -> BridgeRun:
    """Start the bridges together on a queued backlog of `sent` messages; time them from the
    first stored row's `received_at` to the poll that sees the last commit."""
    logs.mkdir(parents=True, exist_ok=True)
    pg = url.startswith("postgresql://")
    watch = StoreWatch(url)
    assert mosq.process is not None
    broker_pid = mosq.process.pid
    watch.mark()  # before the bridges start: one commits the first batch before it says so
    with contextlib.ExitStack() as stack:
        stack.callback(watch.close)
        group = GROUP if len(client_ids) > 1 else None
        bridges = start_bridges(
            mosq.url, url, client_ids, cfg.durability, logs, group=group, stack=stack
        )
        at_first: dict[str, Any] = {}

        def snapshot() -> dict[str, Any]:
            return {
                "bridges": [cpu_seconds(b.pid) for b in bridges],
                "broker": cpu_seconds(broker_pid),
                "postgres": cpu_by_pid(b"postgres:") if pg else {},
            }

        def alive() -> None:
            for bridge in bridges:
                bridge.check_alive()

        spying: contextlib.AbstractContextManager[dict[str, Any]] = (
            sampled(bridges[0].pid, profile) if profile else contextlib.nullcontext({})
        )
        with spying as summary:
            end, _ = watch.wait(
                lambda c: c.received >= sent,
                timeout=cfg.timeout,
                every=POLL_S,
                alive=alive,
                on_first=lambda counts: at_first.update(snapshot(), n=counts.received),
                on_poll=watch.sample_backends if pg else lambda: None,
            )
        last = snapshot()
        rss = max(peak_rss_mb(b.pid) for b in bridges)
        own = watch.backend_pid  # the watch's polling is not the bridges' load
        counts = watch.counts(rows=True)
        start = watch.first_received_at()
    seconds = end - start
    per_1000 = 1000 / max(1, counts.received - int(at_first["n"]))
    bridges_cpu = [
        round((b - a) * per_1000, 4)
        for a, b in zip(at_first["bridges"], last["bridges"], strict=True)
    ]
    postgres_cpu = sum(
        t - at_first["postgres"].get(pid, 0.0) for pid, t in last["postgres"].items() if pid != own
    )
    return BridgeRun(
        rate=round(counts.received / seconds, 1),
        seconds=round(seconds, 3),
        cpu_s_per_1000=round(sum(bridges_cpu), 4),
        bridges_cpu_s_per_1000=bridges_cpu,
        broker_cpu_s_per_1000=round((last["broker"] - at_first["broker"]) * per_1000, 4),
        postgres_cpu_s_per_1000=round(postgres_cpu * per_1000, 4) if pg else None,
        backends={k: round(v / watch.samples, 2) for k, v in sorted(watch.backends.items())}
        if pg and watch.samples
        else None,
        peak_rss_mb=rss,
        counts=counts,
        profile=summary if profile else None,
    )


def drain(cfg: BenchConfig) -> dict[str, Any]:
    """The same backlog, queued while both were offline, drained by the baseline and by the
    bridge, each alone; with `repeat` > 1 the order alternates and medians are reported."""
    work = cfg.work / "drain"
    base_runs: list[dict[str, Any]] = []
    bridge_runs: list[BridgeRun] = []
    bridge_ids, topic_filter = _bridge_ids(cfg.bridges)
    with _broker(work / "broker") as mosq:
        assert mosq.process is not None
        register(mosq.port, BRIDGE_IDS[:1])
        register(mosq.port, bridge_ids, topic_filter)
        for r in range(cfg.repeat):
            spec = cfg.spec(cfg.count, seed=r + 1)
            sent = _publish(mosq.port, spec, work / f"publisher-{r}.log", cfg.timeout)
            order = ("baseline", "bridge") if r % 2 == 0 else ("bridge", "baseline")
            for which in order:
                if which == "baseline":
                    broker_cpu = cpu_seconds(mosq.process.pid)
                    with start_baseline(
                        mosq.port, BRIDGE_IDS[0], sent, work / f"baseline-{r}.log", cfg.timeout
                    ) as base:
                        result = base.result(cfg.timeout + 30)
                    result["broker_cpu_s_per_1000"] = round(
                        (cpu_seconds(mosq.process.pid) - broker_cpu) / sent * 1000, 4
                    )
                    if result["messages"] != sent:
                        raise BenchError(f"baseline counted {result['messages']} of {sent}")
                    base_runs.append(result)
                else:
                    with _fresh_store(cfg, work, f"store-{r}") as url:
                        run = _drain_with_bridges(
                            cfg, mosq, url, bridge_ids, sent, work / f"bridge-{r}"
                        )
                    _check(run.counts, spec, sent, "drain")
                    bridge_runs.append(run)
    base_rate = _median([b["rate"] for b in base_runs])
    base_cpu = _median([b["cpu_s"] / b["messages"] * 1000 for b in base_runs])
    bridge_rate = _median([b.rate for b in bridge_runs])
    bridge_cpu = _median([b.cpu_s_per_1000 for b in bridge_runs])
    return {
        "method": "backlog queued for both persistent sessions while offline, then each "
        "consumer alone; baseline: first to last message; bridge: first stored row's "
        f"received_at to a store poll (every {POLL_S * 1000:g} ms) seeing the last commit",
        "messages": cfg.count,
        "distinct": cfg.spec(cfg.count, 1).distinct,
        "repeat": cfg.repeat,
        "bridges": cfg.bridges,
        "store": "postgresql" if cfg.store else "sqlite",
        "baseline": {
            "events_per_s": base_rate,
            "cpu_s_per_1000": base_cpu,
            "runs": base_runs,
        },
        "bridge": {
            "events_per_s": bridge_rate,
            "cpu_s_per_1000": bridge_cpu,
            "peak_rss_mb": max(b.peak_rss_mb for b in bridge_runs),
            "runs": [_run_dict(b) for b in bridge_runs],
        },
        "ratio": {
            "throughput": round(bridge_rate / base_rate, 3),
            "cpu": round(bridge_cpu / base_cpu, 3),
        },
    }


def _run_dict(run: BridgeRun) -> dict[str, Any]:
    return {
        "events_per_s": run.rate,
        "seconds": run.seconds,
        "cpu_s_per_1000": run.cpu_s_per_1000,
        "bridges_cpu_s_per_1000": run.bridges_cpu_s_per_1000,
        "broker_cpu_s_per_1000": run.broker_cpu_s_per_1000,
        "postgres_cpu_s_per_1000": run.postgres_cpu_s_per_1000,
        "backends": run.backends,
        "peak_rss_mb": run.peak_rss_mb,
        "received": run.counts.received,
        "unique": run.counts.unique,
        "duplicates": run.counts.duplicates,
    }


def scaling(cfg: BenchConfig) -> dict[str, Any]:
    """The same backlog size drained by one bridge on SQLite and by 1, 2 and 3 bridges on
    `cfg.store`'s PostgreSQL, each on a broker of its own (so no other group's sessions take
    a share); `repeat` rounds, the order reversed every other round, medians."""
    if cfg.store is None:
        raise BenchError("scaling needs --store postgresql://…")
    runs: dict[tuple[str, int], list[BridgeRun]] = {setup: [] for setup in SCALING}
    for r in range(cfg.repeat):
        spec = cfg.spec(cfg.count, seed=r + 1)
        for kind, n in SCALING if r % 2 == 0 else SCALING[::-1]:
            work = cfg.work / "scaling" / f"{r}-{kind}-{n}"
            client_ids, topic_filter = _bridge_ids(n)
            on = replace(cfg, store=None) if kind == "sqlite" else cfg
            with _broker(work / "broker") as mosq, _fresh_store(on, work, "store") as url:
                register(mosq.port, client_ids, topic_filter)
                sent = _publish(mosq.port, spec, work / "publisher.log", cfg.timeout)
                run = _drain_with_bridges(cfg, mosq, url, client_ids, sent, work)
            _check(run.counts, spec, sent, f"scaling ({n} on {kind})")
            runs[(kind, n)].append(run)
    reference = _median([run.rate for run in runs[SCALING[0]]])
    rows = []
    for (kind, n), done in runs.items():
        rate = _median([run.rate for run in done])
        postgres = [run.postgres_cpu_s_per_1000 for run in done]
        pg_reference = _median([run.rate for run in runs[SCALING[1]]])
        rows.append(
            {
                "store": kind,
                "bridges": n,
                "events_per_s": rate,
                "ratio": round(rate / reference, 3),
                "ratio_to_one_postgres": round(rate / pg_reference, 3),
                "bridge_cpu_us_per_event": [
                    round(_median([run.bridges_cpu_s_per_1000[i] for run in done]) * 1000, 1)
                    for i in range(n)
                ],
                "lock_waits": _median([_waiting(run, " Lock:") for run in done]),
                "io_waits": _median([_waiting(run, " IO:") for run in done]),
                "cpu_s_per_1000": _median([run.cpu_s_per_1000 for run in done]),
                "broker_cpu_s_per_1000": _median([run.broker_cpu_s_per_1000 for run in done]),
                "postgres_cpu_s_per_1000": None
                if None in postgres
                else _median([p for p in postgres if p is not None]),
                "runs": [_run_dict(run) for run in done],
            }
        )
    return {
        "method": "per setup and round: a fresh broker, the sessions registered, the backlog "
        "published, then the bridges started together; first stored row's received_at to a "
        f"store poll (every {POLL_S * 1000:g} ms) seeing the last commit; CPU from /proc "
        "(PostgreSQL: every `postgres:` process but the poller's backend)",
        "messages": cfg.count,
        "distinct": cfg.spec(cfg.count, 1).distinct,
        "repeat": cfg.repeat,
        "setups": rows,
        "profile": _profiled_drain(cfg),
        "live_tail": live_tail(cfg),
    }


def _profiled_drain(cfg: BenchConfig) -> dict[str, Any]:
    """One more drain by one bridge on PostgreSQL, sampled by py-spy: where its time goes
    (see `bench.profile`). Not in the medians: sampling costs the bridge a little."""
    work = cfg.work / "scaling" / "profile"
    client_ids, topic_filter = _bridge_ids(1)
    spec = cfg.spec(cfg.count, seed=1)
    with _broker(work / "broker") as mosq, _fresh_store(cfg, work, "store") as url:
        register(mosq.port, client_ids, topic_filter)
        sent = _publish(mosq.port, spec, work / "publisher.log", cfg.timeout)
        run = _drain_with_bridges(
            cfg, mosq, url, client_ids, sent, work, profile=work / "py-spy.txt"
        )
    return {"events_per_s": run.rate, **(run.profile or {})}


def _check_alive(bridges: list[LoggedProcess]) -> None:
    for bridge in bridges:
        bridge.check_alive()


def _waiting(run: BridgeRun, kind: str) -> float:
    """How many of the bridges' backends waited on `kind` (" Lock:", " IO:"), on average
    over the store polls."""
    return round(sum(v for k, v in (run.backends or {}).items() if kind in k), 3)


def live_tail(cfg: BenchConfig) -> dict[str, Any]:
    """TAIL_BRIDGES bridges on `cfg.store` at `cfg.rate` events/s for `cfg.duration`; a
    reader follows with `events(after=…)`, as /events/stream's poller does (through the
    watermark), every millisecond, and takes for each new row now minus the `sent_at`
    the publisher put in its payload. Beside it a raw reader (`seq > after`, no
    watermark) notes when each row is first visible at all: the watermark's own cost is
    the difference, per row. The row's `received_at` (the server's clock when its batch's
    transaction began) splits the rest: publish to the bridge's transaction, then the
    batch's statements and commit. Against 1 bridge, same rate, same readers."""
    if cfg.store is None:
        raise BenchError("the live tail needs --store postgresql://…")
    spec = cfg.spec(max(1, round(cfg.rate * cfg.duration)), seed=102)
    result: dict[str, Any] = {"rate": cfg.rate, "duration_s": cfg.duration}
    for n in (1, TAIL_BRIDGES):
        tail = _tail(cfg, spec, n)
        ordered = sorted(latency for _, latency, _ in tail.seen)
        if len(ordered) != spec.distinct:
            raise BenchError(f"live tail: the reader saw {len(ordered)} rows of {spec.distinct}")
        visible = tail.visible
        if missed := len({seq for seq, _, _ in tail.seen} - visible.keys()):
            raise BenchError(f"live tail: the raw reader missed {missed} rows")
        held = sorted(at - visible[seq] for seq, _, at in tail.seen)
        began = tail.began
        to_begin = sorted(began[seq][1] - began[seq][0] for seq, _, _ in tail.seen)
        committed = sorted(at - began[seq][1] for seq, at in visible.items() if seq in began)
        result[f"bridges_{n}"] = {
            "p50_ms": _percentile(ordered, 0.50),
            "p99_ms": _percentile(ordered, 0.99),
            "max_ms": round(ordered[-1] * 1000, 2),
            "to_transaction_p50_ms": _percentile(to_begin, 0.50),
            "to_transaction_p99_ms": _percentile(to_begin, 0.99),
            "to_visible_p50_ms": _percentile(committed, 0.50),
            "to_visible_p99_ms": _percentile(committed, 0.99),
            "watermark_p50_ms": _percentile(held, 0.50),
            "watermark_p99_ms": _percentile(held, 0.99),
        }
    return result


# What a tail reader saw: (seq, now - sent_at, when), `when` on time.time().
Seen = list[tuple[int, float, float]]
# How far back the raw reader looks for a row committed after one with a higher seq.
RAW_WINDOW = 2_000


@dataclass(frozen=True, slots=True)
class Tail:
    """What the two readers saw, and each row's (sent_at, received_at) from the store."""

    seen: Seen
    visible: dict[int, float]
    began: dict[int, tuple[float, float]]


def _follow(reader: StoreReader, seen: Seen, stop: threading.Event) -> None:
    """Read what is new every LATENCY_POLL_S through the store's reader (the watermark)."""
    last = 0
    while not stop.is_set():
        rows = reader.events(topic=None, after=last, limit=1000)
        now = time.time()
        seen.extend((e.seq, now - float(e.payload["sent_at"]), now) for e in rows)
        if rows:
            last = rows[-1].seq
        time.sleep(LATENCY_POLL_S)


def _follow_raw(url: str, visible: dict[int, float], stop: threading.Event) -> None:
    """When each seq is first visible to a plain read, with no watermark: every row
    committed (the rows of any seq, in any order). Each poll asks only for what it has
    not seen: seqs above the highest seen, and the holes up to RAW_WINDOW below it (a
    batch still committing, or a seq no row kept, as a duplicate's). Re-reading the whole
    window every millisecond cost the bench and the server more than the bridge it
    measured (BENCHMARKS.md, "Where a live tail's milliseconds go")."""
    top, holes = 0, set[int]()
    with _connect(url) as conn:
        # The table grows unanalysed under the tail: the planner guesses a third of it
        # above `top` and scans it all (17 ms a poll at 20,000 rows) instead of the index.
        conn.execute("SET enable_seqscan = off")
        while not stop.is_set():
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                seqs = [
                    seq
                    for (seq,) in conn.execute(
                        "SELECT seq FROM events WHERE seq > %s OR seq = ANY(%s)",
                        (top, list(holes)),
                    )
                ]
                at = time.time()
                for seq in seqs:
                    visible.setdefault(seq, at)
                if seqs and max(seqs) > top:
                    newest = max(seqs)
                    holes.update(range(max(top, newest - RAW_WINDOW) + 1, newest + 1))
                    holes = {seq for seq in holes if seq > newest - RAW_WINDOW}
                    top = newest
                holes.difference_update(seqs)
            time.sleep(LATENCY_POLL_S)


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to the PostgreSQL store `url`, in its schema: no pool,
    no watermark."""
    pg = parse_store_url(url)
    assert isinstance(pg, PostgresUrl)
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        if pg.schema is not None:
            conn.execute("SELECT set_config('search_path', %s, false)", (pg.schema,))
        yield conn


def _began(url: str) -> dict[int, tuple[float, float]]:
    """Each row's `sent_at` and `received_at`: the server's `now()` in the transaction that
    stored it, so when its bridge began that transaction (one host, one clock)."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT seq, (payload->>'sent_at')::float8, extract(epoch FROM received_at)::float8"
            " FROM events"
        )
        return {seq: (sent, began) for seq, sent, began in rows}


def _tail(cfg: BenchConfig, spec: StreamSpec, n: int) -> Tail:
    """`n` bridges at `cfg.rate`, followed by the two readers: what each saw."""
    work = cfg.work / f"tail-{n}"
    client_ids, topic_filter = _bridge_ids(n)
    seen: Seen = []
    visible: dict[int, float] = {}
    stop = threading.Event()
    with (
        _broker(work / "broker") as mosq,
        _fresh_store(cfg, work, "store") as url,
        contextlib.ExitStack() as stack,
    ):
        register(mosq.port, client_ids, topic_filter)
        group = GROUP if n > 1 else None
        bridges = start_bridges(
            mosq.url, url, client_ids, cfg.durability, work, group=group, stack=stack
        )
        reader = open_reader(parse_store_url(url))
        stack.callback(reader.close)
        threads = [
            threading.Thread(target=_follow, args=(reader, seen, stop), name="tail"),
            threading.Thread(target=_follow_raw, args=(url, visible, stop), name="raw"),
        ]
        for thread in threads:
            thread.start()
        try:
            with start_flood(mosq.port, spec, work / "publisher.log", rate=cfg.rate) as pub:
                pub.result(cfg.duration * 2 + 60)
            watch = StoreWatch(url)
            stack.callback(watch.close)
            watch.wait(
                lambda c: c.received >= spec.count,
                timeout=60,
                alive=lambda: _check_alive(bridges),
            )
            time.sleep(0.2)  # let the reader see the last commit
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        began = _began(url)
    return Tail(seen, visible, began)


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return round(sorted_values[index] * 1000, 2)


def latency(cfg: BenchConfig) -> dict[str, Any]:
    """Publish at a fixed rate to a live bridge; a reader polls the store every millisecond
    and takes, for each new row, now minus the `sent_at` the publisher put in its payload."""
    work = cfg.work / "latency"
    spec = cfg.spec(max(1, round(cfg.rate * cfg.duration)), seed=101)
    path, url = _store(work, "store")
    samples: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        watch = StoreWatch(path)
        last = 0
        try:
            while not stop.is_set():
                rows = watch.sent_at_since(last)
                now = time.time()
                if rows:
                    samples.extend(now - sent_at for _, sent_at in rows)
                    last = rows[-1][0]
                time.sleep(LATENCY_POLL_S)
        finally:
            watch.close()

    with (
        _broker(work / "broker") as mosq,
        start_bridge(mosq.url, url, "bench-latency", cfg.durability, work / "bridge.log") as bridge,
    ):
        thread = threading.Thread(target=reader, name="bench-latency-reader")
        thread.start()
        watch = StoreWatch(path)
        try:
            cpu = cpu_seconds(bridge.pid)
            with start_flood(mosq.port, spec, work / "publisher.log", rate=cfg.rate) as pub:
                published = pub.result(cfg.duration * 2 + 60)
            _, counts = watch.wait(
                lambda c: c.received >= spec.count, timeout=60, alive=bridge.check_alive
            )
            time.sleep(0.05)  # let the reader see the last commit
            busy = cpu_seconds(bridge.pid) - cpu
            counts = watch.counts(rows=True)
        finally:
            stop.set()
            thread.join(10)
            watch.close()
    _check(counts, spec, spec.count, "latency")
    if len(samples) != spec.distinct:
        raise BenchError(f"latency: the reader saw {len(samples)} rows of {spec.distinct}")
    ordered = sorted(samples)
    return {
        "method": "payload sent_at (publisher, just before publish) to the row being visible "
        f"to a reader polling the store every {LATENCY_POLL_S * 1000:g} ms",
        "rate": cfg.rate,
        "achieved_rate": published["rate"],
        "duration_s": cfg.duration,
        "events": len(ordered),
        "distinct": spec.distinct,
        "unique": counts.unique,
        "p50_ms": _percentile(ordered, 0.50),
        "p99_ms": _percentile(ordered, 0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
        "bridge_cpu_percent": round(busy / published["seconds"] * 100, 1),
    }


async def _post_all(url: str, bodies: list[bytes], timeout: float) -> int:
    """`HTTP_CLIENTS` clients, each with its own connection, posting until no body is left."""
    queue = list(reversed(bodies))
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        async with httpx.AsyncClient(timeout=timeout) as http:
            while queue:
                body = queue.pop()
                answer = await http.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                if answer.status_code != 200:
                    raise BenchError(f"POST /publish: {answer.status_code} {answer.text[:500]}")
                accepted += int(answer.json()["accepted"])

    async with asyncio.TaskGroup() as group:
        for _ in range(HTTP_CLIENTS):
            group.create_task(client())
    return accepted


@dataclass(frozen=True, slots=True)
class HttpVariant:
    """One way of getting the stream to the broker: `batch` events a POST through the sidecar
    (of this checkout, or `sidecar_from`'s), or none (the MQTT publisher, the baseline)."""

    name: str
    batch: int | None = None
    sidecar_from: Path | None = None


def _http_variants(cfg: BenchConfig) -> list[HttpVariant]:
    variants = [HttpVariant("mqtt")]
    variants += [HttpVariant(f"batch_{b}", b) for b in HTTP_BATCHES]
    if cfg.sidecar_from is not None:
        variants += [HttpVariant(f"before_{b}", b, cfg.sidecar_from) for b in HTTP_BATCHES]
    return variants


def _http_round(cfg: BenchConfig, work: Path, variant: HttpVariant, seed: int) -> dict[str, float]:
    """The stream published one way into a fresh broker, bridge and store, timed until stored."""
    spec = cfg.spec(cfg.http_count, seed=seed)
    path, url = _store(work, "store")
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(_broker(work / "broker"))
        bridge = stack.enter_context(
            start_bridge(mosq.url, url, "bench-http", cfg.durability, work / "bridge.log")
        )
        watch = StoreWatch(path)
        stack.callback(watch.close)
        watch.mark()
        if variant.batch is None:
            start = time.time()
            accepted = _publish(mosq.port, spec, work / "publisher.log", cfg.timeout)
            answered, api_cpu = time.time(), 0.0
        else:
            env = None
            if variant.sidecar_from is not None:
                # PYTHONSAFEPATH: `python -m` must not put the current directory first.
                path_env = {"PYTHONPATH": str(variant.sidecar_from), "PYTHONSAFEPATH": "1"}
                env = dict(os.environ) | path_env
            now = time.time()
            stream = [d.body(now) for d in drafts(spec, with_topic=True)]
            bodies = [
                b"[" + b",".join(stream[i : i + variant.batch]) + b"]"
                for i in range(0, len(stream), variant.batch)
            ]
            port = free_port()
            api = stack.enter_context(start_api(mosq.url, url, port, work / "api.log", env=env))
            api_cpu = cpu_seconds(api.pid)
            start = time.time()
            accepted = asyncio.run(_post_all(f"http://127.0.0.1:{port}/publish", bodies, 60))
            answered = time.time()
            api_cpu = cpu_seconds(api.pid) - api_cpu
        end, _ = watch.wait(
            lambda c: c.received >= accepted, timeout=cfg.timeout, alive=bridge.check_alive
        )
        counts = watch.counts(rows=True)
    if accepted != spec.count:
        raise BenchError(f"http {variant.name}: {accepted} of {spec.count} accepted")
    _check(counts, spec, accepted, f"http {variant.name}")
    return {
        "events_per_s": spec.count / (end - start),
        "accepted_per_s": spec.count / (answered - start),
        "api_cpu_us_per_event": api_cpu / spec.count * 1e6,
        "unique": counts.unique,
    }


def http(cfg: BenchConfig) -> dict[str, Any]:
    """The same stream into a live bridge: from 4 clients `POST /publish` in batches of 1,000
    and of 100, and from one MQTT publisher (the baseline); with `sidecar_from`, also through
    that checkout's sidecar. Each round a fresh broker, bridge and store per variant, the
    order reversed every other round; medians."""
    variants = _http_variants(cfg)
    rounds: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    for r in range(cfg.repeat):
        for i, variant in enumerate(variants if r % 2 == 0 else variants[::-1]):
            work = cfg.work / "http" / f"{r}-{variant.name}"
            rounds[variant.name].append(_http_round(cfg, work, variant, seed=201 + 10 * r + i))
    spec = cfg.spec(cfg.http_count, seed=201)
    result: dict[str, Any] = {
        "method": f"{HTTP_CLIENTS} clients POST batches; the baseline, one MQTT publisher (paho,"
        f" QoS 1, window {DEFAULT_WINDOW}); from the first request to a store poll seeing the"
        " last commit; fresh broker, bridge and store each",
        "events": spec.count,
        "distinct": spec.distinct,
        "repeat": cfg.repeat,
    }
    for name, runs in rounds.items():
        result[name] = {
            key: round(statistics.median(run[key] for run in runs), 1)
            for key in ("events_per_s", "accepted_per_s", "api_cpu_us_per_event")
        }
        result[name]["rounds"] = [round(run["events_per_s"]) for run in runs]
    # Every round of every variant stored each distinct event once (`_check`): the fewest.
    result["unique"] = min(int(run["unique"]) for runs in rounds.values() for run in runs)
    mqtt = result["mqtt"]["events_per_s"]
    for name in rounds:
        if name != "mqtt":
            result[name]["vs_mqtt"] = round(result[name]["events_per_s"] / mqtt, 2)
    for batch in HTTP_BATCHES if cfg.sidecar_from is not None else ():
        after, before = result[f"batch_{batch}"], result[f"before_{batch}"]
        after["vs_before"] = round(after["events_per_s"] / before["events_per_s"], 2)
        after["cpu_vs_before"] = round(
            after["api_cpu_us_per_event"] / before["api_cpu_us_per_event"], 2
        )
    return result


def _record_rate(url: str, events: list[Event], durability: str) -> float:
    """The store alone: `record()` in the bridge's batch size, events parsed beforehand."""
    store = open_writer(parse_store_url(url), StoreOptions(Durability(durability)))
    try:
        start = time.perf_counter()
        for i in range(0, len(events), BATCH_SIZE):
            store.record(events[i : i + BATCH_SIZE], [])
        return round(len(events) / (time.perf_counter() - start), 1)
    finally:
        store.close()


def _parsed(spec: StreamSpec) -> list[Event]:
    now = time.time()
    events = []
    for draft in drafts(spec):
        event = parse_message(PREFIX + draft.topic, draft.body(now))
        if not isinstance(event, Event):
            raise BenchError(f"the bench's own event was rejected: {event.reason}")
        events.append(event)
    return events


def growth(cfg: BenchConfig) -> dict[str, Any]:
    """Inserts into a fresh store and into one holding `prefill` events: the store alone
    (`record()`, alternating three times) and the real bridge draining the same backlog."""
    work = cfg.work / "growth"
    work.mkdir(parents=True, exist_ok=True)
    big = _store(work, "prefilled")
    started = time.monotonic()
    prefill(big[0], cfg.prefill, payload_bytes=cfg.payload_bytes)
    prefill_s = time.monotonic() - started
    rounds = 3
    per_round = max(BATCH_SIZE, cfg.growth_count // rounds)
    fresh_rates, big_rates = [], []
    for r in range(rounds):
        events = _parsed(StreamSpec(per_round, 0.0, cfg.payload_bytes, seed=300 + r))
        fresh_rates.append(_record_rate(_store(work, "fresh-direct")[1], events, cfg.durability))
        events = _parsed(StreamSpec(per_round, 0.0, cfg.payload_bytes, seed=310 + r))
        big_rates.append(_record_rate(big[1], events, cfg.durability))

    spec = cfg.spec(cfg.growth_count, seed=401)
    ids = ("bench-fresh", "bench-prefilled")
    with _broker(work / "broker") as mosq:
        register(mosq.port, ids)
        sent = _publish(mosq.port, spec, work / "publisher.log", cfg.timeout)
        fresh = _drain_with_bridges(
            cfg, mosq, _store(work, "fresh-bridge")[1], [ids[0]], sent, work / "bridge-fresh"
        )
        _check(fresh.counts, spec, sent, "growth (fresh store)")
        prefilled = _drain_with_bridges(cfg, mosq, big[1], [ids[1]], sent, work / "bridge-big")
        _check(prefilled.counts, spec, sent, "growth (prefilled store)")
    store_fresh, store_big = _median(fresh_rates), _median(big_rates)
    return {
        "method": "store alone: record() in batches of "
        f"{BATCH_SIZE}, 3 alternating rounds of {per_round}, medians; bridge: the same "
        f"backlog of {sent} drained into each store",
        "prefill_events": cfg.prefill,
        "distinct": spec.distinct,
        "unique": [fresh.counts.unique, prefilled.counts.unique],
        "prefill_s": round(prefill_s, 1),
        "store_fresh_per_s": store_fresh,
        "store_prefilled_per_s": store_big,
        "store_ratio": round(store_big / store_fresh, 3),
        "bridge_fresh_per_s": fresh.rate,
        "bridge_prefilled_per_s": prefilled.rate,
        "bridge_ratio": round(prefilled.rate / fresh.rate, 3),
    }


def _received(at_least: int) -> Callable[[Counts], bool]:
    return lambda counts: counts.received >= at_least


def memory(cfg: BenchConfig) -> dict[str, Any]:
    """A live stream of `memory_count` events through the bridge; its resident memory sampled
    as the stored count passes each tenth, to show it does not grow with the stream."""
    work = cfg.work / "memory"
    spec = cfg.spec(cfg.memory_count, seed=501)
    path, url = _store(work, "store")
    marks = [spec.count * k // 10 for k in range(1, 11)]
    samples: list[dict[str, float]] = []
    with (
        _broker(work / "broker") as mosq,
        start_bridge(mosq.url, url, "bench-memory", cfg.durability, work / "bridge.log") as bridge,
    ):
        watch = StoreWatch(path)
        try:
            with start_flood(mosq.port, spec, work / "publisher.log") as publisher:
                for mark in marks:
                    _, counts = watch.wait(
                        _received(mark),
                        timeout=cfg.timeout,
                        every=0.05,
                        alive=bridge.check_alive,
                    )
                    samples.append(
                        {
                            "events": counts.received,
                            "rss_mb": rss_mb(bridge.pid),
                            "peak_rss_mb": peak_rss_mb(bridge.pid),
                        }
                    )
                publisher.result(cfg.timeout)
            counts = watch.counts(rows=True)
        finally:
            watch.close()
    _check(counts, spec, spec.count, "memory")
    return {
        "method": "live, publisher unpaced (window "
        f"{DEFAULT_WINDOW}); VmRSS/VmHWM of the bridge as each tenth is stored",
        "events": spec.count,
        "distinct": spec.distinct,
        "unique": counts.unique,
        "peak_rss_mb": samples[-1]["peak_rss_mb"],
        "peak_rss_mb_at_10pct": samples[0]["peak_rss_mb"],
        "samples": samples,
    }


SCENARIOS: dict[str, Callable[[BenchConfig], dict[str, Any]]] = {
    "drain": drain,
    "latency": latency,
    "http": http,
    "growth": growth,
    "memory": memory,
}
