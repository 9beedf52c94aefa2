"""The sandbox images setup builds: the base one and the data-science variant on top of it, each
with its own digests and cached root filesystem; the variant's recipe covers the base's; its root
filesystem is slimmed and checked before the base's steps; and the shipped policy names it."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway import setup
from gateway.config import ENV_EXECUTOR_IMAGE, ENV_PROXY_IMAGES
from gateway.errors import SetupError
from gateway.setup import image, image_recipe, image_variants, proxy
from gateway.setup.image_recipe import DOCKERFILE, IMAGE_ENV, IMAGE_PACKAGES
from gateway.setup.image_variants import BASE, DATA_SCIENCE, VARIANTS, finish_rootfs, installed_of
from gateway.setup.state import REPO_ROOT, SetupPaths
from policy import load_policy
from tests.unit.test_image_recipe import copy_of_the_recipe


def test_the_base_variant_is_the_sandbox_image_of_before() -> None:
    """Same packages, environment, Dockerfile and digests: its cached root filesystem stays valid."""
    assert (BASE.extends, BASE.image, BASE.dockerfile) == (None, "mcp-code-executor:latest", DOCKERFILE)
    assert (BASE.all_packages, BASE.all_env) == (IMAGE_PACKAGES, IMAGE_ENV)
    assert BASE.recipe_digest() == image_recipe.recipe_digest()
    assert BASE.rootfs_name == f"sandbox-rootfs-{image_recipe.rootfs_digest()}.tar"
    assert VARIANTS[0] is BASE, "the base image is built first"


def test_the_data_science_variant_adds_packages_env_and_a_purge() -> None:
    assert DATA_SCIENCE.extends is BASE and DATA_SCIENCE.image == "mcp-code-executor:data-science"
    assert DATA_SCIENCE.all_packages == (
        *IMAGE_PACKAGES, "python3-numpy", "python3-pandas", "python3-matplotlib", "python3-tabulate",
    )  # fmt: skip
    assert DATA_SCIENCE.all_env == (*IMAGE_ENV, "MPLBACKEND=Agg", "MPLCONFIGDIR=/tmp/.matplotlib")
    assert {"gcc-12", "python3-pythran", "python3-sympy", "libpython3.11-dev"} <= set(DATA_SCIENCE.purge)
    assert not set(DATA_SCIENCE.purge) & set(DATA_SCIENCE.all_packages), "nothing asked for is purged"
    assert {"numpy", "pandas", "matplotlib.pyplot", "tabulate"} <= set(DATA_SCIENCE.imports)


def test_each_variant_has_its_own_digests_and_cache_file() -> None:
    assert len({v.recipe_digest() for v in VARIANTS}) == len({v.rootfs_digest() for v in VARIANTS}) == 2
    assert len({v.rootfs_name for v in VARIANTS}) == len({v.image for v in VARIANTS}) == 2
    assert DATA_SCIENCE.rootfs_name == f"sandbox-rootfs-data-science-{DATA_SCIENCE.rootfs_digest()}.tar"


def test_the_variant_recipe_changes_with_the_base_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of_the_recipe(tmp_path, monkeypatch)
    recipe, rootfs = DATA_SCIENCE.recipe_digest(), DATA_SCIENCE.rootfs_digest()
    for relative in ("gateway/agent/sandbox_agent.py", "compose/Dockerfile.sandbox"):
        original = (tmp_path / relative).read_text()
        (tmp_path / relative).write_text(original + "\n# changed\n")
        assert DATA_SCIENCE.recipe_digest() != recipe, relative
        assert DATA_SCIENCE.rootfs_digest() == rootfs, "the gateway's files are added after the cache"
        (tmp_path / relative).write_text(original)
    assert DATA_SCIENCE.recipe_digest() == recipe
    monkeypatch.setattr(image_recipe, "IMAGE_PACKAGES", (*IMAGE_PACKAGES, "less"))
    assert DATA_SCIENCE.rootfs_digest() != rootfs and DATA_SCIENCE.recipe_digest() != recipe


def test_the_variant_recipe_changes_with_its_own_parts(tmp_path: Path) -> None:
    recipe, rootfs = DATA_SCIENCE.recipe_digest(), DATA_SCIENCE.rootfs_digest()
    for changed in (
        dataclasses.replace(DATA_SCIENCE, packages=(*DATA_SCIENCE.packages, "python3-sklearn")),
        dataclasses.replace(DATA_SCIENCE, purge=DATA_SCIENCE.purge[1:]),
        dataclasses.replace(DATA_SCIENCE, imports=DATA_SCIENCE.imports[1:]),
    ):
        assert changed.rootfs_digest() != rootfs and changed.recipe_digest() != recipe, changed
    assert dataclasses.replace(DATA_SCIENCE, env=("MPLBACKEND=svg",)).rootfs_digest() == rootfs
    assert dataclasses.replace(DATA_SCIENCE, env=("MPLBACKEND=svg",)).recipe_digest() != recipe
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DATA_SCIENCE.dockerfile.read_text() + "# changed\n")
    assert dataclasses.replace(DATA_SCIENCE, dockerfile=dockerfile).recipe_digest() != recipe


def test_only_the_installed_packages_of_the_purge_list_are_purged() -> None:
    query = "gcc-12\tinstalled\npython3-sympy\tinstalled\ng++\tnot-installed\nlibfoo\tinstalled\n"
    query += "cpp\tconfig-files\n"
    assert installed_of(("g++", "python3-sympy", "gcc-12", "cpp", "zlib1g-dev"), query) == [
        "python3-sympy",
        "gcc-12",
    ]


class _Chroot:
    """Records the commands finish_rootfs runs and answers dpkg-query like a tree with gcc-12."""

    def __init__(self, import_fails: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.import_fails = import_fails

    def __call__(self, argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(argv)
        if "dpkg-query" in argv:
            return subprocess.CompletedProcess(argv, 0, b"gcc-12\tinstalled\npython3-numpy\tinstalled\n", b"")
        if "python3" in argv and self.import_fails:
            raise SetupError(
                "chroot /root env -i failed (exit 1): ModuleNotFoundError: No module named 'scipy'"
            )
        return subprocess.CompletedProcess(argv, 0, b"", b"")


def test_the_purge_comes_before_the_base_steps_and_the_import_check_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir()
    chroot = _Chroot()
    monkeypatch.setattr(
        image_variants, "customise", lambda root: chroot.calls.append(["customise", str(root)])
    )

    def matplotlib_cache(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        if "python3" in argv:
            (tmp_path / "tmp" / ".matplotlib").mkdir()
        return chroot(argv, **kwargs)

    monkeypatch.setattr(image_variants, "run", matplotlib_cache)
    finish_rootfs(tmp_path, DATA_SCIENCE)
    purge, customise, check = chroot.calls[1:]
    assert purge == ["chroot", str(tmp_path), "dpkg", "--purge", "--force-depends", "gcc-12"]
    assert customise == ["customise", str(tmp_path)], "setuid removal and the rest apply to the slim tree"
    assert check[:4] == ["chroot", str(tmp_path), "env", "-i"]
    assert check[4:-4] == list(DATA_SCIENCE.all_env) and check[-4:-1] == ["python3", "-B", "-c"]
    assert check[-1] == "import " + ", ".join(DATA_SCIENCE.imports)
    assert list((tmp_path / "tmp").iterdir()) == [], "the check leaves nothing in the image's /tmp"


def test_a_broken_import_after_the_purge_fails_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(image_variants, "run", _Chroot(import_fails=True))
    monkeypatch.setattr(image_variants, "customise", lambda root: None)
    with pytest.raises(
        SetupError, match=r"the data-science image's root filesystem fails `import numpy.*scipy"
    ):
        finish_rootfs(tmp_path, DATA_SCIENCE)


def test_the_base_has_no_purge_and_no_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chroot = _Chroot()
    monkeypatch.setattr(image_variants, "run", chroot)
    monkeypatch.setattr(image_variants, "customise", lambda root: chroot.calls.append(["customise"]))
    finish_rootfs(tmp_path, BASE)
    assert chroot.calls == [["customise"]]


def _paths(tmp_path: Path) -> SetupPaths:
    (tmp_path / "cache").mkdir(parents=True)
    return SetupPaths(tmp_path, tmp_path / "docker.sock", tmp_path / "proxy.sock")


def test_with_a_registry_the_variant_is_built_from_its_dockerfile_on_the_base_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []

    def docker(paths: SetupPaths, *args: str, **_: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(args)
        return subprocess.CompletedProcess(list(args), 1 if args[0] == "image" else 0, b"", b"")

    monkeypatch.setattr(image, "_docker", docker)
    monkeypatch.setattr(image, "_registry_answers", lambda: True)
    image.ensure_image(_paths(tmp_path), "ds:1", DATA_SCIENCE, base_image="base:1")
    build = calls[1]
    assert build[:3] == ("build", "-f", str(DATA_SCIENCE.dockerfile))
    assert "--build-arg" in build and build[build.index("--build-arg") + 1] == "BASE_IMAGE=base:1"
    assert build[build.index("--label") + 1] == f"sandbox-gateway.recipe={DATA_SCIENCE.recipe_digest()}"
    assert build[build.index("-t") + 1] == "ds:1" and build[-1] == str(REPO_ROOT)
    image.ensure_image(_paths(tmp_path / "b"), "base:1")
    assert calls[3][:3] == ("build", "-f", str(DOCKERFILE)) and "--build-arg" not in calls[3]


def test_offline_the_variant_is_imported_with_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    digest = DATA_SCIENCE.recipe_digest()

    def docker(paths: SetupPaths, *args: str, **_: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(args)
        label = digest.encode() if len(calls) > 2 else b""
        return subprocess.CompletedProcess(list(args), 0, label, b"")

    rootfs = tmp_path / "rootfs.tar"
    shutil.copyfile(Path(__file__), rootfs)  # any bytes: image_tarball appends to a tar
    monkeypatch.setattr(image, "_docker", docker)
    monkeypatch.setattr(image, "_registry_answers", lambda: False)
    monkeypatch.setattr(
        image, "_rootfs_tarball", lambda paths, variant: rootfs if variant is DATA_SCIENCE else tmp_path
    )
    monkeypatch.setattr(image, "image_tarball", lambda rootfs, target: target)
    image.ensure_image(_paths(tmp_path / "state"), DATA_SCIENCE.image, DATA_SCIENCE)
    imported = calls[1]
    assert imported[0] == "import" and imported[-1] == DATA_SCIENCE.image
    env = [
        imported[i + 1]
        for i, word in enumerate(imported)
        if word == "--change" and imported[i + 1].startswith("ENV")
    ]
    assert env == [f"ENV {item}" for item in DATA_SCIENCE.all_env]


def test_setup_ensures_the_base_image_first_then_the_data_science_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ensured: list[tuple[str, str, str]] = []
    for step in ("ensure_engine", "ensure_egress", "ensure_proxy"):
        monkeypatch.setattr(setup, step, lambda *args: None)
    monkeypatch.setattr(
        setup,
        "ensure_image",
        lambda paths, name, variant, base_image: ensured.append((name, variant.name, base_image)),
    )
    images = setup.run_setup(SetupPaths(Path("/nonexistent"), Path("/d"), Path("/p")), "mine:1")
    assert ensured == [
        ("mine:1", "base", "mine:1"),
        ("mcp-code-executor:data-science", "data-science", "mine:1"),
    ]
    assert images == ["mine:1", "mcp-code-executor:data-science"]


def test_the_shipped_data_science_profile_uses_the_image_and_the_proxy_allows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_EXECUTOR_IMAGE, raising=False)
    monkeypatch.delenv(ENV_PROXY_IMAGES, raising=False)
    profiles = load_policy().profiles
    assert profiles["data-science"].sandbox.image_names() == (DATA_SCIENCE.image,)
    assert profiles["default"].sandbox.image_names() == (BASE.image,)
    assert DATA_SCIENCE.image in proxy._policy_images()
    named = {name for profile in profiles.values() for name in profile.sandbox.image_names()}
    assert named == {variant.image for variant in VARIANTS}, "setup builds every image the policy names"
