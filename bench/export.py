"""The export scenario (issue 12): `logagg export` and `GET /events/export` reading a large
store to /dev/null with their resident memory sampled, and `logagg replay` publishing an
export into a broker against the bare paho publisher (`bench.flood`) in the same run.

The store is one the user names (`--store`), prefilled with `bench.corpus` events through
`StoreWriter.record` when it holds none (as the query scenario does), else read as it
is. Export reads every event of it. Memory is flat when the peak RSS of the export is
within a few MB of its RSS once the first pages are out: the pages are bounded, nothing
accumulates. Replay sends the first `--count` events of the store (or all, if fewer) to a
Mosquitto of its own with no subscriber, so what is measured is the sender and the broker.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from bench.corpus import Corpus
from bench.prefill import prefill_corpus
from bench.probe import rss_mb
from bench.procs import BenchError, start_api, start_flood
from bench.scenarios import BenchConfig
from bench.stream import StreamSpec
from bridge.store import open_reader, open_writer, parse_store_url, redact_url
from supervise.mosquitto import Mosquitto, free_port

SAMPLE_EVERY_S = 0.05
# Replay rounds, alternating with the baseline's.
ROUNDS = 2


class RssSampler:
    """The resident memory of `pid`, sampled on a thread until `stop`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            try:
                self.samples.append(rss_mb(self._pid))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return  # gone, or exited and not yet reaped (a zombie has no VmRSS)

    def stop(self) -> dict[str, float]:
        """The tenth sample (the export under way), middle, last and peak sample, the
        growth from the tenth to the peak, and the second half's peak over the first's
        (flat memory: about 0, whatever the allocator kept of the first pages)."""
        self._done.set()
        self._thread.join()
        s = self.samples or [0.0]
        start = s[min(len(s) - 1, len(s) // 10)]
        return {
            "rss_start_mb": start,
            "rss_mid_mb": s[len(s) // 2],
            "rss_end_mb": s[-1],
            "rss_peak_mb": max(s),
            "rss_growth_mb": round(max(s) - start, 1),
            "rss_late_growth_mb": round(max(s[len(s) // 2 :]) - max(s[: len(s) // 2 or 1]), 1),
            "samples": len(s),
        }


def export(cfg: BenchConfig) -> dict[str, Any]:
    """The scenario as `logagg bench --export` runs it, on `--store`."""
    if cfg.store is None:
        raise BenchError("the export scenario needs --store (sqlite:///… or postgresql://…)")
    target = parse_store_url(cfg.store)
    with closing(open_writer(target)) as writer:
        held = writer.stats().unique_processed
    prefill_s = None
    if held == 0 and cfg.prefill:
        prefill_s = round(prefill_corpus(cfg.store, Corpus(cfg.prefill)), 1)
    with closing(open_reader(target)) as reader:
        held = reader.stats().unique_processed
        newest = reader.newest_seq()
    broker = Mosquitto(free_port(), cfg.work / "mosquitto")
    broker.start()
    try:
        cli = cli_export(cfg.store, held)
        http = http_export(cfg, broker.url, held)
        replay = _replay(cfg, broker, min(cfg.count, held))
    finally:
        broker.stop()
    return {
        "store": redact_url(cfg.store),
        "events": held,
        "newest_seq": newest,
        "prefill_s": prefill_s,
        "cli": cli,
        "http": http,
        "replay": replay,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def cli_export(store: str, held: int) -> dict[str, Any]:
    """`logagg export --store …` into a pipe read to nowhere, timed from its first byte (the
    interpreter's start aside), its RSS sampled from then; its lines counted."""
    args = [sys.executable, "-m", "logagg", "export", "--store", store]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        first = os.read(out, 1 << 20)
        started = time.monotonic()
        sampler = RssSampler(proc.pid)
        lines = first.count(b"\n")
        while chunk := os.read(out, 1 << 20):
            lines += chunk.count(b"\n")
        elapsed = time.monotonic() - started
        memory = sampler.stop()
        err = proc.stderr.read() if proc.stderr is not None else b""
    if proc.returncode != 0:
        raise BenchError(f"logagg export failed ({proc.returncode}): {err.decode()[-2000:]}")
    if lines != held:
        raise BenchError(f"logagg export wrote {lines} lines of {held}")
    return {"seconds": round(elapsed, 1), "events_per_s": round(held / elapsed), **memory}


def http_export(cfg: BenchConfig, broker_url: str, held: int) -> dict[str, Any]:
    """`GET /events/export` from a sidecar, identity then gzip, read to nowhere; the
    sidecar's RSS sampled; the lines counted, and checked against the store."""
    assert cfg.store is not None
    port = free_port()
    found: dict[str, Any] = {}
    with start_api(broker_url, cfg.store, port, cfg.work / "api.log") as api:
        for encoding in ("identity", "gzip"):
            sampler = RssSampler(api.pid)
            started = time.monotonic()
            lines = wire = 0
            with (
                httpx.Client(timeout=httpx.Timeout(30.0)) as client,
                client.stream(
                    "GET",
                    f"http://127.0.0.1:{port}/events/export",
                    headers={"accept-encoding": encoding},
                ) as response,
            ):
                if response.status_code != 200:
                    raise BenchError(f"/events/export answered {response.status_code}")
                for chunk in response.iter_bytes():
                    lines += chunk.count(b"\n")
                wire = response.num_bytes_downloaded
            elapsed = time.monotonic() - started
            if lines != held:
                raise BenchError(f"/events/export ({encoding}) sent {lines} lines of {held}")
            found[encoding] = {
                "seconds": round(elapsed, 1),
                "events_per_s": round(held / elapsed),
                "wire_mb": round(wire / 1e6, 1),
                **sampler.stop(),
            }
    return found


def _replay(cfg: BenchConfig, broker: Mosquitto, count: int) -> dict[str, Any]:
    """The first `count` events of the store replayed into `broker`, against `bench.flood`
    sending as many events of the same payload size, rounds alternated."""
    assert cfg.store is not None
    export_file = cfg.work / "replay.ndjson"
    with (
        export_file.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "logagg", "export", "--store", cfg.store],
            stdout=subprocess.PIPE,
        ) as proc,
    ):
        assert proc.stdout is not None
        for _ in range(count):
            out.write(proc.stdout.readline())
        proc.kill()
    size = export_file.stat().st_size
    payload_bytes = max(16, size // max(count, 1) - 200)
    replays, floods = [], []
    for round_ in range(ROUNDS):
        for which in ("replay", "flood") if round_ % 2 == 0 else ("flood", "replay"):
            if which == "replay":
                replays.append(_one_replay(broker.url, export_file, count))
            else:
                spec = StreamSpec(count, 0.0, payload_bytes, round_)
                with start_flood(broker.port, spec, cfg.work / f"flood-{round_}.log") as flood:
                    result = flood.result(cfg.timeout)
                floods.append(result["sent"] / result["seconds"])
    replay_rate = statistics.median(replays)
    flood_rate = statistics.median(floods)
    return {
        "events": count,
        "file_mb": round(size / 1e6, 1),
        "events_per_s": round(replay_rate),
        "baseline_events_per_s": round(flood_rate),
        "ratio": round(replay_rate / flood_rate, 2),
        "rounds": ROUNDS,
    }


def _one_replay(broker_url: str, export_file: Path, count: int) -> float:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "logagg",
            "replay",
            str(export_file),
            "--broker",
            broker_url,
            "--json",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"logagg replay failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
        )
    summary = json.loads(done.stdout)
    if summary["sent"] != count:
        raise BenchError(f"logagg replay sent {summary['sent']} of {count}")
    return float(summary["events_per_s"])
