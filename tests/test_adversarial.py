"""Issue 9, "no poison batch": memory stays bounded under events built to cost the most,
measured from /proc on the real broker, bridge and sidecar (bench/adversarial.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.adversarial import BRIDGE_TARGET_MB, SIDECAR_TARGET_MB, measure

pytestmark = pytest.mark.broker


def test_adversarial_corpus_keeps_bridge_and_sidecar_memory_bounded(tmp_path: Path) -> None:
    """A backlog of maximal events (1 in 20 over the node limit) is drained exactly once,
    the poison counted as rejected; 4 readers page through it all and 4 clients post
    16 MiB bodies at once: bridge RSS <= 200 MB, sidecar <= 400 MB, counts exact (checked
    inside `measure`, which raises on any difference)."""
    result = measure(40, tmp_path)
    assert result["over_the_limits"] == 2
    bridge, sidecar = result["bridge_rss_mb"], result["sidecar_rss_mb"]
    assert bridge["baseline"] < bridge["peak"] <= BRIDGE_TARGET_MB, result
    assert sidecar["baseline"] < sidecar["peak"] <= SIDECAR_TARGET_MB, result
