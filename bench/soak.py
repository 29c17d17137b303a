"""Soak: MQTT and HTTP publishers together, at a steady rate, against a broker, a bridge and a
sidecar this command starts (like `logagg up`, each on a free port, in a temporary folder),
for `--minutes`; prints the throughput held, the errors (must be 0) and RSS over time.

    python -m bench.soak --minutes 10 --rate 500 --dup-ratio 0.2

`--rate` is the total: half goes over MQTT, half through POST /publish. Exits 1 on any
error: a publisher giving up, an event acknowledged but not stored, or anything rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.procs import Child, start_bridge
from bridge.store import Stats, StoreUnavailable, open_reader, parse_store_url
from publisher.run import run_publisher
from publisher.settings import PublisherSettings
from publisher.summary import PublishError, Summary
from supervise.mosquitto import Mosquitto, free_port

SAMPLE_EVERY_S = 5.0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def store_stats(store_url: str) -> Stats | None:
    """The store's stats, or None while the bridge has not created it."""
    store = open_reader(parse_store_url(store_url))
    try:
        return store.stats()
    except StoreUnavailable:
        return None
    finally:
        store.close()


def soak(minutes: float, rate: float, dup_ratio: float, out: Path) -> dict[str, object]:
    seconds = minutes * 60
    store_url = f"sqlite:///{out / 'logagg.db'}"
    errors: list[str] = []
    summaries: list[Summary] = []
    samples: list[dict[str, float]] = []
    with ExitStack() as stack:
        broker = Mosquitto(free_port(), out / "mosquitto")
        broker.start()
        stack.callback(broker.stop)
        assert broker.process is not None
        bridge = stack.enter_context(
            start_bridge(broker.url, store_url, "soak-bridge", "normal", out / "bridge.log")
        )
        api_port = free_port()
        api = stack.enter_context(
            Child(
                "api",
                [
                    sys.executable,
                    *("-m", "logagg", "api", "--port", str(api_port)),
                    *("--broker", broker.url, "--store", store_url),
                ],
                out / "api.log",
            )
        )
        api_url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 30
        while True:
            api.check_alive()
            try:
                httpx.get(f"{api_url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        def publish(via: str) -> None:
            settings = PublisherSettings(
                broker=broker.url,
                api_url=api_url,
                via=via,  # type: ignore[arg-type]
                count=max(1, round(rate / 2 * seconds)),
                rate=rate / 2,
                dup_ratio=dup_ratio,
                source=f"soak-{via}",
            )
            try:
                summaries.append(run_publisher(settings))
            except PublishError as exc:
                errors.append(f"{via} publisher: {exc}")
                if exc.summary is not None:
                    summaries.append(exc.summary)

        threads = [threading.Thread(target=publish, args=(via,)) for via in ("mqtt", "http")]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        pids = {"bridge": bridge.pid, "api": api.pid, "mosquitto": broker.process.pid}
        last_received, last_t = 0, started
        while any(t.is_alive() for t in threads):
            time.sleep(SAMPLE_EVERY_S)
            now = time.monotonic()
            stats = store_stats(store_url)
            received = stats.received if stats else 0
            sample = {
                "t_s": round(now - started, 1),
                "stored_per_s": round((received - last_received) / (now - last_t)),
                **{f"{name}_rss_mb": round(rss_mb(pid), 1) for name, pid in pids.items()},
            }
            last_received, last_t = received, now
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        acked = sum(s.distinct for s in summaries)
        sent = sum(s.sent for s in summaries)
        final = None
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until:
            final = store_stats(store_url)
            if final is not None and final.unique_processed >= acked:
                break
            time.sleep(0.2)
        stored = final.unique_processed if final else 0
        rejected = final.rejected if final else 0
        if stored != acked:
            errors.append(f"{acked} distinct events acknowledged, {stored} stored")
        if rejected:
            errors.append(f"{rejected} rejected")
    rss = {
        name: {
            "first": samples[0][f"{name}_rss_mb"] if samples else 0.0,
            "max": max((s[f"{name}_rss_mb"] for s in samples), default=0.0),
            "last": samples[-1][f"{name}_rss_mb"] if samples else 0.0,
        }
        for name in ("bridge", "api", "mosquitto")
    }
    return {
        "minutes": minutes,
        "rate_asked": rate,
        "sent": sent,
        "distinct_acknowledged": acked,
        "stored": stored,
        "events_per_s_held": round(sent / elapsed, 1),
        "errors": len(errors),
        "error_details": errors,
        "rss_mb": rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s, MQTT + HTTP")
    parser.add_argument("--dup-ratio", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="keep the logs and store here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="logagg-soak-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = soak(args.minutes, args.rate, args.dup_ratio, out)
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
