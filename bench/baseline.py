"""The baseline: a bare aiomqtt subscriber on `logs/#`, QoS 1, that only counts messages.

Run as `python -m bench.baseline --port P --client-id ID --expect N`; it
resumes the persistent session registered for ID (MQTT 5, like the bridge),
counts N messages and prints one JSON line: messages, seconds from the first
message to the last, and its own CPU time over that span. What the bridge
does beyond this (parse, store, ack after commit) is what its ratio costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiomqtt

from bench.probe import peak_rss_mb
from bench.sessions import CONNECT_TIMEOUT_S, TOPIC_FILTER, session_options


async def count(port: int, client_id: str, expect: int, timeout: float) -> dict[str, Any]:
    seen = 0
    first = last = 0.0
    cpu_first = cpu_last = 0.0
    async with (
        asyncio.timeout(timeout),
        aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=client_id,
            timeout=CONNECT_TIMEOUT_S,
            **session_options(),
        ) as client,
    ):
        await client.subscribe(TOPIC_FILTER, qos=1)
        async for _ in client.messages:
            seen += 1
            if seen == 1:
                first, cpu_first = time.monotonic(), time.process_time()
            if seen == expect:
                last, cpu_last = time.monotonic(), time.process_time()
                break
    seconds = last - first
    return {
        "messages": seen,
        "seconds": round(seconds, 3),
        "rate": round((seen - 1) / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(cpu_last - cpu_first, 3),
        "peak_rss_mb": peak_rss_mb("self"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(count(args.port, args.client_id, args.expect, args.timeout))
    except (TimeoutError, aiomqtt.MqttError) as exc:
        print(f"baseline: {exc!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
