"""Build the sandbox image if it is missing: `docker build` when a registry answers, else offline.

Offline, the same contents come from a debootstrap root filesystem imported with `docker import`.
The root filesystem tarball is cached, so a rebuild after `docker rmi` takes seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import SetupError
from gateway.setup.state import REPO_ROOT, SetupPaths, apt_install, run, say

__all__ = [
    "ENV_DEBIAN_MIRROR",
    "IMAGE_PACKAGES",
    "AptSource",
    "DebianSource",
    "choose_debian_source",
    "debian_source",
    "debootstrap",
    "ensure_image",
    "read_apt_sources",
    "recipe_digest",
]

#: On top of debootstrap's minbase: full python3 (python3-minimal lacks json), also as `python`.
IMAGE_PACKAGES = ("python3", "python-is-python3", "bash", "coreutils", "procps")
_RECIPE_VERSION = "2"
_LABEL = "sandbox-gateway.recipe"
_DOCKERFILE = REPO_ROOT / "compose" / "Dockerfile.sandbox"
#: The in-sandbox agent, installed read-only at AGENT_PATH (see gateway/backend/create_body.py).
AGENT_SOURCE = REPO_ROOT / "gateway" / "agent" / "sandbox_agent.py"
AGENT_IN_IMAGE = "opt/sandbox-gateway/agent.py"
#: `URL [SUITE]` of a Debian mirror for debootstrap, instead of the one apt's sources name.
ENV_DEBIAN_MIRROR = "SGW_DEBIAN_MIRROR"
_FALLBACK_MIRROR, _FALLBACK_SUITE = "http://deb.debian.org/debian", "bookworm"
#: The URI methods debootstrap can fetch from (not apt's mirror+, tor+ or cdrom: methods).
_SCHEMES = ("http://", "https://", "file:")
_ONE_LINE = re.compile(
    r"^\s*deb\s+(?:\[(?P<options>[^\]]*)\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>(?:\s+\S+)*)\s*$"
)
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


@dataclass(frozen=True, slots=True)
class AptSource:
    """One `deb` line of apt's configuration: a URI and one suite of it."""

    uri: str
    suite: str
    components: tuple[str, ...]
    keyring: str | None  # Signed-By, when it names a keyring file
    origin: str  # the file it came from


@dataclass(frozen=True, slots=True)
class DebianSource:
    """Where debootstrap fetches the image's packages from, and why that place."""

    mirror: str
    suite: str
    keyring: Path | None
    origin: str


def _keyring(value: str) -> str | None:
    """A Signed-By value that names one keyring file (not fingerprints, not an inline key)."""
    words = value.split()
    return words[0] if len(words) == 1 and words[0].startswith("/") else None


def parse_one_line_sources(text: str, origin: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list, *.list)."""
    found = []
    for line in text.splitlines():
        match = _ONE_LINE.match(line.partition("#")[0])
        if match is None:
            continue
        options = dict(opt.partition("=")[::2] for opt in (match["options"] or "").split())
        found.append(
            AptSource(
                uri=match["uri"].rstrip("/"),
                suite=match["suite"],
                components=tuple(match["components"].split()),
                keyring=_keyring(options.get("signed-by", "")),
                origin=origin,
            )
        )
    return found


def parse_deb822_sources(text: str, origin: str) -> list[AptSource]:
    """Stanzas of `Types:`, `URIs:`, `Suites:`, `Components:` (*.sources), skipping `Enabled: no`."""
    found = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line.strip()
                continue
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        components = tuple(fields.get("components", "").split())
        keyring = _keyring(fields.get("signed-by", ""))
        found += [
            AptSource(uri.rstrip("/"), suite, components, keyring, origin)
            for uri in fields.get("uris", "").split()
            for suite in fields.get("suites", "").split()
        ]
    return found


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every `deb` source apt reads, in apt's order: sources.list, then sources.list.d/ by name
    (only `*.list` and `*.sources`; apt ignores other names, and so do we)."""
    files = [etc_apt / "sources.list"]
    with contextlib.suppress(OSError):
        files += sorted(
            path for path in (etc_apt / "sources.list.d").iterdir() if path.suffix in (".list", ".sources")
        )
    found: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = parse_deb822_sources if path.suffix == ".sources" else parse_one_line_sources
        found += parse(text, str(path))
    return found


def choose_debian_source(
    sources: list[AptSource], codename: str | None, override: str | None = None
) -> DebianSource:
    """The mirror and suite debootstrap should use.

    `override` (`URL [SUITE]`, from SGW_DEBIAN_MIRROR) wins. Otherwise, on a Debian host (`codename`
    set), the first source apt uses for the host's own release (`main` of suite `codename`, by a
    method debootstrap speaks: http, https or file): a local mirror or cache configured for apt is
    used as is. Only when there is none, Debian's own mirror.
    """
    if override and override.split():
        mirror, *rest = override.split()
        suite = rest[0] if rest else codename or _FALLBACK_SUITE
        return DebianSource(mirror.rstrip("/"), suite, None, ENV_DEBIAN_MIRROR)
    if codename:
        for source in sources:
            if source.suite == codename and "main" in source.components and source.uri.startswith(_SCHEMES):
                keyring = Path(source.keyring) if source.keyring and source.keyring.endswith(".gpg") else None
                return DebianSource(source.uri, codename, keyring, source.origin)
    why = "no apt source for this Debian release" if codename else "this host is not Debian"
    return DebianSource(_FALLBACK_MIRROR, codename or _FALLBACK_SUITE, None, f"default ({why})")


def _host_codename() -> str | None:
    """The Debian release this host runs (`VERSION_CODENAME`), or None on another distribution."""
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return None
    codename = re.search(r"^VERSION_CODENAME=\"?(\w+)", release, re.MULTILINE)
    is_debian = re.search(r"^ID=\"?debian\"?$", release, re.MULTILINE)
    return codename.group(1) if codename and is_debian else None


def debian_source() -> DebianSource:
    """Where this machine's setup takes Debian packages from (see choose_debian_source)."""
    return choose_debian_source(read_apt_sources(), _host_codename(), os.environ.get(ENV_DEBIAN_MIRROR))


def debootstrap_argv(source: DebianSource, packages: tuple[str, ...], target: Path) -> list[str]:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    if source.keyring is not None and source.keyring.is_file():
        argv.append(f"--keyring={source.keyring}")
    return [*argv, source.suite, str(target), source.mirror]


def debootstrap(source: DebianSource, packages: tuple[str, ...], target: Path) -> None:
    """A minbase tree of `source`'s suite with `packages` in `target` (about a minute)."""
    say(
        f"debootstrap {source.suite} from {source.mirror} (from {source.origin}) "
        f"with {', '.join(packages)} (about a minute)"
    )
    run(debootstrap_argv(source, packages, target), timeout=1200)


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
    source = debian_source()
    build = Path(tempfile.mkdtemp(prefix="rootfs-", dir=paths.state_dir / "cache"))
    try:
        debootstrap(source, IMAGE_PACKAGES, build)
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
