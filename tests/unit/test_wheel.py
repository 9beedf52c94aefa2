"""A wheel of the project carries the seccomp profiles, and an installed (non-editable) copy of it
loads them: nothing depends on the source tree's layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted(path.name for path in (ROOT / "seccomp").glob("*.json"))

pytestmark = pytest.mark.slow

#: Run in the venv the wheel is installed into: where each package came from, and what create_body
#: reads for the shipped profile, under both runtimes.
_CHECK = """
import json, gateway, policy, seccomp
from gateway.backend.create_body import SECCOMP_DIR, _seccomp_option, seccomp_options
print(json.dumps({
    "gateway": gateway.__file__, "seccomp": seccomp.__file__, "dir": str(SECCOMP_DIR),
    "runc": _seccomp_option("sandbox", "runc"), "runsc": _seccomp_option("sandbox", "runsc"),
    "options": {runtime: len(options) for runtime, options in seccomp_options().items()},
}))
"""


def _source_copy(target: Path) -> Path:
    """pyproject.toml, README.md and the packages it ships, copied: the build leaves nothing in the
    work tree, and no stale build/ directory there can put files into the wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*.") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for package in packages:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = _source_copy(base / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(base / "dist")],
        check=True,
        cwd=base,
        timeout=300,
    )
    (built,) = (base / "dist").glob("sandbox_gateway-*.whl")
    return built


def test_the_wheel_holds_every_seccomp_profile_as_in_the_tree(wheel: Path) -> None:
    assert PROFILES, "seccomp/ holds no profile"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "seccomp/__init__.py" in names
        for profile in PROFILES:
            assert archive.read(f"seccomp/{profile}") == (ROOT / "seccomp" / profile).read_bytes()
        assert "policy/profiles/default.yaml" in names


def test_an_installed_wheel_loads_the_profiles_from_its_own_copy(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    # The dependencies come from this interpreter's site-packages, added after the venv's own by a
    # path line (a .pth file in a directory added that way is not run, so an editable install of
    # the project here stays out of it).
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    here = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (purelib / "test-dependencies.pth").write_text("".join(f"{path}\n" for path in here))

    # -I: neither the working directory nor PYTHONPATH is on the path; run from outside the tree.
    result = subprocess.run(
        [str(python), "-I", "-c", _CHECK],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for package in ("gateway", "seccomp"):
        assert Path(seen[package]).is_relative_to(purelib), f"{package} imported from {seen[package]}"
    assert Path(seen["dir"]) == purelib / "seccomp"

    from gateway.backend.create_body import _seccomp_option

    for runtime in ("runc", "runsc"):
        assert seen[runtime] == _seccomp_option("sandbox", runtime)
        assert seen[runtime][0].startswith("seccomp={")
    assert seen["options"] == {"runc": len(PROFILES), "runsc": len(PROFILES)}
