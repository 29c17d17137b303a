"""The HTTP sidecar: publishes through the broker, reads what the bridge stored.

Its public API, loaded lazily: importing one name loads only the module that holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.lazy import lazy_api

if TYPE_CHECKING:
    from api.app import create_app as create_app
    from api.publishing import BrokerUnavailable as BrokerUnavailable
    from api.publishing import Publisher as Publisher
    from api.settings import ApiSettings as ApiSettings

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "api.app": ("create_app",),
        "api.publishing": ("BrokerUnavailable", "Publisher"),
        "api.settings": ("ApiSettings",),
    },
)
