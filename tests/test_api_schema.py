"""The sidecar against its own OpenAPI schema, with schemathesis: no 5xx, every answer as
documented, the token enforced where the schema says so.

One real Mosquitto, bridge, store and sidecar (with a token) for the whole module,
with a few events and rejections stored so that reads return rows. Each operation
gets a bounded number of generated requests, valid and invalid. `/events/stream`
is left out: a Server-Sent Events answer lasts minutes, and schemathesis reads
answers whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from api import ApiSettings, create_app
from bridge.store import parse_store_url
from supervise.mosquitto import Mosquitto, free_port
from tests.helpers import BridgeProcess, examples, make_stream, publish_raw, serving, wait_for_stats

pytestmark = pytest.mark.broker

TOKEN = "schema-token-" + uuid.uuid4().hex
EXAMPLES = 100


def api_settings(broker_url: str, store_url: str) -> ApiSettings:
    return ApiSettings(
        broker=broker_url, store=parse_store_url(store_url), api_token=SecretStr(TOKEN)
    )


# Invalid requests must get one of these: a batch over max_batch (the schema's maxItems)
# is 413 by design, and a body not declared JSON 415, which schemathesis does not expect
# by default.
REFUSALS = ["401", "404", "405", "413", "415", "422"]
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
        # JSON Schema cannot say "no NUL in any string of the payload", which the API
        # refuses with 422 by design (tests/test_event_properties.py covers it).
        "generation": {"allow-x00": False},
        "operations": [
            {
                # The search parameters are checked further than JSON Schema can say (a
                # time's form, a cursor's checksum, a `q` with nothing to find, since
                # before until): a schema-valid value may be refused, with a 422 naming it.
                "include-path-regex": "^/events",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "401", "404", "422", "5xx"]
                    }
                },
            }
        ],
    }
)
# The schema comes from the app itself (the same settings as the served one), not over
# HTTP: schemathesis' fixture-based loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(
    create_app(api_settings("mqtt://127.0.0.1:1", "sqlite:///unused.db")).openapi(),
    config=CONFIG,
).exclude(path="/events/stream")


@schema.auth()
class BearerToken:
    """The token, given the way schemathesis knows: its auth checks leave it out, or spoil
    it, and expect a 401."""

    def get(self, case: schemathesis.Case[Any], ctx: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case[Any], data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live sidecar on a real broker, bridge and store holding a few events and rejections."""
    folder: Path = tmp_path_factory.mktemp("schema")
    store_url = f"sqlite:///{folder / 'logagg.db'}"
    broker = Mosquitto(free_port(), folder / "mosquitto")
    broker.start()
    bridge = BridgeProcess(broker.url, store_url, folder / "bridge.log", client_id="schema")
    try:
        bridge.start()
        publish_raw(broker.port, [*make_stream(20, 0.2), ("logs/x", b"not json")])
        wait_for_stats(store_url, lambda s: s.received == 21)
        with serving(api_settings(broker.url, store_url)) as client:
            yield str(client.base_url)
    finally:
        bridge.stop()
        broker.stop()


@schema.parametrize()
@settings(
    max_examples=examples(EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case: schemathesis.Case[Any], base_url: str) -> None:
    case.call_and_validate(base_url=base_url)
