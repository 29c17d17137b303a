"""The bridge's purge loop: retention is the bridge's own work, beside its writes.

The bridge purges, not a separate process: it is already running wherever events are
written, it knows the store, and on SQLite it is the one writer, so a second process
would only wait for the same lock. The purge runs on a thread of its own in short
transactions (see `bridge.store.policy`), so batches keep committing between them; on
PostgreSQL every bridge runs the loop and an advisory lock lets one at a time purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bridge.store import StoreUnavailable, StoreWriter

logger = logging.getLogger("logagg.bridge.retention")


async def purge_loop(store: StoreWriter, stop: asyncio.Event) -> None:
    """Purge every `purge_interval_s` of the store's policy until `stop` is set."""
    logger.info("retention: %s", store.policy.describe())
    while not stop.is_set():
        try:
            purged = await asyncio.to_thread(store.purge, stop.is_set)
        except StoreUnavailable as exc:
            logger.error("retention: purge failed, retrying next pass: %s", exc)
        else:
            if purged.events or purged.keys_forgotten:
                logger.info(
                    "retention: %d expired events deleted, %d keys forgotten",
                    purged.events,
                    purged.keys_forgotten,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), store.policy.purge_interval_s)
