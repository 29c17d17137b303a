"""What a backlog costs Mosquitto: memory, persistence file and autosave CPU per queued event.

Run as `python -m bench.broker_queue --count N [--payload-bytes B]`: a Mosquitto with
the project's config, one bridge-like session registered and offline, N events
flooded to it (QoS 1); then the broker's RSS, its file, and its CPU over 10 idle
seconds, which is autosave rewriting the whole file every `autosave_interval`.
Prints one JSON line. The queue limits in supervise/mosquitto.conf, and the
README's figures for them, come from this.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.flood import DEFAULT_WINDOW, flood
from bench.sessions import register
from bench.stream import StreamSpec, drafts
from supervise.mosquitto import Mosquitto, free_port

IDLE_S = 10.0


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu_share(pid: int, seconds: float) -> float:
    before = _cpu_s(pid)
    time.sleep(seconds)
    return (_cpu_s(pid) - before) / seconds


def measure(
    work: Path, count: int, payload_bytes: int, *, idle_s: float = IDLE_S
) -> dict[str, Any]:
    spec = StreamSpec(count, 0.0, payload_bytes)
    event_bytes = len(next(drafts(spec)).body(time.time()))
    broker = Mosquitto(free_port(), work)
    broker.start()
    try:
        assert broker.process is not None
        pid = broker.process.pid
        register(broker.port, ["bench-offline-bridge"])
        empty_rss, empty_cpu = _rss_bytes(pid), _idle_cpu_share(pid, idle_s)
        sent = flood(broker.port, spec, rate=0, window=DEFAULT_WINDOW)
        time.sleep(3)  # past one autosave
        rss, cpu = _rss_bytes(pid), _idle_cpu_share(pid, idle_s)
        file_bytes = (work / "mosquitto.db").stat().st_size
    finally:
        broker.stop()
    return {
        "queued": sent["sent"],
        "event_bytes": event_bytes,
        "rss_empty_mb": round(empty_rss / 1e6, 1),
        "rss_mb": round(rss / 1e6, 1),
        "ram_per_event_bytes": round((rss - empty_rss) / count),
        "file_mb": round(file_bytes / 1e6, 1),
        "file_per_event_bytes": round(file_bytes / count),
        "idle_cpu_empty": round(empty_cpu, 3),
        "idle_cpu": round(cpu, 3),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--payload-bytes", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="logagg-broker-queue-") as work:
        print(json.dumps(measure(Path(work), args.count, args.payload_bytes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
