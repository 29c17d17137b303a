"""Stopping child processes the same way everywhere: a signal, a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def stop_process(
    process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0
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
