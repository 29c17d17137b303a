"""`logagg bench`: run the scenarios, print a table, write the JSON, say which targets hold.

Exit status 0 when every count was right, 1 otherwise: a benchmark is not a
timed test, so the targets are reported, never enforced.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import retention
from bench.export import export as export_scenario
from bench.limit import BASELINE, C_CLIENT, DUP_RATIO, FULL, NORMAL, limit
from bench.procs import BenchError
from bench.queries import query as query_scenario
from bench.scenarios import SCENARIOS, BenchConfig, scaling
from bridge.store import redact_url
from supervise.mosquitto import find_mosquitto

# The targets: (section, key, threshold, higher is better, what it says).
TARGETS: list[tuple[str, str, float, bool, str]] = [
    ("drain", "ratio.throughput", 1.3, True, "bridge ≥ 1.3x baseline events/s (drain)"),
    (
        "limit",
        f"consumers.{FULL}.vs_c_client",
        0.5,
        True,
        "bridge (durability full) ≥ 0.5x mosquitto_sub events/s",
    ),
    (
        "limit",
        f"consumers.{NORMAL}.vs_c_client",
        0.7,
        True,
        "bridge (durability normal) ≥ 0.7x mosquitto_sub events/s",
    ),
    ("latency", "p99_ms", 25.0, False, "p99 publish→committed ≤ 25 ms"),
    ("growth", "store_ratio", 0.7, True, "store insert rate at prefill ≥ 0.7x fresh"),
    ("growth", "bridge_ratio", 0.7, True, "bridge rate into prefilled store ≥ 0.7x fresh"),
    ("memory", "peak_rss_mb", 150.0, False, "bridge peak RSS after the stream ≤ 150 MB"),
    ("http", "batch_1000.events_per_s", 30000.0, True, "HTTP, batches of 1,000: ≥ 30,000/s stored"),
    ("http", "batch_100.events_per_s", 10000.0, True, "HTTP, batches of 100: ≥ 10,000/s stored"),
    ("query", "kinds.topic_hour.p95_ms", 20.0, False, "search topic + 1 h: p95 ≤ 20 ms"),
    ("query", "kinds.needle.p95_ms", 100.0, False, "search needle word: p95 ≤ 100 ms"),
    ("query", "kinds.common_day.p95_ms", 100.0, False, "search common word + 1 day: p95 ≤ 100 ms"),
    (
        "query",
        "kinds.field_topic_day.p95_ms",
        100.0,
        False,
        "search level:error + topic + 1 day: p95 ≤ 100 ms",
    ),
    (
        "query",
        "kinds.histogram_topic_day.p95_ms",
        300.0,
        False,
        "histogram topic, 24 h by minute: p95 ≤ 300 ms",
    ),
    ("query", "deep_ratio.topic", 2.0, False, "deep page / page 1 (topic, p50) ≤ 2x"),
    ("query", "deep_ratio.common", 2.0, False, "deep page / page 1 (common word, p50) ≤ 2x"),
    (
        "retention_purge",
        "during_purge.p99_ms",
        25.0,
        False,
        "p99 publish→queryable while a purge runs ≤ 25 ms",
    ),
    (
        "retention_flat",
        "last_over_first",
        1.1,
        False,
        "store size: last third's max ≤ first third's max + 10%",
    ),
    ("export", "cli.events_per_s", 100_000.0, True, "logagg export ≥ 100,000 events/s"),
    ("export", "cli.rss_growth_mb", 20.0, False, "logagg export RSS growth ≤ 20 MB (flat)"),
    ("export", "http.identity.rss_growth_mb", 20.0, False, "sidecar export RSS growth ≤ 20 MB"),
]


# `--quick`: every scenario, small, to prove the benchmark works in well under 30 s (CI).
QUICK: dict[str, Any] = {
    "count": 5000,
    "duration": 3.0,
    "prefill": 100_000,
    "growth_count": 3000,
    "memory_count": 10_000,
    "http_count": 4000,
    "timeout": 60.0,
    "backlog": 20_000,
    "retention_s": 2,
    "windows": 5,
}


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean nothing without it."""
    model = "unknown"
    with Path("/proc/cpuinfo").open() as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mosquitto = find_mosquitto()
    version = ""
    if mosquitto:
        done = subprocess.run(
            [mosquitto, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
        text = done.stdout or done.stderr
        version = text.splitlines()[0] if text else ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "mosquitto": version,
        # Other work on the machine skews every figure: look here first when one is odd.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _get(section: dict[str, Any], dotted: str) -> float | None:
    """`section["a"]["b"]` for "a.b", or None when the scenario did not report it."""
    value: Any = section
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the scenarios that ran: its value and whether it holds."""
    verdicts = []
    for name, key, threshold, higher, says in TARGETS:
        section = report.get(name)
        value = None if not isinstance(section, dict) else _get(section, key)
        if value is None:
            continue
        met = value >= threshold if higher else value <= threshold
        verdicts.append({"target": says, "value": value, "threshold": threshold, "met": met})
    return verdicts


def _n(value: float) -> str:
    return f"{value:,.0f}"


SCALING_HEADER = (
    "  store        bridges   events/s   ratio  vs 1 PG   CPU µs/event: each bridge"
    "   broker  postgres   lock/IO waits"
)


def table(report: dict[str, Any]) -> str:
    """The report as text a person reads in a terminal."""
    m = report["machine"]
    cfg = report["config"]
    lines = [
        f"logagg bench  {m['date']}  nproc {m['nproc']}  {m['cpu']}  Python {m['python']}",
        (
            f"  durability {cfg['durability']}, payload {cfg['payload_bytes']} B, "
            f"dup ratio {cfg['dup_ratio']}, {m['mosquitto']}, load average at start "
            f"{m['loadavg_1m_at_start']}"
        ),
    ]
    if d := report.get("drain"):
        b, r = d["baseline"], d["bridge"]
        who = f"{d['bridges']} bridges (" if d["bridges"] > 1 else "bridge (logagg bridge, "
        label = f"{who}{d['store']})"
        lines += [
            "",
            (
                f"drain ({_n(d['messages'])} queued messages, median of {d['repeat']})"
                "      events/s   CPU s/1000   peak RSS"
            ),
            (
                f"  baseline (bare aiomqtt, counts)     {_n(b['events_per_s']):>9}"
                f"   {b['cpu_s_per_1000']:>10.4f}"
            ),
            (
                f"  {label:<36}{_n(r['events_per_s']):>9}"
                f"   {r['cpu_s_per_1000']:>10.4f}   {r['peak_rss_mb']:>6.1f} MB"
            ),
            (
                f"  bridge / baseline                   {d['ratio']['throughput']:>8.2f}x"
                f"   {d['ratio']['cpu']:>9.2f}x"
            ),
        ]
    if lim := report.get("limit"):
        names = {
            C_CLIENT: "mosquitto_sub -c -q 1 (C, stores nothing)",
            BASELINE: "bare aiomqtt (counts)",
            FULL: "bridge, durability full",
            NORMAL: "bridge, durability normal",
        }
        lines += [
            "",
            (
                f"limit ({_n(lim['messages'])} queued, {lim['dup_ratio']:.0%} duplicates,"
                f" median of {lim['repeat']})      events/s   vs C   vs aiomqtt"
            ),
        ]
        lines += [
            f"  {names[name]:<42}{_n(c['events_per_s']):>9}  {c['vs_c_client']:>5.2f}x"
            f"  {c['vs_aiomqtt']:>8.2f}x"
            for name, c in lim["consumers"].items()
        ]
    if sc := report.get("scaling"):
        lines += [
            "",
            f"scaling ({_n(sc['messages'])} queued messages, median of {sc['repeat']})",
            SCALING_HEADER,
        ]
        for row in sc["setups"]:
            pg = row["postgres_cpu_s_per_1000"]
            each = "/".join(f"{us:g}" for us in row["bridge_cpu_us_per_event"])
            lines.append(
                f"  {row['store']:<12} {row['bridges']:>7} {_n(row['events_per_s']):>10}"
                f"   {row['ratio']:>4.2f}x   {row['ratio_to_one_postgres']:>4.2f}x  {each:>26}"
                f"  {row['broker_cpu_s_per_1000'] * 1000:>7.1f}"
                f"  {'-' if pg is None else f'{pg * 1000:.1f}':>8}"
                f"   {row['lock_waits']:.2f}/{row['io_waits']:.2f}"
            )
        spied = sc["profile"]
        if "error" in spied:
            lines.append(f"  where a bridge's time goes: {spied['error']}")
        else:
            lines.append(
                f"  where 1 bridge on PostgreSQL spends its time (py-spy, {spied['samples']}"
                f" samples, {_n(spied['events_per_s'])} events/s), in the function itself:"
            )
            lines += [f"    {share:6.1%}  {name}" for name, share in spied["self_share"].items()]
        tail = sc["live_tail"]
        for n in (1, 3):
            t = tail[f"bridges_{n}"]
            lines.append(
                f"  live tail through the watermark, {n} bridge(s) at {_n(tail['rate'])}/s:"
                f" p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, max {t['max_ms']} ms;"
                f" publish to the bridge's transaction p50 {t['to_transaction_p50_ms']} ms,"
                f" p99 {t['to_transaction_p99_ms']} ms; thence visible at all"
                f" p50 {t['to_visible_p50_ms']} ms, p99 {t['to_visible_p99_ms']} ms;"
                f" held by the watermark p50 {t['watermark_p50_ms']} ms,"
                f" p99 {t['watermark_p99_ms']} ms"
            )
    if lat := report.get("latency"):
        lines += [
            "",
            (
                f"latency (live, {_n(lat['rate'])}/s for {lat['duration_s']:g} s, "
                f"{_n(lat['events'])} events)"
            ),
            (
                f"  publish → queryable   p50 {lat['p50_ms']} ms   p99 {lat['p99_ms']} ms"
                f"   max {lat['max_ms']} ms   (bridge CPU {lat['bridge_cpu_percent']}%)"
            ),
        ]
    if h := report.get("http"):
        lines += [
            "",
            (
                f"http (POST /publish, {_n(h['events'])} events, median of {h['repeat']})"
                "   stored/s   answered/s   sidecar µs/event   vs MQTT"
            ),
        ]
        for name, row in h.items():
            if isinstance(row, dict):
                vs = f"{row['vs_mqtt']:.2f}x" if "vs_mqtt" in row else "1.00x"
                lines.append(
                    f"  {name:<34} {_n(row['events_per_s']):>9} {_n(row['accepted_per_s']):>12}"
                    f" {row['api_cpu_us_per_event']:>18.1f} {vs:>9}"
                    + (f"   {row['vs_before']:.2f}x before" if "vs_before" in row else "")
                )
    if g := report.get("growth"):
        lines += [
            "",
            (
                f"growth (fresh store vs {_n(g['prefill_events'])} events, "
                f"prefilled in {g['prefill_s']} s)       fresh    prefilled   ratio"
            ),
            (
                f"  store alone, record()           {_n(g['store_fresh_per_s']):>9}/s"
                f" {_n(g['store_prefilled_per_s']):>9}/s   {g['store_ratio']:.2f}x"
            ),
            (
                f"  bridge draining a backlog       {_n(g['bridge_fresh_per_s']):>9}/s"
                f" {_n(g['bridge_prefilled_per_s']):>9}/s   {g['bridge_ratio']:.2f}x"
            ),
        ]
    if mem := report.get("memory"):
        curve = ", ".join(f"{_n(s['events'])}: {s['peak_rss_mb']:.0f}" for s in mem["samples"][::3])
        lines += [
            "",
            f"memory (live stream of {_n(mem['events'])} events)",
            f"  bridge peak RSS {mem['peak_rss_mb']} MB  (events: MB  {curve})",
        ]
    if q := report.get("query"):
        filled = f", prefilled in {q['prefill_s']} s" if q["prefill_s"] is not None else ""
        lines += [
            "",
            f"query ({q['store']}: {_n(q['events'])} events{filled})",
            "  kind                    queries    p50 ms    p95 ms    max ms   found  timeouts",
        ]
        lines += [
            f"  {name:<22}{k['n']:>8}{k['p50_ms']:>10}{k['p95_ms']:>10}{k['max_ms']:>10}"
            f"{k['mean_found']:>8}{k['timeouts']:>10}"
            for name, k in q["kinds"].items()
        ]
        lines.append(
            f"  page {q['deep_page']} / page 1 (p50): topic {q['deep_ratio']['topic']}x,"
            f" common word {q['deep_ratio']['common']}x"
        )
    if rp := report.get("retention_purge"):
        lines += [
            "",
            (
                f"retention purge ({rp['store']}: {_n(rp['backlog'])} expired events, retention "
                f"{rp['retention_s']} s, live stream {_n(rp['rate'])}/s)"
            ),
            (
                f"  purge {rp['purge_s']} s, {_n(rp['purge_per_s'] or 0)} events/s deleted,"
                f" began {rp['purge_started_after_s']} s after the bridge started"
                + ("" if rp["finished"] else f"; UNFINISHED: {_n(rp['deleted'])} deleted")
            ),
            "  publish → queryable          events    p50 ms    p99 ms    max ms",
        ]
        for label, key in (
            ("no retention (baseline)", "baseline"),
            ("during the purge", "during_purge"),
            ("after the purge", "after_purge"),
        ):
            lat = rp[key]
            if lat["events"]:
                lines.append(
                    f"  {label:<27}{lat['events']:>8}{lat['p50_ms']:>10}{lat['p99_ms']:>10}"
                    f"{lat['max_ms']:>10}"
                )
        lines.append(f"  p99 during / baseline: {rp['p99_ratio']}x")
    if rf := report.get("retention_flat"):
        lines += [
            "",
            (
                f"retention flat ({rf['store']}: retention {rf['retention_s']} s, "
                f"{_n(rf['rate'])}/s for {rf['seconds']} s, {len(rf['samples'])} size samples)"
            ),
            (
                f"  max size: first third {rf['first_third_max_bytes'] / 2**20:.1f} MiB, last "
                f"third {rf['last_third_max_bytes'] / 2**20:.1f} MiB ({rf['last_over_first']}x)"
                f", at most {_n(rf['max_rows'])} rows: {'flat' if rf['flat'] else 'GROWING'}"
            ),
        ]
    if ex := report.get("export"):
        filled = f", prefilled in {ex['prefill_s']} s" if ex["prefill_s"] is not None else ""
        lines += [
            "",
            (
                f"export ({ex['store']}: {_n(ex['events'])} events{filled};"
                f" load {' '.join(ex['loadavg'])})"
            ),
            "  reader                     events/s   seconds   RSS start  peak  growth MB",
        ]
        readers = [("logagg export --store", ex["cli"])]
        readers += [(f"GET /events/export {k}", v) for k, v in ex["http"].items()]
        lines += [
            f"  {name:<26}{_n(r['events_per_s']):>9}{r['seconds']:>10}"
            f"{r['rss_start_mb']:>11}{r['rss_peak_mb']:>6}{r['rss_growth_mb']:>8}"
            for name, r in readers
        ]
        rp = ex["replay"]
        lines.append(
            f"  replay {_n(rp['events'])} events: {_n(rp['events_per_s'])}/s, bare paho"
            f" (bench.flood) {_n(rp['baseline_events_per_s'])}/s: {rp['ratio']}x"
            f" (median of {rp['rounds']} alternated rounds)"
        )
    if verdicts := report.get("targets"):
        lines += ["", "targets"]
        lines += [
            f"  {'met   ' if v['met'] else 'MISSED'}  {v['target']}: {v['value']:g}"
            for v in verdicts
        ]
    if report.get("error"):
        lines += ["", f"ERROR: {report['error']}"]
    return "\n".join(lines)


def run_bench(
    *,
    quick_mode: bool,
    skip: Collection[str],
    compare_scaling: bool = False,
    query: bool = False,
    export: bool = False,
    limit_only: bool = False,
    retention_purge: bool = False,
    retention_flat: bool = False,
    json_out: Path,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> int:
    """Run the scenarios not skipped (with `compare_scaling`, only that comparison; with
    `query`, only the query scenario on `store`; with `limit_only`, only the `limit`
    scenario, its backlog 30% duplicates unless `dup_ratio` says otherwise; with
    `retention_purge` and/or `retention_flat`, only those) and return
    the exit status. `options` are `BenchConfig` fields; those left None take the defaults
    (the `--quick` ones if asked)."""
    unknown = set(skip) - SCENARIOS.keys()
    if unknown:
        raise ValueError(f"unknown scenario(s) {sorted(unknown)}: choose from {list(SCENARIOS)}")
    if find_mosquitto() is None:
        raise ValueError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    chosen = {
        **(QUICK if quick_mode else {}),
        **({"dup_ratio": DUP_RATIO} if limit_only else {}),
        **{k: v for k, v in options.items() if v is not None},
    }
    cfg = BenchConfig(work=Path(tempfile.gettempdir()), **chosen)  # validates before mkdtemp
    if compare_scaling and cfg.store is None:
        raise ValueError("--compare-scaling needs --store postgresql://…")
    if query and cfg.store is None:
        raise ValueError("--query needs --store sqlite:///… or postgresql://…")
    if export and cfg.store is None:
        raise ValueError("--export needs --store sqlite:///… or postgresql://…")
    sqlite_store = cfg.store is not None and cfg.store.startswith("sqlite://")
    if sqlite_store and not (query or export or (retention_purge and not retention_flat)):
        raise ValueError(
            "--store takes a sqlite:// URL only with --query, --export or --retention-purge"
        )
    scenarios: dict[str, Callable[[BenchConfig], dict[str, Any]]] = SCENARIOS
    if compare_scaling:
        scenarios = {"scaling": scaling}
    elif query:
        scenarios = {"query": query_scenario}
    elif export:
        scenarios = {"export": export_scenario}
    elif limit_only:
        scenarios = {"limit": limit}
    elif retention_purge or retention_flat:
        scenarios = {
            name: scenario
            for name, scenario, chosen in (
                ("retention_purge", retention.purge, retention_purge),
                ("retention_flat", retention.flat, retention_flat),
            )
            if chosen
        }
    work = Path(tempfile.mkdtemp(prefix="logagg-bench-"))
    cfg = replace(cfg, work=work)
    report: dict[str, Any] = {"machine": machine(), "config": _config_dict(cfg, quick_mode)}
    started = time.monotonic()
    status = 0
    try:
        for name, scenario in scenarios.items():
            if name in skip:
                continue
            echo(f"[{time.monotonic() - started:5.0f}s] {name} …")
            report[name] = scenario(cfg)
    except BenchError as exc:
        report["error"] = str(exc)
        status = 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["targets"] = judge(report)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    echo(table(report))
    echo(f"\n{report['seconds']} s; JSON in {json_out}")
    return status


def _config_dict(cfg: BenchConfig, quick_mode: bool) -> dict[str, Any]:
    fields = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k != "work"}
    if cfg.sidecar_from is not None:
        fields["sidecar_from"] = str(cfg.sidecar_from)
    if cfg.store is not None:
        fields["store"] = redact_url(cfg.store)
    return {**fields, "quick": quick_mode}
