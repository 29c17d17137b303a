"""The container files, checked without a Docker engine.

- compose.yaml parses, matches the Compose spec and runs only real `logagg`
  subcommands with real flags (so does the image's default CMD);
- the Dockerfile passes hadolint, and its HEALTHCHECK passes against a healthy
  API and fails without a broker;
- the Dockerfile's own install steps, replayed from the Dockerfile itself (so
  this cannot drift from what the image does), give a working `logagg` in a
  fresh venv with every module of the source tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from supervise.mosquitto import Mosquitto, free_port, port_open
from supervise.process import stop_process
from tests.helpers import COMPOSE, ROOT, compose, logagg_cli

# The scaled-out stack: a file of its own, so it never runs beside the SQLite bridge.
COMPOSE_SCALE = ROOT / "compose.scale.yaml"
DOCKERFILE = ROOT / "Dockerfile"
RUN_LOCK = ROOT / "requirements" / "run.txt"
VENV_BIN = Path(sys.executable).parent  # hadolint and check-jsonschema come with the dev extra
# Wide and plain, so typer's help never wraps or colours an option name.
HELP_ENV_EXTRA = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

# The project's top-level packages, as pyproject.toml tells setuptools to find them.
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGES = [pattern.rstrip("*") for pattern in SETUPTOOLS["packages"]["find"]["include"]]

# Run by the fresh venv's Python: prints the module names the installed
# distribution holds (from its RECORD), and imports each one, so a module whose
# imports the image's dependencies do not cover fails here, not in production
# (imports of optional extras such as amqtt belong inside functions). Every
# module must also come from the venv, not from a source tree on sys.path.
LIST_MODULES = """
import importlib, importlib.metadata, sys
venv, packages = sys.argv[1], sys.argv[2:]
for path in importlib.metadata.files("logagg"):
    if path.suffix == ".py" and path.parts[0] in packages:
        parts = path.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] != "__main__":  # importing __main__ would run the CLI
            location = importlib.import_module(name).__file__
            assert location.startswith(venv), f"{name} comes from {location}"
        print(name)
"""


def source_modules() -> set[str]:
    """Dotted names of every module in the source tree's packages."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def all_services() -> dict[str, Any]:
    """The services of both stacks (their names do not overlap but for the shared broker)."""
    services: dict[str, Any] = compose()["services"] | compose(COMPOSE_SCALE)["services"]
    return services


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def argv(command: str | list[str]) -> list[str]:
    # Compose splits a string command like a shell would, without running a shell.
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def shipped_commands() -> dict[str, list[str]]:
    """Every logagg command we ship: each compose service's, and the image's default."""
    found = {
        name: argv(service["command"])
        for name, service in all_services().items()
        if "command" in service
    }
    cmd = [args for keyword, args in dockerfile() if keyword == "CMD"]
    assert len(cmd) == 1, "the Dockerfile needs exactly one CMD"
    found["Dockerfile-CMD"] = yaml.safe_load(cmd[0])  # exec form is JSON, and JSON is YAML
    return found


def test_compose_services_are_wired_in_order() -> None:
    services = compose()["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"mosquitto", "bridge", "api", "publisher"}
    declared_volumes = set(compose().get("volumes") or {})
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert rule["condition"] in {"service_started", "service_healthy"}, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
            else:
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert services["bridge"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert services["publisher"]["restart"] == "no"
    # The bridge and the API share the store through one named volume.
    assert "logagg-data:/data" in services["bridge"]["volumes"]
    assert "logagg-data:/data" in services["api"]["volumes"]


def test_compose_ports_are_published_on_loopback_by_default() -> None:
    """Anonymous broker, token-less API: nothing on the network unless LOGAGG_BIND says so."""
    ports = [
        str(port)
        for path in (COMPOSE, COMPOSE_SCALE)
        for service in compose(path)["services"].values()
        for port in service.get("ports", [])
    ]
    assert len(ports) == 3  # mosquitto, api, api-scale
    assert all(port.startswith("${LOGAGG_BIND:-127.0.0.1}:") for port in ports), ports


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def client_id(service: dict[str, Any], command: list[str]) -> str:
    """The client id a logagg command in this service runs under: its flag, else the
    service's LOGAGG_CLIENT_ID."""
    if "--client-id" in command:
        return flag(command, "--client-id")
    return str(service["environment"]["LOGAGG_CLIENT_ID"])


def test_compose_scale_stack_runs_three_bridges_on_one_group_and_no_other() -> None:
    """Each replica keeps its own client id (its session) and shares group and store; the
    stack has no SQLite bridge beside them (it would store every event a second time), and
    its broker is the single stack's."""
    services = compose(COMPOSE_SCALE)["services"]
    names = [f"bridge-{i}" for i in (1, 2, 3)]
    assert set(services) == {"mosquitto", "postgres", *names, "api-scale"}
    assert services["mosquitto"]["extends"] == {"file": "compose.yaml", "service": "mosquitto"}
    bridges = [argv(services[name]["command"]) for name in names]
    assert len({client_id(services[n], b) for n, b in zip(names, bridges, strict=True)}) == 3
    assert {flag(b, "--group") for b in bridges} == {"logagg"}
    assert {flag(b, "--store") for b in bridges} == {
        flag(argv(services["api-scale"]["command"]), "--store")
    }


def test_compose_healthchecks_ask_about_their_own_bridge() -> None:
    """`logagg ready` answers for one bridge: each bridge's healthcheck names the client id
    and store that bridge runs with, so a dead replica is unhealthy whatever the others do."""
    services = all_services()
    asked = {}
    for name, service in services.items():
        check = [str(a) for a in service.get("healthcheck", {}).get("test", [])]
        if check[1:3] != ["logagg", "ready"]:
            continue
        bridge, ready = argv(service["command"]), check[1:]
        assert client_id(service, ready) == client_id(service, bridge), name
        assert flag(ready, "--store") == flag(bridge, "--store"), name
        asked[name] = client_id(service, ready)
    assert set(asked) == {"bridge", "bridge-1", "bridge-2", "bridge-3"}
    assert len(set(asked.values())) == len(asked)


@pytest.mark.parametrize("command", shipped_commands().values(), ids=shipped_commands())
def test_shipped_commands_are_real_logagg_commands(command: list[str]) -> None:
    assert command[0] == "logagg", f"not a logagg command: {command}"
    subcommand = command[1]
    result = logagg_cli(subcommand, "--help", env=HELP_ENV_EXTRA)
    assert result.exit_code == 0, f"`logagg {subcommand}` is not a subcommand:\n{result.stderr}"
    flags = {arg.split("=")[0] for arg in command[2:] if arg.startswith("--")}
    for flag in sorted(flags):
        # Whole option names only: --store must not be found inside --store-timeout.
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), (
            f"`logagg {subcommand}` has no {flag} option:\n{result.stdout}"
        )


def healthcheck(port: int, python: str = sys.executable) -> list[str]:
    """The image's HEALTHCHECK command (exec form), aimed at `port` instead of 8080."""
    (args,) = [args for keyword, args in dockerfile() if keyword == "HEALTHCHECK"]
    check = yaml.safe_load(args.partition(" CMD ")[2])
    assert isinstance(check, list), "HEALTHCHECK must use the exec form: CMD [...]"
    assert check[0] == "python", "the health check runs the image's python"
    check = [python, *(arg.replace("127.0.0.1:8080/", f"127.0.0.1:{port}/") for arg in check[1:])]
    assert any(f":{port}/healthz" in arg for arg in check), check
    return check


def passes(check: list[str]) -> bool:
    return subprocess.run(check, capture_output=True, timeout=30).returncode == 0


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@contextmanager
def running(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process for the duration of the block, always stopped afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        stop_process(process)


def test_compose_api_health_check_is_the_images() -> None:
    image_check = ["CMD", "python", *healthcheck(8080)[1:]]
    assert compose()["services"]["api"]["healthcheck"]["test"] == image_check


@pytest.mark.broker
def test_image_health_check_follows_the_api_health(
    broker: Mosquitto, bridge_factory: Callable[..., Any], store_url: str, tmp_path: Path
) -> None:
    """The HEALTHCHECK passes against a healthy API and fails once its broker is gone."""
    bridge_factory()  # creates the store the API reads
    port = free_port()
    check, log = healthcheck(port), tmp_path / "api.log"
    command = [sys.executable, "-m", "logagg", "api", "--host", "127.0.0.1", "--port", str(port)]
    with running([*command, "--broker", broker.url, "--store", store_url], log):
        assert eventually(lambda: passes(check)), log.read_text()
        broker.stop()
        assert eventually(lambda: not passes(check)), "health check still passes without broker"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout  # not even info-level findings


def test_compose_matches_the_compose_spec() -> None:
    # The schema ships inside check-jsonschema: no network, no Docker needed.
    result = subprocess.run(
        [
            str(VENV_BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
            str(COMPOSE_SCALE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` CLI plugin")
@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_SCALE], ids=lambda p: p.name)
def test_docker_compose_config_accepts_it(path: Path) -> None:
    # Compose's own parser; it needs the CLI plugin but no engine.
    result = subprocess.run(
        ["docker", "compose", "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.broker
def test_dockerfile_install_and_start_work_in_a_fresh_venv(
    broker: Mosquitto, bridge_factory: Callable[..., Any], store_url: str, tmp_path: Path
) -> None:
    """Replay the Dockerfile's ENV, COPY and `RUN pip` steps, in order, in a fresh venv;
    then start its CMD from there and pass its HEALTHCHECK.

    Other RUN steps (creating the user) change the machine and are skipped; the
    venv's bin comes first on PATH, so `pip` is the venv's own.
    """
    venv, workdir = tmp_path / "venv", tmp_path / "app"
    workdir.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    replayed = 0
    for keyword, args in dockerfile():
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, setting = pair.partition("=")
                env[name] = setting
        elif keyword == "COPY":
            *sources, dest = [a for a in shlex.split(args) if not a.startswith("--")]
            assert not dest.startswith("/"), "the replay handles COPY into the WORKDIR only"
            for source in sources:
                target = workdir / dest
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target / Path(source).name)
        elif keyword == "RUN" and args.startswith("pip "):
            step = subprocess.run(
                args, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
            )
            assert step.returncode == 0, f"RUN {args} failed:\n{step.stdout}\n{step.stderr}"
            replayed += 1
    assert replayed >= 2, "expected the dependency and the code install steps"

    # Run from elsewhere, so nothing is imported from the copied source by accident.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", LIST_MODULES, str(venv), *PACKAGES],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    assert set(installed.stdout.split()) == source_modules(), "the wheel differs from the source"
    # The installed console script runs, and so does every subcommand we ship.
    subcommands = sorted({command[1] for command in shipped_commands().values()})
    for argv in [["--help"], *([sub, "--help"] for sub in subcommands)]:
        result = subprocess.run(
            [str(venv / "bin" / "logagg"), *argv],
            cwd=elsewhere,
            env={**env, **HELP_ENV_EXTRA},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"logagg {' '.join(argv)}:\n{result.stderr}"

    # The image's default command, configured through the environment as a
    # container would be (the CMD gives no broker or store), passes the health check.
    bridge_factory()  # creates the store the API reads
    (cmd,) = [yaml.safe_load(args) for keyword, args in dockerfile() if keyword == "CMD"]
    port = free_port()
    cmd = [str(venv / "bin" / cmd[0]), *(str(port) if a == "8080" else a for a in cmd[1:])]
    api_env = {**env, "LOGAGG_BROKER": broker.url, "LOGAGG_STORE": store_url}
    with running(cmd, tmp_path / "api.log", api_env):
        check = healthcheck(port, python=str(venv / "bin" / "python"))
        assert eventually(lambda: passes(check)), (tmp_path / "api.log").read_text()


@pytest.mark.slow
@pytest.mark.broker
def test_logagg_up_from_an_installed_wheel_runs_anywhere(tmp_path: Path) -> None:
    """A plain (not editable) install from the wheel, then `logagg up` in an empty directory:
    it starts Mosquitto with the configuration shipped in the wheel, and stops on SIGTERM."""
    source, wheels, venv, elsewhere = (tmp_path / d for d in ("src", "wheels", "venv", "cwd"))
    # A copy of what the wheel is built from, so the build leaves nothing in the checkout.
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__py*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)],
        [*pip, "install", "--require-hashes", "--no-deps", "-r", str(RUN_LOCK)],
    ]
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{step}:\n{done.stdout}\n{done.stderr}"
    (wheel,) = wheels.glob("logagg-*.whl")
    done = subprocess.run(
        [*pip, "install", "--no-deps", str(wheel)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr

    mqtt_port, http_port = free_port(), free_port()
    log = tmp_path / "up.log"
    command = [str(venv / "bin" / "logagg"), "up", "--broker", f"mqtt://127.0.0.1:{mqtt_port}"]
    with log.open("wb") as out:
        up = subprocess.Popen(
            [*command, "--port", str(http_port)],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert eventually(lambda: up.poll() is not None or healthz(http_port) == 200, 60)
        assert up.poll() is None, f"logagg up exited:\n{log.read_text()}"
    finally:
        code = stop_process(up)
    text = log.read_text()
    assert code == 0, text
    shipped = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert f"starting Mosquitto with {shipped}/site-packages/supervise/mosquitto.conf" in text
    assert (elsewhere / "data" / "mosquitto" / "mosquitto.db").exists(), text
    assert not port_open("127.0.0.1", mqtt_port)


def healthz(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return None
