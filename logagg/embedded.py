"""A pure-Python broker (amqtt) for machines where Mosquitto cannot be had.

For trying logagg only. Measured here, amqtt 0.12 speaks MQTT 3.1.1 only,
keeps no session across a reconnect (unacknowledged and offline messages
were not redelivered) and is about 5x slower than Mosquitto: it cannot keep
the no-loss promise. Run as `python -m logagg.embedded PORT`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

WARNING = (
    "NO MOSQUITTO FOUND: running the embedded amqtt broker. It keeps no session across "
    "reconnects and is ~5x slower, so messages CAN BE LOST. For trying logagg only; "
    "install Mosquitto (apt-get install mosquitto) to keep data."
)


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(int(sys.argv[1])))
