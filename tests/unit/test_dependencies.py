"""Every third-party package the shipped code imports is declared in pyproject.toml's dependencies.

A package that is only installed because another one pulls it in (PyJWT through mcp, requests
through docker) can disappear from the environment with that other package's next release.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The shipped packages, as pyproject.toml's package discovery names them (`gateway*` -> gateway).
OWN = frozenset(
    pattern.rstrip("*.") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
)
SOURCES = ("gateway", "policy", "audit", "seccomp")


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Distribution names in [project].dependencies, normalised (extras and versions dropped)."""
    names = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the name of requirement {requirement!r}"
        names.add(_normalised(match.group(1)))
    return names


def _imports(path: Path) -> set[str]:
    """Absolute module names `path` imports (for `from a import b`, both `a` and `a.b`: b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def third_party_imports() -> dict[str, set[str]]:
    """Imported module name -> the files importing it, for every module that is neither the
    standard library's nor the project's own."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            for name in _imports(path):
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in OWN:
                    continue
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _modules_of(distribution: str) -> set[str]:
    """Dotted names of the modules and packages a distribution installs (from its file list)."""
    modules = set()
    for file in importlib.metadata.distribution(distribution).files or ():
        parts = file.parts
        if not parts or not parts[-1].endswith(".py"):
            continue
        stem = parts[-1].removesuffix(".py")
        dotted = parts[:-1] if stem == "__init__" else (*parts[:-1], stem)
        modules.add(".".join(dotted))
    return modules


def distributions_of(module: str, top_level: Mapping[str, list[str]]) -> set[str]:
    """The distributions that provide `module`: for a namespace shared by several distributions
    (opentelemetry), the one whose files hold the longest prefix of the module's dotted name."""
    candidates = set(top_level.get(module.partition(".")[0], ()))
    if len(candidates) <= 1:
        return candidates
    provided = {dist: _modules_of(dist) for dist in candidates}
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        owners = {dist for dist, modules in provided.items() if prefix in modules}
        if owners:
            return owners
    return candidates


def test_the_walk_sees_the_imports_it_must() -> None:
    imported = third_party_imports()
    assert {"docker", "jwt", "limits", "requests", "yaml"} <= {name.partition(".")[0] for name in imported}
    assert not {name for name in imported if name.partition(".")[0] in {"gateway", "os", "__future__"}}


def test_every_imported_third_party_package_is_a_declared_dependency() -> None:
    top_level = importlib.metadata.packages_distributions()
    declared = _declared()
    missing: dict[str, set[str]] = {}
    for module, files in sorted(third_party_imports().items()):
        distributions = {_normalised(d) for d in distributions_of(module, top_level)}
        top = module.partition(".")[0]
        if not distributions:
            missing.setdefault(f"{top} (no installed distribution provides it)", set()).update(files)
        elif not distributions & declared:
            missing.setdefault(f"{top} -> {' or '.join(sorted(distributions))}", set()).update(files)
    assert not missing, "imported but not in [project].dependencies:\n" + "\n".join(
        f"  {what}: {', '.join(sorted(files))}" for what, files in missing.items()
    )


def test_the_namespace_resolution_picks_the_providing_distribution() -> None:
    top_level = importlib.metadata.packages_distributions()
    assert distributions_of("opentelemetry.sdk.trace", top_level) == {"opentelemetry-sdk"}
    assert distributions_of("opentelemetry.trace", top_level) == {"opentelemetry-api"}
    assert distributions_of("jwt", top_level) == {"PyJWT"}
