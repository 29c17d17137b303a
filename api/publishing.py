"""The sidecar's MQTT side: one long-lived connection, QoS 1, done only when the broker acked.

The connection (api/mqtt_link.py) notices its loss at once, so a batch stops then, saying
how many messages the broker had acknowledged, rather than at its deadline. At most
`max_inflight` messages are unacknowledged at once, all requests together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence

from api.mqtt_link import Link, LinkError, Message, Tally
from api.settings import ApiSettings
from bridge.broker import tls_context

logger = logging.getLogger("logagg.api.publishing")

__all__ = ["BrokerUnavailable", "Message", "Publisher"]


class BrokerUnavailable(Exception):
    """The broker could not be reached, or failed before acknowledging every message."""

    def __init__(self, reason: str, *, accepted: int = 0) -> None:
        super().__init__(reason)
        self.accepted = accepted


class Publisher:
    """Publishes batches over one shared connection, reconnecting on demand when it is lost."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        # Unique per process: a second sidecar with the same id would kick this one off.
        self._client_id = f"logagg-api-{uuid.uuid4().hex[:12]}"
        self._current: Link | None = None
        self._connecting: asyncio.Task[Link] | None = None

    async def publish(self, messages: Sequence[Message]) -> int:
        """Publish each `(topic, body)` with QoS 1 and return once all are acknowledged.

        Raises `BrokerUnavailable`, with how many were acknowledged, if the broker
        cannot be reached or fails first, or if `publish_timeout_s` passes.
        """
        tally = Tally(len(messages))
        timeout = self._settings.publish_timeout_s
        try:
            async with asyncio.timeout(timeout):
                link = await self._connection()
                await link.publish(messages, tally)
        except TimeoutError:
            raise BrokerUnavailable(
                f"broker {self._settings.address} did not answer within {timeout}s",
                accepted=tally.acked,
            ) from None
        except (LinkError, OSError) as exc:
            # asyncio's own words ("Connect call failed (…)") do not say why; errno does.
            why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else exc
            raise BrokerUnavailable(
                f"broker {self._settings.address}: {why}", accepted=tally.acked
            ) from exc
        return tally.acked

    async def check(self) -> None:
        """Raise `BrokerUnavailable` unless the broker is connected, or connects in time.

        An empty batch: connecting is the whole of it, with the same deadline and errors.
        """
        await self.publish([])

    async def _connection(self) -> Link:
        """The live connection, connecting first if there is none.

        One attempt at a time: concurrent requests await the same task, shielded,
        so a request that gives up does not abort a connect others are waiting on.
        """
        if self._current is not None and self._current.alive:
            return self._current
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(self._log_connect_failure)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Link:
        if self._current is not None:
            await self._current.close()
            self._current = None
        address, creds = self._settings.address, self._settings.credentials
        # Its own deadline: requests waiting for it may all give up, a frozen broker is not
        # waited for forever.
        async with asyncio.timeout(self._settings.publish_timeout_s):
            self._current = await Link.open(
                address.host,
                address.port,
                client_id=self._client_id,
                username=creds.username or address.username,
                password=creds.password or address.password,
                tls=tls_context(address, creds),
                window=self._settings.max_inflight,
            )
        logger.info("connected to broker %s as %s", self._settings.address, self._client_id)
        return self._current

    def _log_connect_failure(self, task: asyncio.Task[Link]) -> None:
        # Also retrieves the exception when every request waiting for it has given up.
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("cannot connect to broker %s: %s", self._settings.address, exc)

    async def close(self) -> None:
        """Disconnect cleanly; an attempt still connecting is let finish first, then closed."""
        if self._connecting is not None:
            await asyncio.wait((self._connecting,))
        if self._current is not None:
            await self._current.close()
            self._current = None
