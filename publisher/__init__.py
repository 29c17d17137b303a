"""The simulated publisher and load generator behind `logagg publish`."""

from publisher.run import run_publisher, terminal_progress
from publisher.settings import PublisherSettings
from publisher.stream import Message, generate
from publisher.summary import PublishError, Summary

__all__ = [
    "Message",
    "PublishError",
    "PublisherSettings",
    "Summary",
    "generate",
    "run_publisher",
    "terminal_progress",
]
