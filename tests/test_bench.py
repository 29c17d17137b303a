"""`logagg bench --quick`: the benchmark runs end to end and its counts are right.

A benchmark is not a timed test: this asserts that every scenario ran and
stored each distinct event exactly once, never how fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import chart_read
from bench.broker_queue import measure
from bench.profile import summarise
from bench.scenarios import BenchConfig, live_tail
from bench.stream import StreamSpec, drafts
from tests.helpers import logagg_cli

pytestmark = pytest.mark.broker


def bench(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """`logagg bench ARGS` in its own process, which must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "logagg", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


SECTIONS = {"machine", "config", "drain", "latency", "http", "growth", "memory", "targets"}


# Slow: it runs every benchmark scenario end to end (~16 s on an idle machine, ~75 s loaded).
@pytest.mark.slow
def test_bench_quick_runs_every_scenario_with_exact_counts(tmp_path: Path) -> None:
    """Exit 0, every section in the JSON, unique stored == distinct sent everywhere."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "logagg", "bench", "--quick", "--json-out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report.keys() >= SECTIONS
    assert "error" not in report
    drain = report["drain"]
    assert [run["unique"] for run in drain["bridge"]["runs"]] == [drain["distinct"]]
    assert [run["messages"] for run in drain["baseline"]["runs"]] == [drain["messages"]]
    for name in ("latency", "http", "memory"):
        assert report[name]["unique"] == report[name]["distinct"], name
    assert report["latency"]["events"] == report["latency"]["distinct"]
    growth = report["growth"]
    assert growth["unique"] == [growth["distinct"]] * 2
    assert {v["target"] for v in report["targets"]}  # judged, whatever the verdicts
    assert "bridge / baseline" in done.stdout


def test_bench_refuses_an_unknown_scenario() -> None:
    """A typo in --skip is an error, not a silently fuller run."""
    done = logagg_cli("bench", "--quick", "--skip", "drian")
    assert done.exit_code == 2
    assert "unknown scenario" in done.stderr


def test_bench_query_needs_a_store_and_sqlite_only_for_it() -> None:
    """The query scenario searches a store the user names; a drain takes PostgreSQL only."""
    done = logagg_cli("bench", "--query")
    assert done.exit_code == 2
    assert "--query needs --store" in done.stderr
    done = logagg_cli("bench", "--store", "sqlite:///x.db")
    assert done.exit_code == 2
    assert "only with --query" in done.stderr


def test_bench_drain_with_two_bridges_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """`--bridges 2 --store postgresql://…`: two bridges on one shared subscription drain the
    backlog into a schema of their own; each distinct event stored once."""
    out = tmp_path / "bench.json"
    args = ["--quick", "--bridges", "2", "--store", pg_url, "--json-out", str(out)]
    args += ["--skip", "latency", "--skip", "http", "--skip", "growth", "--skip", "memory"]
    done = bench(args, timeout=60)
    drain = json.loads(out.read_text())["drain"]
    assert (drain["bridges"], drain["store"]) == (2, "postgresql")
    [run] = drain["bridge"]["runs"]
    assert run["unique"] == drain["distinct"]
    assert run["received"] == drain["messages"]
    assert len(run["bridges_cpu_s_per_1000"]) == 2
    assert "2 bridges (postgresql)" in done.stdout


def test_live_tail_splits_each_rows_latency_and_sees_every_row(pg_url: str, tmp_path: Path) -> None:
    """The live tail on PostgreSQL: both readers see every row (the raw one asks only for
    what it has not seen, holes included), and each row's latency is split at its
    transaction's start."""
    result = live_tail(BenchConfig(tmp_path, store=pg_url, rate=300.0, duration=2.0))
    for n in (1, 3):
        tail = result[f"bridges_{n}"]
        assert 0 <= tail["to_transaction_p50_ms"] <= tail["p50_ms"] + 1
        assert tail["to_visible_p50_ms"] >= 0
        assert tail["watermark_p50_ms"] >= 0


# slow: a benchmark run with a backlog; the fast set keeps a drain benchmark
@pytest.mark.slow
@pytest.mark.broker
def test_broker_queue_measures_what_a_backlog_costs_mosquitto(tmp_path: Path) -> None:
    """`python -m bench.broker_queue`, small: every event queued, and each costs the broker
    memory and file beyond its own bytes (the figures behind mosquitto.conf's queue limits)."""
    result = measure(tmp_path / "broker", 5_000, 130, idle_s=0.5)
    assert result["queued"] == 5_000
    assert result["rss_mb"] > result["rss_empty_mb"]
    assert result["file_per_event_bytes"] > result["event_bytes"] > 200
    assert result["idle_cpu"] >= 0


def test_chart_read_counts_only_the_last_minutes(tmp_path: Path) -> None:
    """`python -m bench.chart_read`, small: the dashboard's window counts exactly the recent
    events, however many older ones lie before them."""
    result = chart_read.measure(tmp_path / "store.db", 2_000, 300)
    assert (result["events"], result["counted"]) == (2_300, 300)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None, reason="needs mosquitto_sub (mosquitto-clients)"
)
def test_bench_limit_drains_one_backlog_with_four_consumers(tmp_path: Path) -> None:
    """`logagg bench --limit`, small: mosquitto_sub, bare aiomqtt and the bridge (full and
    normal) each drain the same backlog of 30% duplicates; the bridges store each distinct
    event once, the C client reads every message, and the ratios are to the C client."""
    out = tmp_path / "bench.json"
    args = ["--limit", "--count", "3000", "--repeat", "2", "--json-out", str(out)]
    done = bench(args, timeout=240)
    limit = json.loads(out.read_text())["limit"]
    assert limit["dup_ratio"] == 0.3
    consumers = limit["consumers"]
    assert set(consumers) == {"c_client", "aiomqtt", "bridge_full", "bridge_normal"}
    assert consumers["c_client"]["vs_c_client"] == 1.0
    assert [r["messages"] for r in consumers["c_client"]["runs"]] == [3000, 3000]
    for name in ("bridge_full", "bridge_normal"):
        assert [r["unique"] for r in consumers[name]["runs"]] == [limit["distinct"]] * 2
    first, second = limit["orders"]
    assert sorted(first) == sorted(second) == sorted(consumers)
    assert first[0] != second[0]  # load falls on each in turn
    assert "mosquitto_sub -c -q 1" in done.stdout


def _bench(
    out: Path, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`logagg bench ARGS` as `bench` runs it, and the JSON report it wrote to `out`."""
    done = bench([*args, "--json-out", str(out)], timeout=timeout)
    report: dict[str, Any] = json.loads(out.read_text())
    assert "error" not in report
    return done, report


# Tiny: a few thousand expired events, a 2 s retention, 200 events/s; the bridge's first
# purge may wait up to a minute, so the run takes about that long.
RETENTION_TINY = ["--backlog", "3000", "--retention-s", "2", "--rate", "200", "--duration", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_bench_retention_purge_measures_the_stream_during_a_purge(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`--retention-purge`, tiny, on each store: every backlog event deleted, every live event
    seen by the reader once (baseline, during, after), the rate and the target reported."""
    args = ["--retention-purge", *RETENTION_TINY, "--timeout", "150"]
    if store == "postgresql":
        args += ["--store", request.getfixturevalue("pg_url")]
    done, report = _bench(tmp_path / "bench.json", *args, timeout=300)
    purge = report["retention_purge"]
    assert (purge["store"], purge["backlog"], purge["prefilled"]) == (store, 3000, 3000)
    assert purge["finished"]
    assert purge["purge_per_s"] > 0
    # The live events expire too, 2 s after they came: the counter may hold some of them.
    assert purge["purge_progress"][-1]["deleted"] >= 3000
    assert purge["baseline"]["events"] == 360  # 2 s at 200/s, a tenth of them repeats
    assert purge["during_purge"]["events"] + purge["before_purge_started"]["events"] > 0
    assert purge["after_purge"]["events"] == 360
    assert [t["target"] for t in report["targets"]] == [
        "p99 publish→queryable while a purge runs ≤ 25 ms"
    ]
    assert "retention purge" in done.stdout


@pytest.mark.slow
def test_bench_retention_flat_samples_the_store_size(tmp_path: Path) -> None:
    """`--retention-flat`, tiny: the size sampled through the run, the verdict given, every
    event received."""
    args = ["--retention-flat", "--retention-s", "2", "--windows", "5", "--rate", "200"]
    _, report = _bench(tmp_path / "bench.json", *args, timeout=120)
    flat = report["retention_flat"]
    assert flat["received"] == flat["events"] == 2000
    assert len(flat["samples"]) >= 20
    assert all(s["bytes"] > 0 for s in flat["samples"])
    assert flat["first_third_max_bytes"] > 0
    assert isinstance(flat["flat"], bool)


def test_bench_streams_of_one_seed_never_share_event_ids() -> None:
    """Two runs of the same seed into one store (a purge run on a reused backlog) must not
    collide: their copies would count as duplicates and nothing would be stored."""
    spec = StreamSpec(3, 0.0, 100, seed=601)
    first = {d.head for d in drafts(spec)}
    time.sleep(0.001)
    second = {d.head for d in drafts(spec)}
    assert not first & second


def test_profile_summary_counts_each_function_by_its_innermost_frames() -> None:
    """py-spy's raw stacks, summed by the function running itself, lines apart."""
    raw = (
        "<module> (bridge/main.py:3);record (bridge/store/postgres.py:610) 6\n"
        "<module> (bridge/main.py:3);record (bridge/store/postgres.py:612) 2\n"
        "<module> (bridge/main.py:3);decode (json/decoder.py:337) 2\n"
        "garbage\n"
    )
    assert summarise(raw) == {
        "samples": 10,
        "self_share": {"record (postgres.py)": 0.8, "decode (decoder.py)": 0.2},
    }
