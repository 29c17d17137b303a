"""Logging for every logagg process: readable lines by default, JSON lines on request."""

from __future__ import annotations

import atexit
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from bridge.lograte import RepeatFilter

LogFormat = Literal["text", "json"]
# A library's warning or error repeated in a loop (asyncio's "Too many open files" on every
# accept() once descriptors run out: 75,558 lines in 20 s) is logged a few times per window,
# then summarised with its count; what is still untold is told at exit.
_REPEATS = RepeatFilter()
atexit.register(_REPEATS.flush)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_REPEATS)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # paho logs every packet at DEBUG, and a lost socket at ERROR, through aiomqtt's logger;
    # our own code reports connection loss once, with what it does about it.
    for name in ("logagg.bridge.mqtt", "logagg.api.mqtt"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # psycopg's pool warns over several lines on every reconnect attempt; the bridge's own
    # "store unavailable" line already says what is wrong and what it does about it.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
