"""Package boundaries: the public APIs are lazy, so a light import stays light, and the
packages import each other in one direction only (read from their source with `ast`)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The project's top-level packages, as pyproject.toml tells setuptools to find them.
PACKAGES = [
    pattern.rstrip("*")
    for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
]
# Which package may not import which: the bridge is the bottom, `supervise` (running
# Mosquitto, stopping processes) sits below the CLI and the benchmark, the CLI on top.
FORBIDDEN = {
    "bridge": {"api", "publisher", "logagg", "bench", "supervise"},
    "api": {"logagg", "bench"},
    "publisher": {"logagg", "bench"},
    "bench": {"logagg"},
    "supervise": {"bridge", "api", "publisher", "logagg", "bench"},
}

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


def package_imports(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """For each package under `root`, the other packages of `packages` it imports anywhere:
    at module level, inside functions, or under TYPE_CHECKING."""
    graph: dict[str, set[str]] = {package: set() for package in packages}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue  # relative imports stay inside their package
                graph[package] |= {n.split(".")[0] for n in names} & set(packages) - {package}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every package that can reach itself through others, with one such path."""
    found = []
    for start in sorted(graph):
        paths = [[start, first] for first in sorted(graph[start])]
        seen: set[str] = set()
        while paths:
            path = paths.pop()
            if path[-1] == start:
                found.append(path)
                break
            if path[-1] not in seen:
                seen.add(path[-1])
                paths.extend([*path, nxt] for nxt in sorted(graph.get(path[-1], ())))
    return found


def test_the_import_scan_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "a.py").write_text("def f():\n    from high.b import g\n")
    (tmp_path / "high" / "b.py").write_text("import low.a\nfrom . import c\n")
    graph = package_imports(tmp_path, ["low", "high"])
    assert graph == {"low": {"high"}, "high": {"low"}}
    assert cycles(graph) == [["high", "low", "high"], ["low", "high", "low"]]


def test_no_import_cycle_between_packages() -> None:
    graph = package_imports(ROOT, PACKAGES)
    assert cycles(graph) == [], graph


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    assert package in PACKAGES
    imported = package_imports(ROOT, PACKAGES)[package]
    assert imported & FORBIDDEN[package] == set(), f"{package} imports {imported}"
