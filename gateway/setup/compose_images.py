"""Build the compose stack's images without a registry: the gateway, its socket proxy and the web
console (the production stack's `frontend`).

With a registry, `docker-compose build` does this from `python:3.11-slim-bookworm`. Without one,
that role is played by a local base image made from a debootstrap root filesystem (`docker
import`, cached like the sandbox's), and the gateway's Python dependencies come as wheels built on
this host and installed with `pip --no-index`. The socket proxy's image is the gateway's image with
another entry point (`sandbox-gateway socket-proxy`), built from the one just made; the web
console's is the gateway's with the `ui` extra (Gradio) installed from wheels the same way, run as
`python -m frontend`. It is built when the repository has the `frontend` package and the `ui` extra.

The fleet's gateway tier (compose/fleet) adds HAProxy and Redis, Debian's packages: each comes in a
local base image of its own made the same way (a debootstrap tree with the package, imported), with
compose/fleet/ROLE/Dockerfile on top.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from gateway.errors import SetupError
from gateway.setup.debian import debian_source, debootstrap
from gateway.setup.state import REPO_ROOT, SetupPaths, apt_install, run, say

__all__ = [
    "BASE_PACKAGES",
    "DEFAULT_FRONTEND_IMAGE",
    "DEFAULT_GATEWAY_IMAGE",
    "DEFAULT_HAPROXY_IMAGE",
    "DEFAULT_PROXY_IMAGE",
    "DEFAULT_REDIS_IMAGE",
    "build_compose_images",
    "build_fleet_images",
    "has_frontend",
]

DEFAULT_GATEWAY_IMAGE = "sandbox-gateway:latest"
DEFAULT_PROXY_IMAGE = "sandbox-gateway-proxy:latest"
DEFAULT_FRONTEND_IMAGE = "sandbox-gateway-frontend:latest"
DEFAULT_HAPROXY_IMAGE = "sandbox-gateway-haproxy:latest"
DEFAULT_REDIS_IMAGE = "sandbox-gateway-redis:latest"
#: What each local base image holds on top of debootstrap's minbase.
BASE_PACKAGES: dict[str, tuple[str, ...]] = {
    "python": ("python3", "python3-venv", "ca-certificates"),
    "haproxy": ("haproxy",),
    "redis": ("redis-server",),
}
_RECIPE_VERSION = "1"
_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
_WHEELS = REPO_ROOT / "compose" / "wheels"
_PROXY_CONTEXT = REPO_ROOT / "compose" / "socket-proxy"
_FLEET = REPO_ROOT / "compose" / "fleet"


def _docker(paths: SetupPaths, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[bytes]:
    return run(["docker", "-H", f"unix://{paths.docker_socket}", *args], timeout=timeout)


def _build(paths: SetupPaths, *args: str) -> None:
    """`docker build` with the classic builder, which takes a local image as `FROM` without a registry."""
    docker = ["docker", "-H", f"unix://{paths.docker_socket}"]
    argv = [*docker, "build", "--quiet", "--force-rm", "--network", "none", *args]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    proc = subprocess.run(argv, capture_output=True, timeout=1200, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-2000:]
        raise SetupError(f"docker build {args[-1]} failed (exit {proc.returncode}): {tail}")


def _image_id(paths: SetupPaths, image: str) -> str | None:
    proc = subprocess.run(
        ["docker", "-H", f"unix://{paths.docker_socket}", "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _drop_replaced(paths: SetupPaths, image: str, previous: str | None) -> None:
    """Remove the image a rebuild replaced, so rebuilds do not pile up untagged images."""
    if previous is not None and _image_id(paths, image) != previous:
        subprocess.run(
            ["docker", "-H", f"unix://{paths.docker_socket}", "rmi", previous],
            capture_output=True,
            timeout=60,
            check=False,
        )


def _base_image(paths: SetupPaths, role: str) -> str:
    """`sandbox-gateway-base-ROLE:DIGEST`, imported from a cached debootstrap tree when missing."""
    packages = BASE_PACKAGES[role]
    source = debian_source()
    digest = hashlib.sha256(
        "\n".join((_RECIPE_VERSION, source.suite, *packages, *_ENV)).encode()
    ).hexdigest()[:16]
    image = f"sandbox-gateway-base-{role}:{digest}"
    if _image_id(paths, image) is not None:
        say(f"base image {image} is present")
        return image
    paths.ensure_dirs()
    cache = paths.state_dir / "cache" / f"base-{role}-rootfs-{digest}.tar"
    if cache.exists():
        say(f"using the cached root filesystem {cache}")
    else:
        if shutil.which("debootstrap") is None:
            apt_install(["debootstrap"], "the compose images are built offline from debootstrap trees")
        build = Path(tempfile.mkdtemp(prefix=f"base-{role}-", dir=paths.state_dir / "cache"))
        try:
            debootstrap(source, packages, build)
            for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
                shutil.rmtree(build / junk, ignore_errors=True)
            partial = cache.with_suffix(".partial")
            run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
            partial.rename(cache)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    argv = ["import"]
    for item in _ENV:
        argv += ["--change", f"ENV {item}"]
    say(f"importing {cache.name} as {image}")
    _docker(paths, *argv, str(cache), image)
    return image


def _image_python(paths: SetupPaths, image: str) -> tuple[str, str, str]:
    """(Python version, glibc version, machine) inside `image`, for choosing wheels that fit it."""
    probe = "import platform as p; print(p.python_version(), p.libc_ver()[1], p.machine())"
    proc = _docker(paths, "run", "--rm", "--network", "none", image, "python3", "-c", probe, timeout=60)
    python, glibc, machine = proc.stdout.decode().split()
    return python, glibc, machine


def _project() -> dict[str, Any]:
    return dict(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"])


def _requirements(*extras: str) -> list[str]:
    """The project's dependencies, those of `extras`, and the build backend."""
    project = _project()
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for e in extras for r in optional[e]), "setuptools>=68", "wheel"]


def has_frontend() -> bool:
    """Whether the repository holds the web console: the `frontend` package and the `ui` extra."""
    extras = _project().get("optional-dependencies", {})
    return (REPO_ROOT / "frontend" / "__main__.py").is_file() and "ui" in extras


def _wheelhouse(paths: SetupPaths, image: str, requirements: list[str]) -> Path:
    """Binary wheels of `requirements` (with the build backend), for the image's Python; cached.

    pip runs on this host (which reaches the index) but picks wheels for the image's interpreter,
    its environment markers and its glibc, so nothing is fetched during `docker build`.
    """
    python, glibc, machine = _image_python(paths, image)
    key = "\n".join((python, glibc, machine, *requirements))
    house = paths.state_dir / "cache" / f"wheels-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (house / ".complete").exists():
        say(f"using the cached wheels {house}")
        return house
    say(f"downloading wheels of the gateway's dependencies for Python {python} into {house}")
    major, minor = glibc.split(".")[:2]
    platforms = [f"manylinux_{major}_{m}_{machine}" for m in range(5, int(minor) + 1)]
    platforms += [f"manylinux{tag}_{machine}" for tag in ("2014", "2010", "1")]
    abi = "cp" + "".join(python.split(".")[:2])
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none", "--dest", str(house)]  # fmt: skip
    for platform in platforms:
        argv += ["--platform", platform]
    house.mkdir(parents=True, exist_ok=True)
    (house / "requirements.txt").write_text("\n".join(requirements) + "\n")
    wanted = requirements
    # pip evaluates environment markers with this interpreter, not the image's (a dependency needed
    # only below Python 3.11.3, say), so ask the image what is still missing until nothing is.
    for _ in range(10):
        run([*argv, *wanted], timeout=1200)
        wanted = _missing_in_image(paths, image, house)
        if not wanted:
            (house / ".complete").touch()
            return house
    raise SetupError(f"the wheels in {house} still miss {', '.join(wanted)} for the image's Python")


def _missing_in_image(paths: SetupPaths, image: str, house: Path) -> list[str]:
    """Requirements an offline install inside `image` cannot satisfy from `house`."""
    script = (
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --dry-run --quiet --no-index "
        "--disable-pip-version-check --find-links /wheels -r /wheels/requirements.txt"
    )
    proc = subprocess.run(
        ["docker", "-H", f"unix://{paths.docker_socket}", "run", "--rm", "--network", "none",
         "-v", f"{house}:/wheels:ro", image, "sh", "-c", script],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode == 0:
        return []
    found = re.findall(r"No matching distribution found for ([^;\s]+)", proc.stderr.decode(errors="replace"))
    if not found:
        tail = proc.stderr.decode(errors="replace")[-1500:]
        raise SetupError(f"an offline install of the gateway's dependencies in {image} fails: {tail}")
    return found


def _build_with_wheels(paths: SetupPaths, house: Path, dockerfile: str, base: str, image: str) -> None:
    """`docker build` of compose/`dockerfile` (context: the repository) on `base`, installing from
    the wheels of `house` only (copied to compose/wheels for the build, removed after)."""
    for stale in _WHEELS.glob("*.whl"):
        stale.unlink()
    try:
        for wheel in house.glob("*.whl"):
            shutil.copy2(wheel, _WHEELS / wheel.name)
        say(f"building {image} from {base}")
        _build(
            paths, "-f", str(REPO_ROOT / "compose" / dockerfile),
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_OFFLINE=1",
            "-t", image, str(REPO_ROOT),
        )  # fmt: skip
    finally:
        for wheel in _WHEELS.glob("*.whl"):
            wheel.unlink()


def build_compose_images(
    paths: SetupPaths,
    gateway_image: str = DEFAULT_GATEWAY_IMAGE,
    proxy_image: str = DEFAULT_PROXY_IMAGE,
    frontend_image: str | None = DEFAULT_FRONTEND_IMAGE,
) -> None:
    """Build `gateway_image` (compose/Dockerfile.gateway), then `proxy_image` (compose/socket-proxy)
    and `frontend_image` (compose/Dockerfile.frontend; None, or a repository without the web
    console: not built) from it."""
    python_base = _base_image(paths, "python")
    if frontend_image is not None and not has_frontend():
        say("no web console here (the frontend package and the ui extra): its image is not built")
        frontend_image = None
    images = [image for image in (gateway_image, proxy_image, frontend_image) if image is not None]
    previous = {image: _image_id(paths, image) for image in images}
    house = _wheelhouse(paths, python_base, _requirements())
    _build_with_wheels(paths, house, "Dockerfile.gateway", python_base, gateway_image)
    say(f"building {proxy_image} from {gateway_image}")
    _build(paths, "--build-arg", f"BASE_IMAGE={gateway_image}", "-t", proxy_image, str(_PROXY_CONTEXT))
    if frontend_image is not None:
        ui_house = _wheelhouse(paths, python_base, _requirements("ui"))
        _build_with_wheels(paths, ui_house, "Dockerfile.frontend", gateway_image, frontend_image)
    # Those built on the old gateway image first: it cannot go before them.
    for image in reversed(images):
        _drop_replaced(paths, image, previous[image])
    say(f"compose images ready: {', '.join(images)}")


def build_fleet_images(
    paths: SetupPaths, haproxy_image: str = DEFAULT_HAPROXY_IMAGE, redis_image: str = DEFAULT_REDIS_IMAGE
) -> None:
    """Build the fleet's balancer (compose/fleet/haproxy) and Redis (compose/fleet/redis) images,
    each on a local base image that already holds Debian's package, so the build fetches nothing."""
    for role, image in (("haproxy", haproxy_image), ("redis", redis_image)):
        base = _base_image(paths, role)
        previous = _image_id(paths, image)
        say(f"building {image} from {base}")
        _build(paths, "--build-arg", f"BASE_IMAGE={base}", "-t", image, str(_FLEET / role))
        _drop_replaced(paths, image, previous)
    say(f"fleet images ready: {haproxy_image}, {redis_image}")
