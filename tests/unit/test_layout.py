"""The layout the README's "Architecture" section describes, held against the code's own imports.

Layers, lowest first: a package may import from its own layer's foundation and from lower layers,
never from a higher one. `policy` and `audit` import nothing from `gateway`; only `gateway/backend`
imports `docker`; no module is longer than about 300 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Lowest first. Units are `gateway.<first part>`; the foundation may be imported from anywhere.
LAYERS: list[set[str]] = [
    {
        "gateway",
        "gateway.errors",
        "gateway.uids",
        "gateway.config",
        "gateway.engine_settings",
        "gateway.telemetry",
        "gateway.stages",
        "gateway.fdlimit",
        "gateway.ratelimit",
        "gateway.agent",
        "gateway.egress",
    },
    {"gateway.backend", "gateway.auth", "gateway.upstream"},
    {"gateway.sandboxes", "gateway.setup", "gateway.sockproxy", "gateway.fleet"},
    {"gateway.calls"},
    {"gateway.wiring"},
    {"gateway.http", "gateway.embedding"},
    {"gateway.cli"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 300


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" and len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_gateway_unit_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in _modules("gateway")}
    assert units <= set(RANK), f"place these in LAYERS (and the README): {sorted(units - set(RANK))}"


def test_no_import_reaches_up_a_layer() -> None:
    upward = []
    for path in _modules("gateway"):
        source = _unit(_module_name(path))
        for imported in _imports(path):
            if not imported.startswith("gateway"):
                continue
            target = _unit(imported)
            same_foundation = RANK[target] == 0
            if target != source and not same_foundation and RANK[target] >= RANK[source]:
                upward.append(f"{_module_name(path)} imports {imported}")
    assert not upward, upward


@pytest.mark.parametrize("package", ["policy", "audit", "seccomp"])
def test_the_pure_packages_import_nothing_of_the_gateway(package: str) -> None:
    leaks = [
        f"{_module_name(p)} imports {name}"
        for p in _modules(package)
        for name in _imports(p)
        if name.split(".")[0] == "gateway"
    ]
    assert not leaks, leaks


def test_only_the_backend_imports_docker() -> None:
    importers = {
        _module_name(p)
        for package in ("gateway", "policy", "audit", "seccomp")
        for p in _modules(package)
        if any(name.split(".")[0] == "docker" for name in _imports(p))
    }
    assert importers and all(name.startswith("gateway.backend.") for name in importers), importers


def test_no_module_is_over_300_lines() -> None:
    long = {
        _module_name(p): n
        for package in ("gateway", "policy", "audit", "seccomp", "bench")
        for p in _modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_layer_check_sees_an_upward_import() -> None:
    """The check itself: a core module importing the HTTP edge would be caught."""
    assert RANK[_unit("gateway.http.app")] > RANK[_unit("gateway.sandboxes.broker")]
    assert _unit("gateway.sandboxes.broker") == "gateway.sandboxes" and _unit("policy.engine") == "policy"
