"""The HTTP sidecar: publishes through the broker, reads what the bridge stored."""

from api.app import create_app
from api.publishing import BrokerUnavailable, Publisher
from api.settings import ApiSettings

__all__ = ["ApiSettings", "BrokerUnavailable", "Publisher", "create_app"]
