"""The simulated publisher and load generator behind `logagg publish`.

Its public API, loaded lazily: importing one name loads only the module that holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.lazy import lazy_api

if TYPE_CHECKING:
    from publisher.run import run_publisher as run_publisher
    from publisher.run import terminal_progress as terminal_progress
    from publisher.settings import PublisherSettings as PublisherSettings
    from publisher.settings import ReplaySettings as ReplaySettings
    from publisher.stream import Message as Message
    from publisher.stream import generate as generate
    from publisher.summary import PublishError as PublishError
    from publisher.summary import Summary as Summary

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "publisher.run": ("run_publisher", "terminal_progress"),
        "publisher.settings": ("PublisherSettings", "ReplaySettings"),
        "publisher.stream": ("Message", "generate"),
        "publisher.summary": ("PublishError", "Summary"),
    },
)
