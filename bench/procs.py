"""The processes a benchmark starts: the real `logagg bridge` and `logagg api`, the publisher and
the baseline subscriber. Each runs in its own process, so each one's CPU and memory can be read
from /proc, and each is stopped by whoever started it, whatever happens."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.stream import StreamSpec
from supervise.process import stop_process

STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0


class BenchError(Exception):
    """A process failed or a count came out wrong: the run is not a valid measurement."""


class LoggedProcess:
    """A subprocess with its output in a log file; leaving the `with` block stops it."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        """`open_files`: start with this soft open-files limit (the hard one unchanged), as a
        login shell's 1,024 would."""
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=None if open_files is None else partial(_soft_open_files, open_files),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.output().splitlines()[-20:])
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not log {text!r} within {timeout:g}s")
            time.sleep(0.02)

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for a bench helper to finish and return the JSON line it printed last."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{self.name} did not finish within {timeout:g}s") from exc
        if self.process.returncode != 0:
            tail = "\n".join(self.output().splitlines()[-20:])
            raise BenchError(f"{self.name} failed ({self.process.returncode}):\n{tail}")
        last = [line for line in self.output().splitlines() if line.startswith("{")][-1]
        result: dict[str, Any] = json.loads(last)
        return result

    def stop(self) -> None:
        stop_process(self.process, timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> LoggedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _soft_open_files(limit: int) -> None:
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


def _logagg(*args: str) -> list[str]:
    return [sys.executable, "-m", "logagg", *args]


def start_bridge(
    broker_url: str,
    store_url: str,
    client_id: str,
    durability: str,
    log: Path,
    *,
    group: str | None = None,
    wait: bool = True,
    options: Sequence[str] = (),
) -> LoggedProcess:
    """The real bridge with its default settings, bar the store's durability if asked, the
    shared-subscription group if given and any further `options` (e.g. `--retention 60s`);
    by default returns once it has subscribed (so it has taken its session)."""
    args = ["bridge", "--broker", broker_url, "--store", store_url, "--client-id", client_id]
    args += ["--durability", durability, *(["--group", group] if group else []), *options]
    child = LoggedProcess(f"bridge {client_id}", _logagg(*args), log)
    try:
        if wait:
            child.wait_for("subscribed to")
    except BaseException:
        child.stop()
        raise
    return child


def start_bridges(
    broker_url: str,
    store_url: str,
    client_ids: list[str],
    durability: str,
    logs: Path,
    *,
    group: str | None,
    stack: ExitStack,
) -> list[LoggedProcess]:
    """Several bridges, all started before any is waited for, so they begin together; each
    is stopped when `stack` closes. Returns once all have subscribed."""
    bridges = [
        stack.enter_context(
            start_bridge(
                broker_url,
                store_url,
                client_id,
                durability,
                logs / f"{client_id}.log",
                group=group,
                wait=False,
            )
        )
        for client_id in client_ids
    ]
    for bridge in bridges:
        bridge.wait_for("subscribed to")
    return bridges


def start_api(
    broker_url: str,
    store_url: str,
    port: int,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    open_files: int | None = None,
) -> LoggedProcess:
    """The HTTP sidecar; returns once `GET /healthz` answers 200. `env` replaces the
    environment (settings, or PYTHONPATH to run another checkout's sidecar)."""
    args = ["api", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--broker", broker_url, "--store", store_url]
    child = LoggedProcess("api", _logagg(*args), log, env=env, open_files=open_files)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            child.check_alive()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return child
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"api did not become healthy within {START_TIMEOUT_S:g}s")
            time.sleep(0.05)
    except BaseException:
        child.stop()
        raise


def start_flood(port: int, spec: StreamSpec, log: Path, *, rate: float = 0.0) -> LoggedProcess:
    """The publisher (`bench.flood`); `result()` waits for its summary."""
    args = ["--port", str(port), "--count", str(spec.count), "--dup-ratio", str(spec.dup_ratio)]
    args += ["--payload-bytes", str(spec.payload_bytes), "--seed", str(spec.seed)]
    return LoggedProcess(
        "publisher", [sys.executable, "-m", "bench.flood", *args, "--rate", str(rate)], log
    )


def start_baseline(
    port: int, client_id: str, expect: int, log: Path, timeout: float
) -> LoggedProcess:
    """The bare aiomqtt subscriber (`bench.baseline`) draining `expect` queued messages."""
    args = ["--port", str(port), "--client-id", client_id, "--expect", str(expect)]
    return LoggedProcess(
        "baseline",
        [sys.executable, "-m", "bench.baseline", *args, "--timeout", str(timeout)],
        log,
    )
