"""Capped exponential back-off with jitter, for every retry loop logagg runs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Jitter from a generator of our own, not the process's global one: the sidecar's retry
# loops run on threads next to whatever else the process draws (in the tests, Hypothesis,
# which fails a test whose global random state another thread moved).
_jitter = random.Random()


@dataclass(slots=True)
class Backoff:
    """Each delay doubles up to `cap`, drawn from its upper half so retries spread out."""

    first: float = 0.5
    cap: float = 30.0
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def peek(self) -> float:
        """The longest the next delay can be."""
        return self._next

    def delay(self) -> float:
        current, self._next = self._next, min(self._next * 2, self.cap)
        return _jitter.uniform(current / 2, current)

    def reset(self) -> None:
        self._next = self.first
