"""Start the socket proxy (`python -m gateway.sockproxy`) on its owner-only unix socket."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.backend.create_body import SECCOMP_DIR
from gateway.config import (
    DEFAULT_IMAGE,
    ENV_EXECUTOR_IMAGE,
    ENV_MOUNT_SOURCES,
    ENV_PROXY_IMAGES,
    ENV_SANDBOX_UIDS,
)
from gateway.egress.network import EgressNetwork
from gateway.errors import SetupError
from gateway.setup.probe import unix_http_status
from gateway.setup.state import REPO_ROOT, SetupPaths, is_root, pid_alive, say
from gateway.uids import DEFAULT_UID_RANGE
from policy import load_policy

__all__ = ["ensure_proxy", "proxy_argv", "proxy_is_filtering"]

#: What the proxy is made of: a change to any of these, or to the seccomp profiles (SECCOMP_DIR,
#: package data wherever the `seccomp` package is installed), restarts it.
_SOURCES = (
    REPO_ROOT / "gateway" / "sockproxy",
    REPO_ROOT / "gateway" / "backend",
    REPO_ROOT / "gateway" / "egress",
    REPO_ROOT / "policy" / "profiles",
)
_SUFFIXES = (".py", ".json", ".yaml")


def proxy_is_filtering(socket_path: Path) -> bool:
    """True when the socket answers like our proxy: the ping goes through, a volume listing is refused."""
    return (
        unix_http_status(socket_path, "/_ping") == 200
        and unix_http_status(socket_path, "/v1.41/volumes") == 403
    )


def proxy_argv(paths: SetupPaths) -> list[str]:
    """The proxy's command line: the repository's skills/ and the setup's mount root may be mounted."""
    sources = [str(REPO_ROOT / "skills")]
    sources += [p for p in os.environ.get(ENV_MOUNT_SOURCES, "").split(os.pathsep) if p]
    argv = [
        sys.executable,
        "-m",
        "gateway.sockproxy",
        "--listen",
        f"unix:{paths.proxy_socket}",
        "--engine",
        str(paths.docker_socket),
        "--sandbox-uids",
        os.environ.get(ENV_SANDBOX_UIDS) or DEFAULT_UID_RANGE,
        "--mount-root",
        str(paths.mount_root),
    ]
    if is_root():  # setup made the egress network (setup/egress.py)
        egress = EgressNetwork.from_env()
        argv += ["--egress-network", egress.name, "--egress-subnet", str(egress.subnet)]
    for source in sources:
        argv += ["--mount-source", source]
    for image in _policy_images():
        argv += ["--image", image]
    return argv


def _policy_images() -> list[str]:
    """The images sandboxes may be made from: the shipped policy's, $MCP_EXECUTOR_IMAGE, and any
    in $SGW_PROXY_IMAGES (os.pathsep-separated) for operators' own policies."""
    names = {name for profile in load_policy().profiles.values() for name in profile.sandbox.image_names()}
    names.add(os.environ.get(ENV_EXECUTOR_IMAGE) or DEFAULT_IMAGE)
    names.update(p for p in os.environ.get(ENV_PROXY_IMAGES, "").split(os.pathsep) if p)
    return sorted(names)


def _digest(argv: list[str]) -> str:
    sha = hashlib.sha256("\0".join(argv).encode())
    for root in _SOURCES:
        for path in sorted(root.rglob("*")):
            if path.suffix in _SUFFIXES and path.is_file():
                sha.update(path.name.encode() + path.read_bytes())
    for entry in sorted(SECCOMP_DIR.iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(_SUFFIXES) and entry.is_file():
            sha.update(entry.name.encode() + entry.read_bytes())
    return sha.hexdigest()


def _proxy_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` when that process is our socket proxy, else None."""
    pid = _read_pid(pid_file)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        return None
    return pid if b"gateway.sockproxy" in cmdline else None


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _stop_legacy_haproxy(paths: SetupPaths) -> None:
    """An HAProxy that an older setup started on loopback TCP is open to every local user: stop it."""
    pid = pid_alive(paths.state_dir / "run" / "haproxy.pid", "haproxy")
    if pid is not None:
        say(f"stopping the old HAProxy socket proxy on loopback TCP (pid {pid})")
        _stop(pid)


def ensure_proxy(paths: SetupPaths) -> None:
    """Reuse a running proxy with the current code and options; otherwise (re)start it and check it."""
    paths.ensure_dirs()
    _stop_legacy_haproxy(paths)
    pid_file = paths.state_dir / "run" / "socket-proxy.pid"
    digest_file = paths.state_dir / "run" / "socket-proxy.sha256"
    argv = proxy_argv(paths)
    digest = _digest(argv)
    pid = _proxy_pid(pid_file)
    if (
        pid
        and digest_file.exists()
        and digest_file.read_text() == digest
        and proxy_is_filtering(paths.proxy_socket)
    ):
        say(f"socket proxy answers on {paths.proxy_socket} (pid {pid})")
        return
    if pid:
        say(f"restarting the socket proxy (pid {pid}): its code or options changed, or it stopped answering")
        _stop(pid)
    log = paths.state_dir / "log" / "socket-proxy.log"
    say(f"starting the socket proxy on {paths.proxy_socket} -> {paths.docker_socket} (log: {log})")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    pid_file.write_text(str(proc.pid))
    digest_file.write_text(digest)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"the socket proxy exited ({proc.returncode}); see {log}")
        if proxy_is_filtering(paths.proxy_socket):
            say("socket proxy answers, and refuses what it should")
            return
        time.sleep(0.2)
    raise SetupError(
        f"the socket proxy on {paths.proxy_socket} did not answer /_ping with 200 and /volumes with 403 "
        f"within 15 s; see {log}"
    )
