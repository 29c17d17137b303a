"""The sidecar's MQTT side: one long-lived connection, QoS 1, done only when the broker acked.

aiomqtt's `publish` waits for its PUBACK but not for the connection: when the
broker goes away mid-batch, those waits would only end at their timeout. A
watcher on each connection notices the loss (aiomqtt's message iterator raises
then; we never subscribe, so it yields nothing), and a batch stops at once,
saying how many messages the broker had acknowledged.

paho-mqtt 2.2 stalls silently past 65,535 QoS 1 messages outstanding, and its
own in-flight cap is slow at large values: its cap is off (0) and a semaphore
shared by every request bounds what is in flight instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from api.settings import ApiSettings
from bridge.broker import make_client

logger = logging.getLogger("logagg.api.publishing")

Message = tuple[str, bytes]


class BrokerUnavailable(Exception):
    """The broker could not be reached, or failed before acknowledging every message."""

    def __init__(self, reason: str, *, accepted: int = 0) -> None:
        super().__init__(reason)
        self.accepted = accepted


@dataclass(frozen=True, slots=True)
class _Connection:
    client: aiomqtt.Client
    watcher: asyncio.Task[aiomqtt.MqttError]

    @property
    def alive(self) -> bool:
        return not self.watcher.done()

    async def guard(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` until it finishes or the connection drops, whichever comes first."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, self.watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                # Let the cancelled publishes settle, so the acknowledged count is final.
                await asyncio.wait((task,))
        if task.cancelled():
            raise self.watcher.result()
        task.result()

    async def close(self) -> None:
        self.watcher.cancel()
        try:
            await self.client.__aexit__(None, None, None)
        except aiomqtt.MqttError as exc:
            logger.warning("broker did not confirm the disconnect: %s", exc)


async def _watch(client: aiomqtt.Client) -> aiomqtt.MqttError:
    """Returns, with the reason, when the connection is lost."""
    try:
        async for _ in client.messages:
            pass
    except aiomqtt.MqttError as exc:
        # aiomqtt's own message says only that iterating stopped; its cause says why.
        return aiomqtt.MqttError(f"connection lost: {exc.__cause__ or exc}")
    raise AssertionError("aiomqtt's message iterator ended without an error")


class _Batch:
    """Publishes messages, at most `inflight` unacknowledged at once, counting the PUBACKs."""

    def __init__(self, inflight: asyncio.Semaphore) -> None:
        self._inflight = inflight
        self.acked = 0

    def _settled(self, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally`: it also runs for a task cancelled before it started.
        self._inflight.release()
        if not task.cancelled() and task.exception() is None:
            self.acked += 1

    async def send(self, client: aiomqtt.Client, messages: Sequence[Message]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for topic, body in messages:
                    await self._inflight.acquire()
                    # The request's deadline bounds the wait, not aiomqtt's per-call timeout.
                    task = group.create_task(client.publish(topic, body, qos=1, timeout=math.inf))
                    task.add_done_callback(self._settled)
        except* aiomqtt.MqttError as failed:
            # The first failure says why; the others are the same broken connection.
            raise failed.exceptions[0] from None


class Publisher:
    """Publishes batches over one shared connection, reconnecting on demand when it is lost."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        # Unique per process: a second sidecar with the same id would kick this one off.
        self._client_id = f"logagg-api-{uuid.uuid4().hex[:12]}"
        self._inflight = asyncio.Semaphore(settings.max_inflight)
        self._current: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def publish(self, messages: Sequence[Message]) -> int:
        """Publish each `(topic, body)` with QoS 1 and return once all are acknowledged.

        Raises `BrokerUnavailable`, with how many were acknowledged, if the broker
        cannot be reached or fails first, or if `publish_timeout_s` passes.
        """
        batch = _Batch(self._inflight)
        timeout = self._settings.publish_timeout_s
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connection()
                await connection.guard(batch.send(connection.client, messages))
        except TimeoutError:
            raise BrokerUnavailable(
                f"broker {self._settings.address} did not answer within {timeout}s",
                accepted=batch.acked,
            ) from None
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(
                f"broker {self._settings.address}: {exc}", accepted=batch.acked
            ) from exc
        return batch.acked

    async def check(self) -> None:
        """Raise `BrokerUnavailable` unless the broker is connected, or connects in time.

        An empty batch: connecting is the whole of it, with the same deadline and errors.
        """
        await self.publish([])

    async def _connection(self) -> _Connection:
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

    async def _connect(self) -> _Connection:
        if self._current is not None:
            await self._current.close()
            self._current = None
        client = make_client(
            self._settings.address,
            self._settings.credentials,
            identifier=self._client_id,
            max_inflight_messages=0,
            timeout=self._settings.publish_timeout_s,
            logger=logging.getLogger("logagg.api.mqtt"),
        )
        # aiomqtt warns past this many pending calls; up to max_inflight is our normal load.
        client.pending_calls_threshold = self._settings.max_inflight
        await client.__aenter__()
        self._current = _Connection(client, asyncio.create_task(_watch(client)))
        logger.info("connected to broker %s as %s", self._settings.address, self._client_id)
        return self._current

    def _log_connect_failure(self, task: asyncio.Task[_Connection]) -> None:
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
