"""Make sure a Docker engine answers on its unix socket; install and start one if we may."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gateway.errors import SetupError
from gateway.setup.probe import unix_http_status
from gateway.setup.state import SetupPaths, apt_install, is_debian_like, is_root, pid_alive, say

__all__ = ["DEFAULT_ULIMITS", "RUNSC_ARGS", "daemon_config", "dockerd_argv", "ensure_engine"]

#: How the engine runs gVisor: no network stack of its own (sandboxes have network none), and the
#: container's seccomp profile applied inside gVisor too. runsc 20221219 has no option that removes
#: /dev/fuse or /dev/net/tun from a sandbox (its --fuse flag has no effect); SECURITY.md says why
#: neither can be used from a sandbox.
RUNSC_ARGS = ("--network=none", "--oci-seccomp")

_CONTAINERD_PID = Path("/var/run/docker/containerd/containerd.pid")
_CONTAINERD_SOCKETS = (
    Path("/var/run/docker/containerd/containerd.sock"),
    Path("/var/run/docker/containerd/containerd-debug.sock"),
)
_STALE_PID_FILES = (Path("/var/run/docker.pid"), _CONTAINERD_PID)
_STALE_SOCKETS = (*_CONTAINERD_SOCKETS, Path("/var/run/docker/metrics.sock"))


#: Containers that set no ulimit of their own (sandboxes set theirs from the policy) get these: no
#: core dumps (a dump writes a process's memory, secrets included, to disk). Only limits that lower
#: what a container inherits belong here: one above the engine's own hard limit (which the host
#: sets, and root may lack CAP_SYS_RESOURCE to raise) would stop such containers from starting.
DEFAULT_ULIMITS = {"core": {"Name": "core", "Soft": 0, "Hard": 0}}


def daemon_config(runsc: str | None) -> dict[str, object]:
    """The daemon.json of an engine we start (see SECURITY.md, "The engine `make setup` starts").

    Beyond Docker's defaults: no traffic between containers on the default bridge, no-new-privileges
    for every container, containers that outlive an engine restart (live-restore), published ports
    through iptables only (no userland proxy), no core dumps by default, and gVisor registered when
    installed.
    """
    config: dict[str, object] = {
        "storage-driver": "overlay2",
        "log-level": "info",
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "2"},
        "icc": False,
        "no-new-privileges": True,
        "live-restore": True,
        "userland-proxy": False,
        "default-ulimits": DEFAULT_ULIMITS,
    }
    if runsc:
        # --oci-seccomp: gVisor applies the container's seccomp profile inside its own kernel too.
        config["runtimes"] = {"runsc": {"path": runsc, "runtimeArgs": list(RUNSC_ARGS)}}
    return config


def _clean_stale_state(paths: SetupPaths) -> None:
    """A dockerd that died with its session leaves pid files and sockets that block a new one.

    A containerd that still runs is not stale: the next dockerd connects to it through its socket
    and takes its containers over (with live-restore they run on while dockerd restarts; their
    shims keep them even when containerd itself is restarted).
    """
    if pid_alive(Path("/var/run/docker.pid"), "dockerd"):
        return
    containerd_alive = pid_alive(_CONTAINERD_PID, "containerd") is not None
    for pid_file in _STALE_PID_FILES:
        if pid_file.exists() and not (containerd_alive and pid_file == _CONTAINERD_PID):
            say(f"removing stale {pid_file}")
            pid_file.unlink(missing_ok=True)
    for sock in (paths.docker_socket, *_STALE_SOCKETS):
        if containerd_alive and sock in _CONTAINERD_SOCKETS:
            continue
        if sock.exists() or sock.is_symlink():
            say(f"removing stale socket {sock}")
            sock.unlink(missing_ok=True)
    if containerd_alive:
        say("containerd still runs (live-restore): the new dockerd takes over its containers")


def dockerd_argv(paths: SetupPaths) -> list[str]:
    """How setup starts dockerd: everything else is in daemon.json. `--option=value` spellings, as
    audit tools (docker-bench-security) read the command line that way to find the config file."""
    return [
        "dockerd",
        f"--config-file={paths.state_dir / 'daemon.json'}",
        f"--host=unix://{paths.docker_socket}",
        "--pidfile=/var/run/docker.pid",
    ]


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
            dockerd_argv(paths),
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


def _ensure_runsc() -> None:
    """gVisor for `runtime: runsc` profiles: installed when we may; otherwise those profiles fail clearly."""
    if shutil.which("runsc") is not None or not is_root() or not is_debian_like():
        return
    try:
        apt_install(["runsc"], "profiles with runtime: runsc (gVisor) need it")
    except SetupError as exc:
        say(f"warning: {exc.message}; profiles with runtime: runsc will be refused by the engine")


def _registered_runtimes(paths: SetupPaths) -> set[str]:
    proc = subprocess.run(
        ["docker", "-H", f"unix://{paths.docker_socket}", "info", "--format", "{{json .Runtimes}}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    try:
        return set(json.loads(proc.stdout or b"{}"))
    except ValueError:
        return set()


def _ours(paths: SetupPaths) -> int | None:
    """The pid of a dockerd that setup started (it runs with our daemon.json), else None."""
    pid = pid_alive(Path("/var/run/docker.pid"), "dockerd")
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if str(paths.state_dir / "daemon.json").encode() in cmdline else None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)


def ensure_engine(paths: SetupPaths) -> None:
    """Reuse an engine that answers; otherwise install (root on Debian) and start one."""
    _ensure_runsc()
    if unix_http_status(paths.docker_socket) == 200:
        say(f"Docker engine answers on {paths.docker_socket}")
        pid = _ours(paths)
        wanted = json.dumps(daemon_config(shutil.which("runsc")), indent=2) + "\n"
        config = paths.state_dir / "daemon.json"
        if pid is not None and config.exists() and config.read_text() != wanted:
            say("restarting our dockerd: its daemon.json changed")
            _stop(pid)
            _start_dockerd(paths)
            return
        if pid is not None and _cmdline(pid) != dockerd_argv(paths):
            say("restarting our dockerd: its command line changed")
            _stop(pid)
            _start_dockerd(paths)
            return
        if shutil.which("runsc") is None or "runsc" in _registered_runtimes(paths):
            return
        if pid is None:
            say(
                "warning: runsc is installed but the running engine does not register it; add it to "
                'daemon.json ("runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": '
                '["--network=none", "--oci-seccomp"]}}) and restart dockerd, or runsc profiles will fail'
            )
            return
        say("restarting our dockerd so that it registers runsc")
        _stop(pid)
    _start_dockerd(paths)
