"""One publishing run: generate, pace, send, count, summarise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from publisher.http import HttpSender
from publisher.mqtt import MqttSender
from publisher.settings import PublisherSettings
from publisher.stream import Message, generate
from publisher.summary import AckCounts, PublishError, Summary

ProgressCallback = Callable[[int], None]
PROGRESS_EVERY_S = 0.1
# How far behind schedule sending may fall before the schedule restarts from now: after
# a stall, at most this much is sent in a catch-up burst.
PACER_SLACK_S = 0.1


class Sender(Protocol):
    """A transport: `send` may block (a full window, a batch going out); `flush` returns
    once everything sent is acknowledged. Both raise PublishError when giving up."""

    def send(self, message: Message) -> None: ...

    def flush(self) -> None: ...


class Pacer:
    """Spaces sends `1/rate` apart on a fixed schedule, so sleep overshoot does not add up."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._due is None or now - self._due > PACER_SLACK_S:
            self._due = now
        elif self._due > now:
            self._sleep(self._due - now)
        self._due += self._interval


def _sender(
    settings: PublisherSettings, acks: AckCounts, run_id: str
) -> AbstractContextManager[Sender]:
    if settings.via == "http":
        return HttpSender(settings, acks)
    return MqttSender(settings, acks, client_id=f"logagg-publish-{run_id[:12]}")


def run_publisher(
    settings: PublisherSettings, *, on_progress: ProgressCallback | None = None
) -> Summary:
    """Send `settings.count` messages and wait for every acknowledgement.

    `on_progress` hears the number acknowledged so far, a few times a second. Raises
    PublishError, carrying the summary of what was acknowledged, if the broker or sidecar
    stops answering for `ack_timeout_s` or refuses outright.
    """
    run_id = uuid.uuid4().hex
    acks = AckCounts()
    messages = generate(
        count=settings.count,
        topics=settings.topics,
        dup_ratio=settings.dup_ratio,
        out_of_order=settings.out_of_order,
        payload_bytes=settings.payload_bytes,
        source=settings.source,
        run_id=run_id,
        seed=settings.seed,
    )
    pacer = Pacer(settings.rate)

    def summary(elapsed_s: float) -> Summary:
        return Summary(
            via=settings.via,
            run_id=run_id,
            requested=settings.count,
            sent=acks.sent,
            distinct=acks.distinct,
            elapsed_s=elapsed_s,
        )

    elapsed_s = 0.0
    try:
        with _sender(settings, acks, run_id) as sender:
            started = reported = time.monotonic()
            try:
                for message in messages:
                    pacer.wait()
                    sender.send(message)
                    if on_progress is not None and time.monotonic() - reported >= PROGRESS_EVERY_S:
                        reported = time.monotonic()
                        on_progress(acks.sent)
                sender.flush()
            finally:  # before disconnecting, which can take a second
                elapsed_s = time.monotonic() - started
    except PublishError as exc:
        raise PublishError(str(exc), summary(elapsed_s)) from exc
    if on_progress is not None:
        on_progress(acks.sent)
    return summary(elapsed_s)


@contextmanager
def terminal_progress(
    total: int | None, *, enabled: bool = True, doing: str = "publishing"
) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr while the run lasts, if stderr is a terminal (a count
    without a bar when the `total` is not known)."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield None
        return
    columns = (
        TextColumn(doing),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acknowledged"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("publish", total=total)
        yield lambda done: progress.update(task, completed=done)
