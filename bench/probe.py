"""What a process costs, read from /proc: CPU seconds (all threads) and peak resident memory."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system time of every thread of `pid` so far (Linux /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: the fields we want follow its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_mb(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_mb(pid: int | str) -> float:
    """The high-water mark of resident memory (VmHWM), in MiB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int | str) -> float:
    """Resident memory now (VmRSS), in MiB."""
    return _status_mb(pid, "VmRSS")


def cpu_by_pid(cmdline_prefix: bytes) -> dict[int, float]:
    """CPU seconds so far of every process whose command line starts with `cmdline_prefix`
    (`b"postgres:"` matches PostgreSQL's backends and helpers, as `pgrep -f` would)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().startswith(cmdline_prefix):
                found[int(entry.name)] = cpu_seconds(entry.name)
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
    return found
