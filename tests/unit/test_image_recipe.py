"""The sandbox image's recipe: Dockerfile.sandbox and the offline build install the same files, in
the places the gateway runs them from, root-owned and read-only; what ships into the image needs
nothing but the standard library; and the recipe digest changes with every file that goes in. The
data-science variant's Dockerfile builds on the sandbox image and installs what its offline recipe
does."""

from __future__ import annotations

import ast
import io
import shlex
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from gateway.agent import launcher
from gateway.backend.create_body import AGENT_COMMAND, AGENT_PATH, environment
from gateway.calls.files import HELPER_PATH
from gateway.setup import image, image_recipe
from gateway.setup.image_recipe import (
    DOCKERFILE,
    SHIPPED,
    SHIPPED_DIRS,
    SHIPPED_LINKS,
    recipe_digest,
    rootfs_digest,
)
from gateway.setup.image_variants import BASE, DATA_SCIENCE
from gateway.setup.state import REPO_ROOT

AGENT_DIR = REPO_ROOT / "gateway" / "agent"


def _dockerfile_instructions(dockerfile: Path = DOCKERFILE) -> list[list[str]]:
    """A Dockerfile's instructions as words, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [shlex.split(line) for line in lines if line.strip()]


def test_the_dockerfile_copies_exactly_the_shipped_files_read_only() -> None:
    copied: dict[str, str] = {}
    for words in _dockerfile_instructions():
        if words[0] != "COPY":
            continue
        assert words[1] == "--chmod=0444" and not any(w.startswith("--chown") for w in words), words
        *sources, destination = words[2:]
        for source in sources:
            target = destination + Path(source).name if destination.endswith("/") else destination
            copied[target.lstrip("/")] = source
    assert copied == SHIPPED


def test_the_dockerfile_makes_the_directories_before_copying_into_them() -> None:
    """COPY --chmod=0444 would give a directory it creates mode 0444 on some BuildKit versions."""
    run = " ".join(" ".join(words) for words in _dockerfile_instructions() if words[0] == "RUN")
    assert "install -d -o root -g root -m 0755 " + " ".join(f"/{d}" for d in SHIPPED_DIRS) in run
    for target in SHIPPED:
        assert str(Path(target).parent) in SHIPPED_DIRS


def test_the_gateway_runs_what_the_image_holds() -> None:
    assert AGENT_COMMAND == ["python3", "-I", "-S", AGENT_PATH]
    assert SHIPPED[AGENT_PATH.lstrip("/")] == "gateway/agent/launcher.py"
    assert SHIPPED[HELPER_PATH.lstrip("/")] == "gateway/agent/file_helper.py"
    package = str(Path(AGENT_PATH).parent / launcher.PACKAGE).lstrip("/")
    assert package in SHIPPED_DIRS
    in_package = {Path(source).name for target, source in SHIPPED.items() if target.startswith(package + "/")}
    scripts = {"launcher.py", "file_helper.py", "sgw_tools.py"}
    every_module = {path.name for path in AGENT_DIR.glob("*.py")} - scripts
    assert in_package == every_module, "every module of gateway/agent/ but the scripts is the package"
    assert SHIPPED["opt/sandbox-gateway/pylib/sgw_tools.py"] == "gateway/agent/sgw_tools.py"
    assert {Path(target).name for target in SHIPPED if target.startswith(package + "/")} == in_package


def test_both_builds_link_the_tools_package_to_the_tools_mount() -> None:
    run = " ".join(" ".join(words) for words in _dockerfile_instructions() if words[0] == "RUN")
    for target, link in SHIPPED_LINKS.items():
        assert f"ln -s {link} /{target}" in run
    assert "PYTHONPATH=/opt/sandbox-gateway/pylib:/skills" in environment("/workspace")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("source", sorted(set(SHIPPED.values())))
def test_what_ships_needs_only_the_standard_library(source: str) -> None:
    """The image has no gateway package: the agent's modules import the standard library and each
    other (relatively, since the image names their package sgw_agent); the two scripts run on
    their own and import the standard library only."""
    script = source in ("gateway/agent/launcher.py", "gateway/agent/file_helper.py")
    for level, module in _imports(REPO_ROOT / source):
        if level:
            assert not script and level == 1, (source, module)
        else:
            assert module.partition(".")[0] in sys.stdlib_module_names, (source, module)


def copy_of_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped files and the Dockerfile copied under `tmp_path`, and the recipe reading them there."""
    for relative in [*SHIPPED.values(), "compose/Dockerfile.sandbox"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / relative, tmp_path / relative)
    monkeypatch.setattr(image_recipe, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(image_recipe, "DOCKERFILE", tmp_path / "compose/Dockerfile.sandbox")


def test_the_digest_covers_every_shipped_file_and_the_dockerfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of_the_recipe(tmp_path, monkeypatch)
    base, rootfs = recipe_digest(), rootfs_digest()
    seen = {base}
    for relative in [*SHIPPED.values(), "compose/Dockerfile.sandbox"]:
        original = (tmp_path / relative).read_text()
        (tmp_path / relative).write_text(original + "\n# changed\n")
        seen.add(recipe_digest())
        (tmp_path / relative).write_text(original)
    assert len(seen) == len(SHIPPED) + 2, "each file changes the digest"
    assert recipe_digest() == base and rootfs_digest() == rootfs, "the root filesystem cache stays"


def test_the_offline_image_adds_the_shipped_files_root_owned_and_read_only(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("./etc/hostname")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"box"))
    built = image.image_tarball(rootfs, tmp_path / "image.tar")
    assert built == tmp_path / "image.tar" and sorted(p.name for p in tmp_path.iterdir()) == [
        "image.tar",
        "rootfs.tar",
    ]
    with tarfile.open(built) as tar:
        members = {member.name.removeprefix("./"): member for member in tar.getmembers()}
        assert set(members) == {"etc/hostname", *SHIPPED_DIRS, *SHIPPED, *SHIPPED_LINKS}
        for target, link in SHIPPED_LINKS.items():
            assert members[target].issym() and members[target].linkname == link
        for directory in SHIPPED_DIRS:
            member = members[directory]
            assert (member.isdir(), member.mode, member.uid, member.gid) == (True, 0o755, 0, 0)
        for target, source in SHIPPED.items():
            member = members[target]
            assert (member.isfile(), member.mode, member.uid, member.gid) == (True, 0o444, 0, 0)
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == (REPO_ROOT / source).read_bytes()


def test_the_data_science_dockerfile_builds_on_the_sandbox_image_and_copies_nothing() -> None:
    """The gateway's files come with the base image, as offline (image_tarball adds SHIPPED)."""
    words = _dockerfile_instructions(DATA_SCIENCE.dockerfile)
    assert words[0] == ["ARG", f"BASE_IMAGE={BASE.image}"] and words[1] == ["FROM", "${BASE_IMAGE}"]
    assert not [w for w in words if w[0] in ("COPY", "ADD")]
    assert words[-1] == ["USER", "1000:1000"], "the sandbox runs as the sandbox user, as the base"


def test_the_data_science_dockerfile_installs_and_sets_what_the_offline_recipe_does() -> None:
    words = _dockerfile_instructions(DATA_SCIENCE.dockerfile)
    run = " ".join(" ".join(w[1:]) for w in words if w[0] == "RUN")
    installed = run.partition("pip install ")[2].partition("&&")[0].split()
    pinned = {word.partition("==")[0] for word in installed if not word.startswith("--")}
    assert pinned == {package.removeprefix("python3-") for package in DATA_SCIENCE.packages}
    assert all("==" in word for word in installed if not word.startswith("--")), "pinned releases"
    assert "find / -xdev -perm /6000 -type f -exec chmod ug-s {} +" in run
    env = [item for w in words if w[0] == "ENV" for item in w[1:]]
    assert env == list(DATA_SCIENCE.env)
