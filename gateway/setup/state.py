"""Where setup keeps its files, and small helpers shared by its steps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.config import (
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_PROXY_SOCKET,
    DEFAULT_STATE_DIR,
    ENV_DOCKER_SOCKET,
    ENV_PROXY_SOCKET,
    ENV_STATE_DIR,
)
from gateway.errors import SetupError

__all__ = ["SetupPaths", "apt_install", "is_root", "pid_alive", "run", "say"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class SetupPaths:
    """Files and addresses setup works with; all overridable through the environment."""

    state_dir: Path
    docker_socket: Path
    proxy_socket: Path

    @classmethod
    def from_env(cls) -> SetupPaths:
        return cls(
            state_dir=Path(os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR),
            docker_socket=Path(os.environ.get(ENV_DOCKER_SOCKET) or DEFAULT_DOCKER_SOCKET),
            proxy_socket=Path(os.environ.get(ENV_PROXY_SOCKET) or DEFAULT_PROXY_SOCKET),
        )

    @property
    def proxy_url(self) -> str:
        return f"unix://{self.proxy_socket}"

    @property
    def mount_root(self) -> Path:
        """Subdirectories of this may be mounted at /tools and /skills (besides the repo's skills/)."""
        return self.state_dir / "mounts"

    def ensure_dirs(self) -> None:
        for sub in ("", "log", "run", "cache", "mounts"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)


def say(message: str) -> None:
    """Setup's voice: one line per step on stderr, so stdout stays clean for scripts."""
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def is_root() -> bool:
    return os.geteuid() == 0


def run(
    argv: list[str], *, timeout: float = 600, check: bool = True, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a fixed argv (never a shell); on failure raise SetupError with the tail of its output."""
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, input=input_bytes)
    except FileNotFoundError as exc:
        raise SetupError(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-1500:]
        raise SetupError(f"{' '.join(argv[:4])} failed (exit {proc.returncode}): {tail}")
    return proc


def is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return any(word in text for word in ("ID=debian", "ID=ubuntu", "ID_LIKE=debian", "ID_LIKE=ubuntu"))


def apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages when we are root on Debian/Ubuntu; otherwise say exactly what to install."""
    missing_hint = f"install them first: apt-get install -y {' '.join(packages)}"
    if not is_root() or not is_debian_like() or shutil.which("apt-get") is None:
        raise SetupError(
            f"{why}: {', '.join(packages)} missing and this is not root on Debian/Ubuntu; {missing_hint}"
        )
    say(f"installing {' '.join(packages)} ({why})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    # Install from the lists we have; if that fails (no lists, or stale ones), update once and retry.
    proc = subprocess.run(install, capture_output=True, timeout=900, env=env, check=False)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=600, env=env)
        proc = subprocess.run(install, capture_output=True, timeout=900, env=env, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-800:]
        raise SetupError(f"apt-get install {' '.join(packages)} failed: {tail}")


def pid_alive(pid_file: Path, comm: str) -> int | None:
    """The pid in `pid_file` if that process is alive and named `comm`, else None."""
    try:
        pid = int(pid_file.read_text().strip())
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if name == comm else None
