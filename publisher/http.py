"""Sending through the HTTP sidecar: batches to `POST /publish`.

The sidecar answers 200 `{"accepted": n}` once the broker has acknowledged the
whole batch. A batch is resent whole on 503 or a connection error: events are
idempotent, so a copy the broker already had is a duplicate the bridge drops,
and only a 200 counts the batch as sent.
"""

from __future__ import annotations

import logging
import time

import httpx

from bridge.backoff import Backoff
from publisher.settings import PublisherSettings
from publisher.stream import Message
from publisher.summary import AckCounts, PublishError

logger = logging.getLogger("logagg.publisher")

# A partial batch this old goes out with the next send, so a slow --rate does not hold
# events back for a whole batch.
LINGER_S = 0.2
RETRY_FIRST_S = 0.2
RETRY_CAP_S = 5.0
_HINTS = {
    401: " (set LOGAGG_API_TOKEN to the sidecar's token)",
    413: " (try a smaller --batch-size)",
}


class HttpSender:
    """Use as a context manager: leaving closes the connection pool."""

    def __init__(self, settings: PublisherSettings, acks: AckCounts) -> None:
        self._url = f"{settings.api_url}/publish"
        self._batch_size = settings.http_batch_size
        self._timeout = settings.ack_timeout_s
        self._acks = acks
        self._batch: list[Message] = []
        self._batch_started = 0.0
        headers = {"content-type": "application/json"}
        if settings.api_token is not None:
            headers["authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
        self._client = httpx.Client(headers=headers)

    def __enter__(self) -> HttpSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def send(self, message: Message) -> None:
        if not self._batch:
            self._batch_started = time.monotonic()
        self._batch.append(message)
        if (
            len(self._batch) >= self._batch_size
            or time.monotonic() - self._batch_started >= LINGER_S
        ):
            self.flush()

    def flush(self) -> None:
        """Post the batch in hand until the sidecar accepts it, or give up after the ack
        timeout without an answer."""
        if not self._batch:
            return
        body = b"[" + b",".join(m.body() for m in self._batch) + b"]"
        deadline = time.monotonic() + self._timeout
        backoff = Backoff(RETRY_FIRST_S, RETRY_CAP_S)
        while True:
            problem = self._post(body, deadline)
            if problem is None:
                break
            if time.monotonic() + backoff.peek() > deadline:
                raise PublishError(
                    f"{self._url} accepted nothing for {self._timeout:g}s ({problem}); "
                    f"{len(self._batch)} events unacknowledged"
                )
            logger.warning("%s: %s; resending %d events", self._url, problem, len(self._batch))
            time.sleep(backoff.delay())
        for message in self._batch:
            self._acks.acknowledged(message)
        self._batch = []

    def _post(self, body: bytes, deadline: float) -> str | None:
        """None if the whole batch was accepted, else why it is worth resending; raises
        on answers that resending cannot change."""
        try:
            response = self._client.post(
                self._url, content=body, timeout=max(deadline - time.monotonic(), 0.1)
            )
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code == 503:
            return f"503 {response.text[:200]}"
        if response.status_code == 200:
            try:
                accepted = response.json()["accepted"]
            except (ValueError, KeyError, TypeError):
                accepted = None
            if accepted != len(self._batch):
                raise PublishError(
                    f"{self._url} answered 200 accepting {accepted} of {len(self._batch)} events"
                )
            return None
        hint = _HINTS.get(response.status_code, "")
        raise PublishError(
            f"{self._url} refused a batch of {len(self._batch)} events, {len(body)} bytes: "
            f"{response.status_code} {response.text[:500]}{hint}"
        )
