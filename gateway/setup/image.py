"""Build the sandbox image if it is missing: `docker build` when a registry answers, else offline.

Offline, the same contents come from a debootstrap root filesystem imported with `docker import`.
The root filesystem tarball is cached, so a rebuild after `docker rmi` takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gateway.errors import SetupError
from gateway.setup.state import REPO_ROOT, SetupPaths, apt_install, run, say

__all__ = ["IMAGE_PACKAGES", "ensure_image", "recipe_digest"]

#: On top of debootstrap's minbase: full python3 (python3-minimal lacks json), also as `python`.
IMAGE_PACKAGES = ("python3", "python-is-python3", "bash", "coreutils", "procps")
_RECIPE_VERSION = "2"
_LABEL = "sandbox-gateway.recipe"
_DOCKERFILE = REPO_ROOT / "compose" / "Dockerfile.sandbox"
#: The in-sandbox agent, installed read-only at AGENT_PATH (see gateway/backend/create_body.py).
AGENT_SOURCE = REPO_ROOT / "gateway" / "agent" / "sandbox_agent.py"
AGENT_IN_IMAGE = "opt/sandbox-gateway/agent.py"
_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/workspace",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)


def _rootfs_digest() -> str:
    """Names the cached debootstrap tree: only the packages and the recipe version shape it."""
    material = "\n".join((_RECIPE_VERSION, *IMAGE_PACKAGES))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def recipe_digest() -> str:
    """Changes whenever what goes into the image changes; stored as an image label."""
    material = "\n".join(
        (_RECIPE_VERSION, *IMAGE_PACKAGES, *_ENV, _DOCKERFILE.read_text(), AGENT_SOURCE.read_text())
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


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


def _debian_mirror() -> tuple[str, str]:
    """The host's Debian mirror and suite, so debootstrap uses what apt already reaches."""
    mirror, suite = "http://deb.debian.org/debian", "bookworm"
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = source.read_text()
        except OSError:
            continue
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+(\w+)\s", text, re.MULTILINE
        )
        if match:
            mirror = match.group(1)
            break
    try:
        release = Path("/etc/os-release").read_text()
        codename = re.search(r"^VERSION_CODENAME=(\w+)", release, re.MULTILINE)
        if codename and "ID=debian" in release:
            suite = codename.group(1)
    except OSError:
        pass
    return mirror, suite


def _customise(root: Path) -> None:
    """The same steps as Dockerfile.sandbox, applied to a debootstrap tree."""
    run(["chroot", str(root), "groupadd", "--gid", "1000", "sandbox"])
    run(
        [
            "chroot",
            str(root),
            "useradd",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--home-dir",
            "/workspace",
            "--no-create-home",
            "--shell",
            "/bin/bash",
            "sandbox",
        ]
    )
    for sub in ("workspace", "tools", "skills"):
        (root / sub).mkdir(exist_ok=True)
    os.chown(root / "workspace", 1000, 1000)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o6000:
            path.chmod(path.stat().st_mode & ~0o6000)
    for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
        shutil.rmtree(root / junk, ignore_errors=True)


def _rootfs_tarball(paths: SetupPaths, digest: str) -> Path:
    cache = paths.state_dir / "cache" / f"sandbox-rootfs-{_rootfs_digest()}.tar"
    if cache.exists():
        say(f"using the cached root filesystem {cache}")
        return cache
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], "the sandbox image is built offline from a debootstrap root filesystem")
    mirror, suite = _debian_mirror()
    build = Path(tempfile.mkdtemp(prefix="rootfs-", dir=paths.state_dir / "cache"))
    try:
        say(f"debootstrap {suite} from {mirror} with {', '.join(IMAGE_PACKAGES)} (about a minute)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(IMAGE_PACKAGES)}",
                suite,
                str(build),
                mirror,
            ],
            timeout=1200,
        )
        _customise(build)
        partial = cache.with_suffix(".partial")
        run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(cache)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return cache


def _with_agent(paths: SetupPaths, rootfs: Path, digest: str) -> Path:
    """The cached root filesystem plus the agent (root-owned, read-only), as a new tarball."""
    target = paths.state_dir / "cache" / f"sandbox-image-{digest}.tar"
    partial = target.with_suffix(".partial")
    shutil.copyfile(rootfs, partial)
    with tarfile.open(partial, "a") as tar:
        for directory in ("opt/sandbox-gateway",):
            info = tarfile.TarInfo(f"./{directory}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = AGENT_SOURCE.read_bytes()
        info = tarfile.TarInfo(f"./{AGENT_IN_IMAGE}")
        info.size, info.mode = len(data), 0o444
        with AGENT_SOURCE.open("rb") as source:
            tar.addfile(info, source)
    partial.rename(target)
    return target


def _import(paths: SetupPaths, image: str, tarball: Path, digest: str) -> None:
    changes = [
        f"LABEL {_LABEL}={digest}",
        "USER 1000:1000",
        "WORKDIR /workspace",
        'CMD ["sleep", "infinity"]',
    ]
    changes += [f"ENV {item}" for item in _ENV]
    argv = ["import"]
    for change in changes:
        argv += ["--change", change]
    say(f"importing {tarball.name} as {image}")
    _docker(paths, *argv, str(tarball), image, timeout=900)


def ensure_image(paths: SetupPaths, image: str) -> None:
    """Make sure `image` exists and was built from the current recipe."""
    digest = recipe_digest()
    found = _image_recipe(paths, image)
    if found == digest:
        say(f"sandbox image {image} is present (recipe {digest})")
        return
    say(f"building sandbox image {image} (recipe {digest}; found {found or 'none'})")
    if _registry_answers():
        proc = _docker(
            paths,
            "build",
            "-f",
            str(_DOCKERFILE),
            "--label",
            f"{_LABEL}={digest}",
            "-t",
            image,
            str(REPO_ROOT),
            timeout=1800,
            check=False,
        )
        if proc.returncode == 0:
            say(f"built {image} with docker build")
            return
        say("docker build failed; building offline instead")
    image_tar = _with_agent(paths, _rootfs_tarball(paths, digest), digest)
    try:
        _import(paths, image, image_tar, digest)
    finally:
        image_tar.unlink(missing_ok=True)
    if _image_recipe(paths, image) != digest:
        raise SetupError(f"the image {image} was imported but does not carry the recipe label")
    say(f"sandbox image {image} is ready")
