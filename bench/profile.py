"""Where a bridge's time goes: py-spy sampling a running process, summed by function.

py-spy is not a dependency: `pip install py-spy` (a static binary from PyPI) puts it on
the PATH, and without it the bench says so instead of a profile. It attaches to the live
process (ptrace: root, or `kernel.yama.ptrace_scope` 0) and samples without stopping it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Samples per second; each line of the raw output is a stack and how often it was seen.
RATE = 250
TOP = 12


@contextmanager
def sampled(pid: int, out: Path) -> Iterator[dict[str, Any]]:
    """Sample `pid` until the block ends; the summary fills the yielded dict then (or says
    why there is none)."""
    summary: dict[str, Any] = {}
    spy = shutil.which("py-spy")
    if spy is None:
        summary["error"] = "py-spy is not installed (pip install py-spy)"
        yield summary
        return
    args = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw"]
    args += ["--nonblocking", "--output", str(out)]
    spying = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield summary
    finally:
        spying.send_signal(signal.SIGINT)
        try:
            _, err = spying.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spying.kill()
            _, err = spying.communicate()
        if out.exists():
            summary.update(summarise(out.read_text()))
        else:
            summary["error"] = f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"


def summarise(raw: str) -> dict[str, Any]:
    """From py-spy's raw output (`frame;…;frame count` per line, idle samples left out):
    the share of the samples each function was running in itself (the innermost frame)."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        own[_function(stack.split(";")[-1])] += n
    return {
        "samples": total,
        "self_share": {f: round(n / total, 3) for f, n in own.most_common(TOP)} if total else {},
    }


def _function(frame: str) -> str:
    """`name (path/to/file.py:12)` → `name (file.py)`: lines apart, one function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name
