"""Make sure a Docker engine answers on its unix socket; install and start one if we may."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from gateway.errors import SetupError
from gateway.setup.probe import unix_http_status
from gateway.setup.state import SetupPaths, apt_install, is_root, pid_alive, say

__all__ = ["daemon_config", "ensure_engine"]

_STALE_PID_FILES = (
    Path("/var/run/docker.pid"),
    Path("/var/run/docker/containerd/containerd.pid"),
)
_STALE_SOCKETS = (
    Path("/var/run/docker/containerd/containerd.sock"),
    Path("/var/run/docker/containerd/containerd-debug.sock"),
    Path("/var/run/docker/metrics.sock"),
)


def daemon_config(runsc: str | None) -> dict[str, object]:
    """The daemon.json of an engine we start: gVisor registered when installed, nothing else loosened."""
    config: dict[str, object] = {
        "storage-driver": "overlay2",
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "2"},
    }
    if runsc:
        config["runtimes"] = {"runsc": {"path": runsc, "runtimeArgs": ["--network=none"]}}
    return config


def _clean_stale_state(paths: SetupPaths) -> None:
    """A dockerd that died with its session leaves pid files and sockets that block a new one."""
    if pid_alive(Path("/var/run/docker.pid"), "dockerd"):
        return
    for pid_file in _STALE_PID_FILES:
        if pid_file.exists():
            say(f"removing stale {pid_file}")
            pid_file.unlink(missing_ok=True)
    for sock in (paths.docker_socket, *_STALE_SOCKETS):
        if sock.exists() or sock.is_symlink():
            say(f"removing stale socket {sock}")
            sock.unlink(missing_ok=True)


def _start_dockerd(paths: SetupPaths) -> None:
    if not is_root():
        raise SetupError(
            f"no Docker engine answers on {paths.docker_socket} and starting one needs root. "
            "Start Docker (e.g. `sudo systemctl start docker`) or run `make setup` as root."
        )
    if shutil.which("dockerd") is None:
        apt_install(["docker.io"], "no Docker engine is installed")
    paths.ensure_dirs()
    _clean_stale_state(paths)
    config = paths.state_dir / "daemon.json"
    config.write_text(json.dumps(daemon_config(shutil.which("runsc")), indent=2) + "\n")
    log = paths.state_dir / "log" / "dockerd.log"
    say(f"starting dockerd in the background (log: {log})")
    with log.open("ab") as out:
        subprocess.Popen(
            [
                "dockerd",
                "--config-file",
                str(config),
                "--host",
                f"unix://{paths.docker_socket}",
                "--pidfile",
                "/var/run/docker.pid",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if unix_http_status(paths.docker_socket) == 200:
            say("dockerd answers")
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise SetupError(f"dockerd did not answer on {paths.docker_socket} within 90 s; its log ends:\n{tail}")


def ensure_engine(paths: SetupPaths) -> None:
    """Reuse an engine that answers; otherwise install (root on Debian) and start one."""
    if unix_http_status(paths.docker_socket) == 200:
        say(f"Docker engine answers on {paths.docker_socket}")
        return
    _start_dockerd(paths)
