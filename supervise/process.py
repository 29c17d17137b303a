"""Stopping child processes the same way everywhere: a signal, a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(
    process: subprocess.Popen[Any], sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0
) -> int:
    """Send `sig`, wait up to `timeout`, kill if it is still there; returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


def interrupt_on_stop_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt, however the process was started.

    A shell starts a background job (`cmd &` in a script) with SIGINT ignored, and Python
    leaves an inherited SIG_IGN alone: without this, such a `logagg tail -f` ignored Ctrl-C
    and `kill -INT`, and SIGTERM killed it without its clean exit.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
