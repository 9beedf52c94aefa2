"""Build a sandbox image if it is missing: `docker build` when a registry answers, else offline.

Offline, the same contents (gateway/setup/image_recipe.py, and image_variants.py for the images on
top of the base one) come from a debootstrap root filesystem (gateway/setup/debian.py) imported with
`docker import`. Each image's root filesystem tarball is cached, so a rebuild after `docker rmi` or a
change to the gateway's files in the image takes seconds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gateway.errors import SetupError
from gateway.setup.debian import (
    debian_source,
    debootstrap,
)
from gateway.setup.image_recipe import add_shipped
from gateway.setup.image_variants import BASE, ImageVariant, finish_rootfs
from gateway.setup.state import REPO_ROOT, SetupPaths, apt_install, run, say

__all__ = ["ensure_image", "image_tarball"]

_LABEL = "sandbox-gateway.recipe"


def _docker(
    paths: SetupPaths, *args: str, timeout: float = 600, check: bool = True, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return run(
        ["docker", "-H", f"unix://{paths.docker_socket}", *args],
        timeout=timeout,
        check=check,
        input_bytes=input_bytes,
    )


def _image_recipe(paths: SetupPaths, image: str) -> str | None:
    proc = _docker(
        paths,
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{_LABEL}"}}}}',
        image,
        check=False,
        timeout=30,
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _registry_answers(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("registry-1.docker.io", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _rootfs_tarball(paths: SetupPaths, variant: ImageVariant) -> Path:
    """The finished debootstrap tree as a tarball, cached by what shapes it (rootfs_digest)."""
    cache = paths.state_dir / "cache" / variant.rootfs_name
    if cache.exists():
        say(f"using the cached root filesystem {cache}")
        return cache
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], "the sandbox image is built offline from a debootstrap root filesystem")
    source = debian_source()
    build = Path(tempfile.mkdtemp(prefix="rootfs-", dir=paths.state_dir / "cache"))
    try:
        debootstrap(source, variant.all_packages, build)
        finish_rootfs(build, variant)
        partial = cache.with_suffix(".partial")
        run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(cache)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return cache


def image_tarball(rootfs: Path, target: Path) -> Path:
    """`rootfs` plus the gateway's files (the agent, the file helper), written as `target`."""
    partial = target.with_suffix(".partial")
    shutil.copyfile(rootfs, partial)
    with tarfile.open(partial, "a") as tar:
        add_shipped(tar)
    partial.rename(target)
    return target


def _import(paths: SetupPaths, image: str, tarball: Path, digest: str, env: tuple[str, ...]) -> None:
    changes = [
        f"LABEL {_LABEL}={digest}",
        "USER 1000:1000",
        "WORKDIR /workspace",
        'CMD ["sleep", "infinity"]',
    ]
    changes += [f"ENV {item}" for item in env]
    argv = ["import"]
    for change in changes:
        argv += ["--change", change]
    say(f"importing {tarball.name} as {image}")
    _docker(paths, *argv, str(tarball), image, timeout=900)


def _docker_build(paths: SetupPaths, image: str, variant: ImageVariant, digest: str, base_image: str) -> bool:
    argv = ["build", "-f", str(variant.dockerfile), "--label", f"{_LABEL}={digest}", "-t", image]
    if variant.extends is not None:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    proc = _docker(paths, *argv, str(REPO_ROOT), timeout=1800, check=False)
    return proc.returncode == 0


def ensure_image(
    paths: SetupPaths, image: str, variant: ImageVariant = BASE, *, base_image: str = BASE.image
) -> None:
    """Make sure `image` exists and was built from `variant`'s current recipe. A variant on top of
    the base image is built FROM `base_image` with a registry (ensure that one first)."""
    digest = variant.recipe_digest()
    found = _image_recipe(paths, image)
    what = "sandbox image" if variant.extends is None else f"{variant.name} sandbox image"
    if found == digest:
        say(f"{what} {image} is present (recipe {digest})")
        return
    about = f": {variant.about}" if variant.about else ""
    say(f"building {what} {image} (recipe {digest}; found {found or 'none'}){about}")
    if _registry_answers():
        if _docker_build(paths, image, variant, digest, base_image):
            say(f"built {image} with docker build")
            return
        say("docker build failed; building offline instead")
    target = paths.state_dir / "cache" / f"sandbox-image-{digest}.tar"
    image_tar = image_tarball(_rootfs_tarball(paths, variant), target)
    try:
        _import(paths, image, image_tar, digest, variant.all_env)
    finally:
        image_tar.unlink(missing_ok=True)
    if _image_recipe(paths, image) != digest:
        raise SetupError(f"the image {image} was imported but does not carry the recipe label")
    say(f"{what} {image} is ready")
