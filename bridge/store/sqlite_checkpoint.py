"""The SQLite store's WAL checkpoints, made by a thread of their own.

SQLite checkpoints inside whichever commit takes the WAL past 1,000 pages: that commit
copies them into the database file and syncs it before it returns. Under a purge, whose
deletes dirty many pages (secure_delete, Debian's default, zeroes what they free), that
was several times a second, in a live batch's commit or in a purge step holding the
write turn the batches wait on. So the bridge's write connections never checkpoint
(`wal_autocheckpoint=0`), and this thread makes a passive checkpoint every
`CHECKPOINT_S`: it takes no write lock, so batches commit meanwhile, and with nothing new
in the WAL it costs a read of the WAL's header.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger("logagg.bridge.store")

CHECKPOINT_S = 0.1


class Checkpointer:
    """Checkpoints the store at `path` every `CHECKPOINT_S` until closed."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logagg-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_S):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                logger.error("cannot checkpoint the store's WAL (retrying): %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()
