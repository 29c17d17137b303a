"""The command line, in process: every setting an option, with its default, its variable
and an error naming it."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from pydantic import SecretStr
from pydantic_settings import BaseSettings

import logagg.up
import publisher
from api import ApiSettings
from bridge import BridgeSettings
from logagg.cli import app
from logagg.options import as_environment
from logagg.settings import UpSettings, ViewSettings
from publisher import PublisherSettings
from tests.helpers import logagg_cli

# Wide and plain, so that help never wraps an option's line.
WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
SETTINGS: dict[str, type[BaseSettings]] = {
    "bridge": BridgeSettings,
    "ready": BridgeSettings,
    "up": UpSettings,
    "api": ApiSettings,
    "publish": PublisherSettings,
    "tail": ViewSettings,
    "stats": ViewSettings,
}


def options(command: str) -> dict[str, list[str]]:
    """Each option of `command` by its parameter name: its flags."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return {
        str(param.name): [*param.opts, *param.secondary_opts]
        for param in group.commands[command].params
    }


@pytest.mark.parametrize("command", SETTINGS)
def test_every_setting_is_an_option_with_its_default_and_variable(command: str) -> None:
    """Each field of the command's settings model is a flag whose help line gives the
    field's description, its `LOGAGG_*` variable and its default; secrets are not flags."""
    model = SETTINGS[command]
    shown = logagg_cli(command, "--help", env=WIDE).stdout
    flags = options(command)
    written = model.model_construct().model_dump(mode="json")  # the defaults, as text
    for name, field in model.model_fields.items():
        if field.annotation == SecretStr | None:
            assert name not in flags, f"{command}: the secret {name} is a flag"
            continue
        assert field.description, f"{model.__name__}.{name} has no description"
        flag, *negative = flags[name]
        [line] = [line for line in shown.splitlines() if line.lstrip("│ ").startswith(f"{flag} ")]
        assert f"{field.description} (env LOGAGG_{name.upper()})" in line, line
        if field.default_factory is not None:
            assert "(default " in field.description, name
        elif isinstance(field.default, bool):
            assert f"[default: {negative[0][2:] if not field.default else flag[2:]}]" in line
        elif field.default not in (None, ()):
            default = written[name]
            if isinstance(default, list):
                default = ",".join(default)
            assert f"[default: {default}]" in line, line
        else:
            assert "[default: " not in line, line


# Every flag each command had when its options were written by hand: none may go.
EARLIER_FLAGS = {
    "bridge": "--broker --store --client-id --replica --group --batch-size --durability"
    " --max-payload-bytes --mqtt-version --metrics-port --metrics-host",
    "up": "--broker --store --host --port --data-dir",
    "api": "--host --port --broker --store --max-batch --max-body-bytes --max-payload-bytes"
    " --publish-timeout-s --max-inflight --read-limit-max",
    "publish": "--count --rate --topics --dup-ratio --out-of-order --via --broker --api-url"
    " --batch-size --payload-bytes --seed --source --ack-timeout --mqtt-version --progress"
    " --no-progress --json",
    "ready": "--store --client-id --replica",
    "tail": "--topic --follow -f --lines -n --api-url",
    "stats": "--api-url --json",
}


@pytest.mark.parametrize("command", EARLIER_FLAGS)
def test_every_earlier_flag_still_works(command: str) -> None:
    flags = {flag for names in options(command).values() for flag in names}
    assert set(EARLIER_FLAGS[command].split()) <= flags


def test_publish_keeps_its_older_flag_names() -> None:
    flags = options("publish")
    assert flags["http_batch_size"] == ["--batch-size"]
    assert flags["ack_timeout_s"] == ["--ack-timeout"]


def captured_up(monkeypatch: pytest.MonkeyPatch) -> list[UpSettings]:
    """`logagg up` that records its settings instead of starting anything."""
    seen: list[UpSettings] = []

    def run_up(settings: UpSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(logagg.up, "run_up", run_up)
    return seen


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = captured_up(monkeypatch)
    env = {"LOGAGG_BATCH_SIZE": "5", "LOGAGG_REPLICA": "2", "LOGAGG_DURABILITY": None}
    done = logagg_cli("up", "--batch-size", "7", "--port", "9000", "--data-dir", "d", env=env)
    assert done.exit_code == 0, done.output
    [config] = seen
    assert (config.batch_size, config.replica, config.durability) == (7, 2, "full")
    assert (config.port, str(config.data_dir)) == (9000, "d")


def test_up_hands_every_setting_to_its_children_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`logagg up --batch-size 7` reaches the bridge it starts; a secret stays inherited."""
    seen = captured_up(monkeypatch)
    env = {"LOGAGG_MQTT_PASSWORD": "pw-in-the-environment", "LOGAGG_GROUP": "g"}
    store = "postgresql://logagg:pw-in-the-url@db.internal/logagg"
    assert logagg_cli("up", "--batch-size", "7", "--store", store, env=env).exit_code == 0
    children = as_environment(seen[0])
    assert children["LOGAGG_BATCH_SIZE"] == "7"
    assert children["LOGAGG_STORE"] == store  # whole: the children need its password
    assert children["LOGAGG_DURABILITY"] == "full"
    assert children["LOGAGG_GROUP"] == "g"
    assert children["LOGAGG_CLIENT_ID"] == seen[0].client_id
    assert "LOGAGG_MQTT_PASSWORD" not in children


def test_comma_separated_lists_and_renamed_flags_reach_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[PublisherSettings] = []

    def run_publisher(config: PublisherSettings, **_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr(publisher, "run_publisher", run_publisher)
    flags = ["--topics", "a.b, c.d", "--batch-size", "20", "--ack-timeout", "3", "--no-progress"]
    assert logagg_cli("publish", *flags).exit_code == 0
    assert logagg_cli("publish", "--no-progress", env={"LOGAGG_TOPICS": "e.f"}).exit_code == 0
    by_flag, by_env = seen
    assert (by_flag.topics, by_flag.http_batch_size, by_flag.ack_timeout_s) == (
        ["a.b", "c.d"],
        20,
        3.0,
    )
    assert by_env.topics == ["e.f"]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["publish", "--dup-ratio", "1.5"], {}, "error: --dup-ratio: Input should be less than 1"),
        (["publish", "--batch-size", "0"], {}, "error: --batch-size: Input should be greater"),
        (["publish"], {"LOGAGG_DUP_RATIO": "1.5"}, "error: LOGAGG_DUP_RATIO: Input should be"),
        (["bridge", "--store", "mysql://db/logs"], {}, "error: --store: Value error"),
        (["bridge", "--durability", "fast"], {}, "Invalid value for '--durability'"),
        (["api", "--port", "http"], {}, "Invalid value for '--port'"),
        (["ready", "--mqtt-key-file", "k.pem"], {}, "error: Value error, mqtt_key_file is set"),
    ],
    ids=["range", "renamed", "variable", "check", "choice", "type", "model"],
)
def test_a_bad_value_exits_2_naming_its_option(
    args: list[str], env: dict[str, str], says: str
) -> None:
    """Before anything starts, and without a traceback."""
    done = logagg_cli(*args, env={"LOGAGG_DUP_RATIO": None, **env, **WIDE})
    assert done.exit_code == 2, done.output
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.output
