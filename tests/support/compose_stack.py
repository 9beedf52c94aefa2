"""Compose stacks brought up by the deployment tests: Debian's docker-compose on an engine of this
machine, under a project name of the test's own, with images `build-images` makes offline.

Builds take a lock: two test modules (on two workers) building the same images at once would share
compose/wheels, which each build fills and empties.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.setup.compose_images import build_compose_images, build_fleet_images
from gateway.setup.state import REPO_ROOT, SetupPaths
from tests.support.waiting import EventuallyFailed, eventually

__all__ = [
    "GATEWAY_IMAGE",
    "GATEWAY_UID",
    "HAPROXY_IMAGE",
    "PROXY_IMAGE",
    "REDIS_IMAGE",
    "Stack",
    "build_images",
    "clean_env",
    "docker",
    "env_of",
    "give_to_gateway",
    "inspect",
    "need_compose",
    "wait_healthy",
]

GATEWAY_IMAGE = "sandbox-gateway:deploy-test"
PROXY_IMAGE = "sandbox-gateway-proxy:deploy-test"
FRONTEND_IMAGE = "sandbox-gateway-frontend:deploy-test"
HAPROXY_IMAGE = "sandbox-gateway-haproxy:deploy-test"
REDIS_IMAGE = "sandbox-gateway-redis:deploy-test"
#: The user the gateway's image runs as (it reads the tokens, the audit key and the client key).
GATEWAY_UID = 10001
_BUILD_LOCK = Path("/run/lock/sandbox-gateway-compose-build.lock")


def need_compose() -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: `make test-tools` installs Debian's docker-compose")


def build_images(*, frontend: bool = False, fleet: bool = False) -> None:
    """The gateway and proxy images (and the console's, the fleet's HAProxy and Redis), one build
    at a time on this machine."""
    paths = SetupPaths.from_env()
    _BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_compose_images(paths, GATEWAY_IMAGE, PROXY_IMAGE, FRONTEND_IMAGE if frontend else None)
        if fleet:
            build_fleet_images(paths, HAPROXY_IMAGE, REDIS_IMAGE)


def docker(*args: str, socket: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The docker CLI on the shared engine (or on the engine at `socket`)."""
    socket_path = socket or SetupPaths.from_env().docker_socket
    argv = ["docker", "-H", f"unix://{socket_path}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)


def inspect(kind: str, name: str, socket: Path | None = None) -> dict[str, Any]:
    return dict(json.loads(docker(kind, "inspect", name, socket=socket).stdout)[0])


def env_of(info: dict[str, Any]) -> dict[str, str]:
    """A container's environment, from its inspection."""
    return dict(entry.split("=", 1) for entry in info["Config"]["Env"])


def clean_env(socket: Path | None, **settings: str) -> dict[str, str]:
    """docker-compose's environment: the engine at `socket` (none: `config` only) and `settings`,
    nothing of the caller's DOCKER_, COMPOSE_ or SGW_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "SGW_"))}
    if socket is not None:
        env["DOCKER_HOST"] = f"unix://{socket}"
    env.update(settings)
    return env


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    base: str
    token: str
    file: Path = REPO_ROOT / "compose" / "docker-compose.yml"
    #: The web console's published address (the production stack's).
    console: str = ""
    #: The engine the stack runs on (the shared one when None).
    socket: Path | None = field(default=None)

    def compose(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "-p", self.project, "-f", str(self.file), *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv[3:])} failed: {proc.stderr[-2000:]}")
        return proc

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict[str, Any]:
        return inspect("container", self.container(service), self.socket)

    def exec(self, service: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *argv, check=False, timeout=60)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "60", check=False)

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": docker("ps", "-aq", "--filter", label, socket=self.socket).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label, socket=self.socket).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label, socket=self.socket).stdout.split(),
            "sandboxes": docker(
                "ps", "-aq", "--filter", f"label=sandbox-gateway.gateway={self.project}", socket=self.socket
            ).stdout.split(),
        }


def wait_healthy(stack: Stack, service: str, deadline_s: float = 90) -> None:
    def healthy() -> bool:
        container = stack.container(service)
        assert container, "no container yet"
        status = stack.inspect(service)["State"].get("Health", {}).get("Status", "none")
        assert status == "healthy", status
        return True

    try:
        eventually(healthy, timeout_s=deadline_s, interval_s=0.5, message=f"{service} did not become healthy")
    except EventuallyFailed as exc:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False).stdout
        raise AssertionError(f"{exc}:\n{logs}") from None


def give_to_gateway(*paths: Path) -> None:
    """Make `paths` readable by the gateway's user only (as root), or by everyone (otherwise)."""
    for path in paths:
        if os.geteuid() == 0:
            os.chown(path, GATEWAY_UID, GATEWAY_UID)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)
