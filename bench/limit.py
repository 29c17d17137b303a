"""`logagg bench --limit`: how close the bridge comes to the fastest reader of the same backlog.

Mosquitto's own C client (`mosquitto_sub -c -q 1`, storing nothing) reads a queued backlog
about as fast as the broker can send it; the bare aiomqtt subscriber (`bench.baseline`) is
what Python costs before any work; the bridge, with durability `full` and `normal`, is what
storing every event exactly once costs on top. All four sessions are registered before the
stream is published, so each round's backlog waits for every one of them; then each drains
it alone, in an order reversed every other round and turned every two, so that load on the
shared machine falls on each in turn.

The C client prints only each message's arrival time (`-F %U`, the Unix time with
nanoseconds) to a file and exits after the count (`-C N`): its drain is timed from the
first message to the last, like the baseline's, never its start or its connect.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.probe import cpu_seconds
from bench.procs import BenchError, LoggedProcess, start_baseline

# The drain scenario's own steps, so that the bridges here are run and timed exactly as there.
from bench.scenarios import (
    BenchConfig,
    _broker,
    _check,
    _drain_with_bridges,
    _fresh_store,
    _publish,
)
from bench.sessions import TOPIC_FILTER, register

# The consumers, in the order of the first round.
C_CLIENT, BASELINE, FULL, NORMAL = "c_client", "aiomqtt", "bridge_full", "bridge_normal"
CONSUMERS = (C_CLIENT, BASELINE, FULL, NORMAL)
CLIENT_IDS = {
    C_CLIENT: "bench-limit-c",
    BASELINE: "bench-limit-aiomqtt",
    FULL: "bench-limit-full",
    NORMAL: "bench-limit-normal",
}
# The backlog: 30% of the sends repeat an event (`--dup-ratio` overrides it).
DUP_RATIO = 0.3


def mosquitto_sub() -> str:
    found = shutil.which("mosquitto_sub")
    if found is None:
        raise BenchError(
            "mosquitto_sub is not installed (Debian: apt-get install mosquitto-clients)"
        )
    return found


def _sub_args(port: int, client_id: str) -> list[str]:
    """The issue's command: persistent session (`-c`), QoS 1, MQTT 3.1.1 (its default)."""
    return [mosquitto_sub(), "-p", str(port), "-c", "-q", "1", "-i", client_id, "-t", TOPIC_FILTER]


def register_c_client(port: int, client_id: str) -> None:
    """Subscribe and leave (`-E`): the broker queues everything published for the session."""
    subprocess.run([*_sub_args(port, client_id), "-E"], check=True, timeout=30, capture_output=True)


def c_client_drain(
    port: int, client_id: str, expect: int, out: Path, timeout: float
) -> dict[str, Any]:
    """`mosquitto_sub` reads `expect` queued messages and exits; events/s from the arrival
    times of the first and the last."""
    args = [*_sub_args(port, client_id), "-C", str(expect), "-F", "%U"]
    with LoggedProcess("mosquitto_sub", args, out) as sub:
        try:
            sub.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"mosquitto_sub did not read {expect} within {timeout:g}s") from exc
    if sub.process.returncode != 0:
        raise BenchError(f"mosquitto_sub failed ({sub.process.returncode}): {sub.output()[-500:]}")
    stamps = [float(line) for line in sub.output().split() if line[:1].isdigit()]
    if len(stamps) != expect:
        raise BenchError(f"mosquitto_sub printed {len(stamps)} arrival times of {expect}")
    seconds = stamps[-1] - stamps[0]
    return {
        "messages": len(stamps),
        "seconds": round(seconds, 3),
        "rate": round((len(stamps) - 1) / seconds, 1),
    }


def _order(r: int) -> tuple[str, ...]:
    """ABBA: every other round reversed, so that over two rounds each consumer's mean
    place is the same; each pair of rounds starts one consumer later."""
    shift = (r // 2) % len(CONSUMERS)
    turned = CONSUMERS[shift:] + CONSUMERS[:shift]
    return turned if r % 2 == 0 else turned[::-1]


def limit(cfg: BenchConfig) -> dict[str, Any]:
    """The same backlog drained by each consumer alone, `cfg.repeat` rounds; medians."""
    work = cfg.work / "limit"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONSUMERS}
    with _broker(work / "broker") as mosq:
        assert mosq.process is not None
        register_c_client(mosq.port, CLIENT_IDS[C_CLIENT])
        register(mosq.port, [CLIENT_IDS[BASELINE], CLIENT_IDS[FULL], CLIENT_IDS[NORMAL]])
        for r in range(cfg.repeat):
            spec = cfg.spec(cfg.count, seed=r + 1)
            sent = _publish(mosq.port, spec, work / f"publisher-{r}.log", cfg.timeout)
            for name in _order(r):
                broker_cpu = cpu_seconds(mosq.process.pid)
                log = work / f"{name}-{r}.log"
                if name == C_CLIENT:
                    run = c_client_drain(mosq.port, CLIENT_IDS[name], sent, log, cfg.timeout)
                elif name == BASELINE:
                    with start_baseline(mosq.port, CLIENT_IDS[name], sent, log, cfg.timeout) as b:
                        run = b.result(cfg.timeout + 30)
                    if run["messages"] != sent:
                        raise BenchError(f"baseline counted {run['messages']} of {sent}")
                else:
                    durability = "full" if name == FULL else "normal"
                    on = replace(cfg, durability=durability)
                    with _fresh_store(on, work, f"{name}-{r}") as url:
                        drained = _drain_with_bridges(
                            on, mosq, url, [CLIENT_IDS[name]], sent, work / f"{name}-{r}"
                        )
                    _check(drained.counts, spec, sent, f"limit ({name})")
                    run = {
                        "rate": drained.rate,
                        "seconds": drained.seconds,
                        "cpu_s_per_1000": drained.cpu_s_per_1000,
                        "peak_rss_mb": drained.peak_rss_mb,
                        "unique": drained.counts.unique,
                    }
                run["broker_cpu_s_per_1000"] = round(
                    (cpu_seconds(mosq.process.pid) - broker_cpu) / sent * 1000, 4
                )
                run["round"] = r
                runs[name].append(run)
    rates = {
        name: round(statistics.median(r["rate"] for r in done), 1) for name, done in runs.items()
    }
    return {
        "method": "one backlog per round queued for all four persistent sessions, then each "
        "consumer alone, the order reversed every other round; C client and aiomqtt: first "
        "message to last; bridges: first stored row's received_at to the store poll seeing "
        "the last commit",
        "messages": cfg.count,
        "dup_ratio": cfg.dup_ratio,
        "distinct": cfg.spec(cfg.count, 1).distinct,
        "repeat": cfg.repeat,
        "orders": [list(_order(r)) for r in range(cfg.repeat)],
        "consumers": {
            name: {
                "events_per_s": rates[name],
                "vs_c_client": round(rates[name] / rates[C_CLIENT], 3),
                "vs_aiomqtt": round(rates[name] / rates[BASELINE], 3),
                # Each round's ratio to the C client's rate of the same round.
                "vs_c_client_by_round": [
                    round(run["rate"] / c["rate"], 3)
                    for run, c in zip(done, runs[C_CLIENT], strict=True)
                ],
                "runs": done,
            }
            for name, done in runs.items()
        },
    }
