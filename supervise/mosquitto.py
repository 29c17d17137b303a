"""Running a Mosquitto of our own: for `logagg up`, the tests and the benchmark.

All of them use `supervise/mosquitto.conf`, shipped in the package (so an installed
wheel has it, wherever `logagg up` runs), with the port, persistence location and log
destination replaced: what is tested is what is shipped. The security tests run
`mosquitto/hardened.conf` the same way.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from supervise.process import stop_process

PROJECT_CONFIG = Path(__file__).resolve().parent / "mosquitto.conf"
_REPLACED = ("persistence_location", "log_dest", "pid_file", "user")


def find_mosquitto() -> str | None:
    """The `mosquitto` binary on PATH or in /usr/sbin (where Debian puts it)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def render_config(
    port: int,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    base: Path = PROJECT_CONFIG,
    extra: str = "",
) -> str:
    if not base.exists():
        raise FileNotFoundError(f"the Mosquitto configuration {base} is missing")
    kept = []
    for line in base.read_text().splitlines():
        if line.strip().startswith("listener"):
            # In place: the options that follow (TLS files) belong to the base's one listener.
            kept.append(f"listener {port} {host}")
        elif not line.strip().startswith(_REPLACED):
            kept.append(line)
    ours = [
        # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write
        # our data directory: stay whoever we are.
        f"user {getpass.getuser()}",
        f"persistence_location {data_dir.resolve()}/",
        f"log_dest file {data_dir.resolve()}/mosquitto.log",
    ]
    return "\n".join([*kept, *ours, extra, ""])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class NotWritable(Exception):
    """Mosquitto's persistence directory cannot be written."""


def check_writable(directory: Path) -> None:
    """Raise `NotWritable` unless a file can be written, synced and renamed in `directory`,
    as Mosquitto saves its state. A broker that cannot save runs and acknowledges messages
    all the same, logs the failure, and loses everything at its next restart. Tried, not
    asked (`os.access`): root passes every permission check, not an immutable directory,
    a read-only mount or a full disk. We run Mosquitto as ourselves (`render_config`), so
    what we can write, it can."""
    probe, saved = directory / ".logagg-probe.new", directory / ".logagg-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as out:
            out.write(b"logagg")
            out.flush()
            os.fsync(out.fileno())
        probe.replace(saved)
        saved.unlink()
    except OSError as exc:
        raise NotWritable(
            f"Mosquitto's persistence directory {directory} cannot be written"
            f" ({exc.strerror or exc}): the broker would acknowledge messages and lose them"
            " all at its next restart. Make it writable, or choose another --data-dir"
        ) from exc


class Mosquitto:
    """A Mosquitto process on `port` with its data in `data_dir`; stop() always reaps it."""

    def __init__(
        self, port: int, data_dir: Path, *, extra_config: str = "", base: Path = PROJECT_CONFIG
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError(
                "mosquitto is not installed (Debian: apt-get install mosquitto)"
            )
        self.binary = binary
        self.port = port
        self.data_dir = data_dir
        self.config = data_dir / "mosquitto.conf"
        check_writable(data_dir)
        self.config.write_text(render_config(port, data_dir, base=base, extra=extra_config))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM saves the persistence file; SIGKILL simulates a crash."""
        if self.process is None:
            return
        stop_process(self.process, sig, timeout)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def log(self) -> str:
        path = self.data_dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
