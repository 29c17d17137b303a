"""Package boundaries: the public APIs are lazy, so a light import stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("aiomqtt", "paho", "prometheus_client", "psycopg", "fastapi", "uvicorn")


def loaded_after(statement: str) -> set[str]:
    """The heavy top-level modules a fresh interpreter has loaded after `statement`."""
    probe = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name for name in out.split() if name.split(".")[0] in HEAVY}


@pytest.mark.parametrize(
    "statement",
    ["import bridge.event", "from bridge import Event, parse_message", "import bridge.store"],
)
def test_the_event_model_and_store_api_load_no_client(statement: str) -> None:
    assert loaded_after(statement) == set()


def test_a_package_api_name_loads_its_module_only_when_asked() -> None:
    assert loaded_after("import bridge, api, publisher") == set()
    assert "aiomqtt" in loaded_after("from bridge import Bridge")


def test_an_unknown_name_is_an_attribute_error() -> None:
    import bridge

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        bridge.nope  # noqa: B018
