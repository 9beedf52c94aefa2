"""What goes into the sandbox image: packages, environment, and the gateway's own files.

compose/Dockerfile.sandbox builds it from a registry's python image; offline, a debootstrap tree gets
the same steps (`customise`) and the same files (`add_shipped`). The recipe digest covers all of it,
so a change to any of these files makes `sandbox-gateway setup` rebuild the image.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

from gateway.setup.state import REPO_ROOT, run

__all__ = [
    "DOCKERFILE",
    "IMAGE_ENV",
    "IMAGE_PACKAGES",
    "SHIPPED",
    "SHIPPED_DIRS",
    "SHIPPED_LINKS",
    "add_shipped",
    "customise",
    "recipe_digest",
    "rootfs_digest",
]

#: On top of debootstrap's minbase: full python3 (python3-minimal lacks json), also as `python`; pip
#: and curl (with the CA bundle) for profiles with egress.
IMAGE_PACKAGES = (
    "python3", "python-is-python3", "bash", "coreutils", "procps", "python3-pip", "curl", "ca-certificates",
)  # fmt: skip
_RECIPE_VERSION = "2"
DOCKERFILE = REPO_ROOT / "compose" / "Dockerfile.sandbox"
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/workspace",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)
#: The gateway's files in the image (path in the image: source in this repository), root-owned and
#: read-only: the agent's launcher (AGENT_PATH of gateway/backend/create_body.py) and its package,
#: and the file helper (HELPER_PATH of gateway/calls/files.py). Dockerfile.sandbox copies the same.
SHIPPED: dict[str, str] = {
    "opt/sandbox-gateway/agent.py": "gateway/agent/launcher.py",
    "opt/sandbox-gateway/files.py": "gateway/agent/file_helper.py",
    "opt/sandbox-gateway/sgw_agent/__init__.py": "gateway/agent/__init__.py",
    "opt/sandbox-gateway/sgw_agent/protocol.py": "gateway/agent/protocol.py",
    "opt/sandbox-gateway/sgw_agent/processes.py": "gateway/agent/processes.py",
    "opt/sandbox-gateway/sgw_agent/sandbox_agent.py": "gateway/agent/sandbox_agent.py",
    "opt/sandbox-gateway/sgw_agent/tool_ports.py": "gateway/agent/tool_ports.py",
    "opt/sandbox-gateway/sgw_agent/interpreter.py": "gateway/agent/interpreter.py",
    "opt/sandbox-gateway/sgw_agent/interpreter_host.py": "gateway/agent/interpreter_host.py",
    "opt/sandbox-gateway/sgw_agent/interpreter_process.py": "gateway/agent/interpreter_process.py",
    "opt/sandbox-gateway/pylib/sgw_tools.py": "gateway/agent/sgw_tools.py",
}
#: Links in the image: `import tools.<server>` finds the generated modules of /tools (code mode).
SHIPPED_LINKS = {"opt/sandbox-gateway/pylib/tools": "/tools"}
#: The directories that hold them, root-owned, mode 0755.
SHIPPED_DIRS = ("opt/sandbox-gateway", "opt/sandbox-gateway/sgw_agent", "opt/sandbox-gateway/pylib")


def rootfs_digest() -> str:
    """Names the cached debootstrap tree: only the packages and the recipe version shape it."""
    material = "\n".join((_RECIPE_VERSION, *IMAGE_PACKAGES))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def recipe_digest() -> str:
    """Changes whenever what goes into the image changes; stored as an image label."""
    shipped = [f"{target}\n{(REPO_ROOT / source).read_text()}" for target, source in SHIPPED.items()]
    material = "\n".join((_RECIPE_VERSION, *IMAGE_PACKAGES, *IMAGE_ENV, DOCKERFILE.read_text(), *shipped))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def customise(root: Path) -> None:
    """The same steps as Dockerfile.sandbox, applied to a debootstrap tree (as root)."""
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


def add_shipped(tar: tarfile.TarFile) -> None:
    """Add the gateway's files to an image's root filesystem tarball: directories root-owned 0755,
    files root-owned 0444."""
    for directory in SHIPPED_DIRS:
        info = tarfile.TarInfo(f"./{directory}")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    for target, source in SHIPPED.items():
        data = (REPO_ROOT / source).read_bytes()
        info = tarfile.TarInfo(f"./{target}")
        info.size, info.mode = len(data), 0o444
        tar.addfile(info, io.BytesIO(data))
    for target, link in SHIPPED_LINKS.items():
        info = tarfile.TarInfo(f"./{target}")
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
        tar.addfile(info)
