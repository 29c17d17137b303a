"""The bridge's MQTT loop: connect, subscribe, batch, commit, ack, reconnect, shut down cleanly.

Group commit: whatever has arrived (up to the batch size) is parsed on the
event loop and written in one transaction on a writer thread, then acknowledged
in arrival order. While one batch commits, the next one gathers and is parsed
(SQLite works without the GIL, so parsing overlaps it), so light load gives
one-message batches and heavy load large ones. The broker's in-flight window
(MQTT 5 receive maximum) bounds how much is ever held unacknowledged, in messages; the
inbox's byte budget and `max_batch_bytes` bound it in bytes, and the node limit bounds
what a message costs once parsed, so no batch the broker redelivers can exhaust memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.backoff import Backoff
from bridge.broker import make_client
from bridge.capacity import STORE_LOG_EVERY_S, Space
from bridge.event import Event, parse_message
from bridge.lograte import RateLimitedLog
from bridge.metrics import BridgeMetrics, serving
from bridge.purging import purge_loop
from bridge.receive.inbox import Inbox, Received
from bridge.refusal import Refusals
from bridge.session import session_options
from bridge.settings import BridgeSettings
from bridge.store import (
    BatchOutcome,
    Refused,
    SQLiteUrl,
    StoreFull,
    StoreUnavailable,
    StoreWriter,
    open_writer,
)
from bridge.store.base import rejected_row
from bridge.store.space import POSTGRES_MEASURE_BYTES

logger = logging.getLogger("logagg.bridge")

CONNECT_TIMEOUT_S = 10.0
# Allocations between collections of the youngest generation (Python's default: 700).
GC_FIRST_GENERATION = 7000


def duplicate_log(per_s: int) -> RateLimitedLog:
    return RateLimitedLog(
        logger,
        per_s,
        "duplicate dropped: topic=%s event_id=%s",
        "%d more duplicates dropped, not logged one by one",
    )


def rejection_log(per_s: int) -> RateLimitedLog:
    """Topic and reason as the store keeps them: cut to a bounded size."""
    return RateLimitedLog(
        logger,
        per_s,
        "rejected message on %s: %s (%s)",
        "%d more messages rejected, not logged one by one",
        logging.WARNING,
    )


Parsed = tuple[list[Event], list[Refused]]


def parse_batch(batch: Sequence[Received], settings: BridgeSettings) -> Parsed:
    events: list[Event] = []
    refused: list[Refused] = []
    for message in batch:
        if message.resent:
            continue  # acknowledged with the batch, not recorded: see `Inbox`
        result = parse_message(
            message.topic,
            message.body,
            prefix=settings.topic_prefix,
            max_payload_bytes=settings.max_payload_bytes,
            max_nodes=settings.max_event_nodes,
        )
        if isinstance(result, Event):
            events.append(result)
        else:
            refused.append(Refused(message.topic, message.body, result))
    return events, refused


@dataclass(frozen=True, slots=True)
class Committing:
    """A batch whose commit is under way: acked once `commit` says True."""

    batch: list[Received]
    commit: asyncio.Task[bool]


class Bridge:
    """Subscribes to the log topics and stores every event exactly once."""

    def __init__(self, settings: BridgeSettings, store: StoreWriter) -> None:
        self.settings = settings
        self.store = store
        # Names this run in the heartbeats: the store times its uptime from the first beat.
        self.run_id = uuid.uuid4().hex
        self.committed = 0
        # One writer thread: SQLite has one writer, and parsing there keeps the loop free
        # to read the socket while a batch commits.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logagg-writer")
        self._log_duplicates = duplicate_log(settings.duplicate_log_per_s)
        self._log_rejections = rejection_log(settings.rejection_log_per_s)
        self.metrics = BridgeMetrics()
        self._last_heartbeat = 0.0
        self._refusals = Refusals(settings.client_id)
        # SQLite's measure costs microseconds: taken before every batch.
        cheap = isinstance(settings.store, SQLiteUrl)
        self._space = Space(settings.max_store_bytes, 0 if cheap else POSTGRES_MEASURE_BYTES)

    def _client(self) -> aiomqtt.Client:
        session = session_options(
            self.settings.mqtt_version,
            session_expiry_s=self.settings.session_expiry_s,
            # Our in-flight window: two batches, one committing while the next gathers.
            receive_maximum=2 * self.settings.batch_size,
        )
        return make_client(
            self.settings.address,
            self.settings.credentials,
            identifier=self.settings.client_id,
            timeout=CONNECT_TIMEOUT_S,
            logger=logging.getLogger("logagg.bridge.mqtt"),
            **session,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; reconnects with back-off whenever the broker goes."""
        client = self._client()
        # The same two batches as the receive maximum, which Mosquitto 2.0 overruns.
        inbox = Inbox(
            client,
            max_waiting=2 * self.settings.batch_size,
            max_waiting_bytes=2 * self.settings.max_batch_bytes,
        )
        backoff = Backoff()
        logger.info(
            "bridge %s: broker %s, store %s, topics %s",
            self.settings.client_id,
            self.settings.address,
            self.settings.store.display,
            self.settings.topic_filter,
        )
        try:
            while not stop.is_set():
                try:
                    inbox.connecting()
                    async with client:
                        # Consuming starts at once: a resumed session's backlog arrives ahead
                        # of the SUBACK, and the inbox bounds what it holds only for a
                        # consumer that takes from it.
                        subscribing = asyncio.create_task(self._subscribe(client, backoff))
                        try:
                            await self._consume(client, inbox, stop, subscribing)
                        finally:
                            subscribing.cancel()
                except aiomqtt.MqttError as exc:
                    self.metrics.connected(False)
                    # A commit may be done while the socket is gone; its acks were skipped.
                    await self._drain(inbox)
                    # Raises BrokerRefused when retrying cannot help: a login refused
                    # again and again, our client id held by another client.
                    refused = self._refusals.check(exc)
                    delay = backoff.delay()
                    logger.warning(
                        "%s; retrying in %.1fs", refused or f"broker unreachable ({exc})", delay
                    )
                    await _sleep_unless(stop, delay)
        finally:
            self._writer.shutdown(wait=True)
            self._log_duplicates.flush()
            self._log_rejections.flush()
            logger.info("bridge stopped after %d committed messages", self.committed)

    async def _subscribe(self, client: aiomqtt.Client, backoff: Backoff) -> None:
        """QoS 1. MQTT 5 with retain handling 1: a retained message is sent only when the
        subscription is new (the session's first), so it is recorded once, not once more
        per reconnect; 2 (never) would lose one retained before the bridge first
        subscribed. 3.1.1 has no such option: `Inbox` marks those copies instead.

        No timeout: up to a receive maximum of messages may come first, and the
        connection's own liveness is watched by the keepalive and the inbox."""
        topic = self.settings.topic_filter
        if self.settings.mqtt_version == "3.1.1":
            await client.subscribe(topic, qos=1, timeout=math.inf)
        else:
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            await client.subscribe(topic, options=options, timeout=math.inf)
        logger.info("subscribed to %s on %s", topic, self.settings.address)
        backoff.reset()
        self._refusals.accepted()
        self.metrics.connected(True)
        # The first heartbeat says "subscribed": readiness checks wait for it.
        await self._heartbeat(force=True)

    async def _consume(
        self,
        client: aiomqtt.Client,
        inbox: Inbox,
        stop: asyncio.Event,
        subscribing: asyncio.Task[None],
    ) -> None:
        """Take, parse and commit batches; a batch is parsed while the one before it commits,
        and acked once its commit is done, so acks still go out in arrival order."""
        watcher = asyncio.create_task(inbox.watch(client))
        committing: Committing | None = None
        # A stop ends an idle wait at once rather than at its timeout (SIGTERM took up to 1 s).
        waker = asyncio.create_task(_wake_on(stop, inbox))
        try:
            while not stop.is_set() and inbox.lost is None:
                if committing is not None:
                    # A full batch to parse while this commit runs, or the commit done.
                    await inbox.gather(self.settings.batch_size, committing.commit)
                batch = await inbox.take(
                    self.settings.batch_size,
                    # With a commit in flight, what has arrived already, or nothing.
                    timeout=0 if committing else 1.0,
                    max_bytes=self.settings.max_batch_bytes,
                )
                if batch:
                    parsed = parse_batch(batch, self.settings)
                    previous = committing
                    stored = previous is not None and await previous.commit
                    committing = Committing(
                        batch, asyncio.create_task(self._commit(batch, parsed, stop))
                    )
                    # Let this commit reach the writer thread before anything else: with a
                    # full batch already waiting, nothing below would yield until that batch
                    # is parsed, and the writer would sit idle through the parsing (and the
                    # acks) it is meant to overlap.
                    await asyncio.sleep(0)
                    if previous is not None and stored:
                        # Its commit is done; acks still go out in arrival order.
                        self.metrics.acked(inbox.ack(previous.batch))
                elif committing is not None:
                    await self._acked(inbox, committing)
                    committing = None
                else:
                    # Idle: still say what the last second summarised.
                    self._log_duplicates(())
                    self._log_rejections(())
                if subscribing.done():
                    subscribing.result()  # a refused SUBSCRIBE ends the connection
                    await self._heartbeat()
            if committing is not None:
                await self._acked(inbox, committing)
                committing = None
            if inbox.lost is not None:
                raise inbox.lost
            # Stopping: store and ack what has arrived, then disconnect cleanly.
            await self._drain(inbox)
        finally:
            watcher.cancel()
            waker.cancel()
            if committing is not None:  # the connection failed: finish the commit, no acks
                await asyncio.shield(committing.commit)

    async def _acked(self, inbox: Inbox, committing: Committing) -> None:
        """Wait for a batch's commit, then ack it; False from the commit (stopping with the
        store unavailable) leaves it unacked, and the broker redelivers it."""
        if await committing.commit:
            self.metrics.acked(inbox.ack(committing.batch))

    async def _drain(self, inbox: Inbox) -> None:
        """Commit what is waiting; acks go out only where the connection still stands."""
        while len(inbox):
            batch = await inbox.take(
                self.settings.batch_size, timeout=0, max_bytes=self.settings.max_batch_bytes
            )
            if not await self._commit(batch, parse_batch(batch, self.settings), None):
                return
            self.metrics.acked(inbox.ack(batch))

    async def _commit(
        self, batch: list[Received], parsed: Parsed, stop: asyncio.Event | None
    ) -> bool:
        """Write one batch, retrying while the store is unavailable. Nothing is acked until
        this returns True; False means we are stopping and the broker will redeliver."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=0.2, cap=10.0)
        retries, next_log = 0, 0.0
        size = sum(len(message.body) for message in batch)
        self.metrics.received(len(batch))
        while True:
            started = time.perf_counter()
            try:
                outcome = await loop.run_in_executor(self._writer, self._write, size, *parsed)
            except StoreFull as exc:
                # No room: hold the batch unacked, say so everywhere, look again shortly.
                if stop is None or stop.is_set():
                    return False
                entering = self._space.full is None
                self._space.holding(exc, len(batch))
                self.metrics.store_full(True)
                await self._heartbeat(force=entering)
                await _sleep_unless(stop, backoff.delay())
                continue
            except StoreUnavailable as exc:
                delay = backoff.delay()
                retries += 1
                # Once when it starts, then once per STORE_LOG_EVERY_S, not every retry.
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + STORE_LOG_EVERY_S
                    logger.error(
                        "store unavailable, holding %d unacknowledged messages: %s;"
                        " retrying in %.1fs (attempt %d)",
                        len(batch),
                        exc,
                        delay,
                        retries,
                    )
                if stop is None or stop.is_set():
                    return False
                self.metrics.store_retry()
                await _sleep_unless(stop, delay)
                continue
            if retries:
                logger.warning("store available again after %d retries", retries)
            if self._space.full is not None:
                self._space.resumed()
                self.metrics.store_full(False)
                await self._heartbeat(force=True)
            self.committed += len(batch)
            self.metrics.committed(len(batch), time.perf_counter() - started)
            self._log_duplicates(outcome.duplicates)
            return True

    def _write(self, size: int, events: list[Event], refused: list[Refused]) -> BatchOutcome:
        """Runs on the writer thread; `size` is the batch's bytes, for the disk cap."""
        self._space.check(self.store, size)
        outcome = self.store.record(events, refused)
        self._log_rejections(
            [(topic, reason, code) for topic, code, reason, _ in map(rejected_row, refused)]
        )
        return outcome

    async def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.settings.bridge_alive_s / 3:
            return
        self._last_heartbeat = now
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._beat)
        except StoreUnavailable as exc:
            if self._space.full is None:  # a full store is logged by `Space.holding`
                logger.error("store unavailable for heartbeat: %s", exc)

    def _beat(self) -> None:
        """Runs on the writer thread: the store's room first, for the sidecar, which shows
        it only while the heartbeat that follows is fresh."""
        self._space.publish(self.store, self.settings.client_id)
        self.store.heartbeat(self.settings.client_id, self.run_id)


async def _wake_on(stop: asyncio.Event, inbox: Inbox) -> None:
    await stop.wait()
    inbox.wake()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _open_store(settings: BridgeSettings, stop: asyncio.Event) -> StoreWriter | None:
    """Wait for the store like for the broker: a supervisor may start us before the database."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return await asyncio.to_thread(open_writer, settings.store, settings.store_options)
        except StoreUnavailable as exc:
            delay = backoff.delay()
            logger.error("store unavailable at start: %s; retrying in %.1fs", exc, delay)
            await _sleep_unless(stop, delay)
    return None


async def run_bridge(settings: BridgeSettings) -> None:
    """Run one bridge until SIGTERM or SIGINT; the batch in hand is committed and acked."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await _open_store(settings, stop)
    if store is None:
        return
    # Everything made so far (modules, schemas, the store) lives as long as the bridge:
    # frozen, the collector no longer walks it, and it runs a tenth as often. The hot path
    # makes no reference cycles, so those walks found nothing (~10% of parsing, measured).
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION)
    purging = asyncio.create_task(purge_loop(store, stop))
    try:
        bridge = Bridge(settings, store)
        with serving(bridge.metrics.registry, settings.metrics_host, settings.metrics_port):
            await bridge.run(stop)
    finally:
        stop.set()
        await purging  # the pass in hand ends after its current transaction
        store.close()
