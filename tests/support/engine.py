"""A private Docker engine, for tests that stop and start an engine: a second dockerd with its own
data root, exec root, managed containerd, socket, network namespace (so its bridge and iptables rules
are its own; a dockerd without a bridge would delete the host's `docker0`) and setup's daemon.json.
The network namespace is a new one of its own (`unshare --net`) or, given `netns`, a named one
(`ip netns add`) that the caller made and wired. The shared engine other tests use is never touched.

Every process of a private engine names its directory (a random name under ENGINES) on its command
line, which is how `clean` finds what a run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.setup.engine import daemon_config
from gateway.setup.image import ensure_image
from gateway.setup.image_variants import BASE, VARIANTS
from gateway.setup.probe import unix_http_status
from gateway.setup.state import SetupPaths
from tests.support.waiting import EventuallyFailed, eventually

__all__ = [
    "ENGINES",
    "PrivateEngine",
    "clean",
    "clean_stale_engines",
    "ended",
    "owner_alive",
    "processes_mentioning",
    "wait_gone",
]

#: Private engines live here, one directory per run; short, so socket paths stay under 108 bytes.
ENGINES = Path(tempfile.gettempdir()) / "sgw-engines"


def _pid_of(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line mentions `marker`."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker.encode() in cmdline else None


def ended(pid: int) -> bool:
    """Whether process `pid` is gone or a zombie (ended; where pid 1 reaps orphans late, the zombie of
    a killed daemon can stay for many seconds)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` has ended within `timeout_s`."""
    try:
        eventually(lambda: ended(pid), timeout_s=timeout_s)
    except EventuallyFailed:
        return False
    return True


def processes_mentioning(marker: str) -> list[tuple[int, bytes]]:
    """(pid, command line) of every process whose command line names a path under `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if f"{marker}/".encode() in cmdline:
                    found.append((int(proc.name), cmdline))
    return found


class PrivateEngine:
    """A second dockerd, started and stopped at will; everything it owns sits under `root`. It runs in
    a network namespace of its own, or in the named one `netns` (from `ip netns add`)."""

    def __init__(self, root: Path, *, netns: str | None = None) -> None:
        self.root = root
        self.netns = netns
        self.socket = root / "docker.sock"
        self.pid_file = root / "dockerd.pid"
        self.config = root / "daemon.json"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True)
        (root / "owner").write_text(str(os.getpid()))
        config = daemon_config(shutil.which("runsc"))
        # Its own identity (`docker info`'s ID), not the one of /etc/docker/key.json that every engine
        # of this machine would share (dockerd 20.10 takes it from this key; later ones from data-root).
        config["deprecated-key-path"] = str(root / "key.json")
        self.config.write_text(json.dumps(config, indent=2) + "\n")

    @property
    def containerd_pid_file(self) -> Path:
        return self.root / "exec" / "containerd" / "containerd.pid"

    def start(self) -> None:
        """Start dockerd and wait (up to 60 s) until it answers on its socket."""
        # A pid file naming no live daemon of this engine goes, as setup removes stale ones. Above all
        # containerd's: a dockerd killed with SIGKILL takes its containerd along (parent-death
        # signal), and where pid 1 reaps orphans late the dead containerd lingers as a zombie, which
        # the next dockerd takes for a running containerd and waits on until it gives up.
        for pid_file in (self.pid_file, self.containerd_pid_file):
            if _pid_of(pid_file, str(self.root)) is None:
                pid_file.unlink(missing_ok=True)
        # unshare and nsenter exec dockerd (same pid). nsenter, not `ip netns exec`: that one also makes
        # a mount namespace, which would hide dockerd's mounts under `root` from `clean`.
        netns = ["unshare", "--net"] if self.netns is None else ["nsenter", f"--net=/run/netns/{self.netns}"]
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [
                    *netns,
                    "dockerd",
                    "--config-file",
                    str(self.config),
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.pid_file),
                    "--host",
                    f"unix://{self.socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.process = process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"private dockerd exited: {self.log.read_text()[-2000:]}")
            return unix_http_status(self.socket, timeout=1) == 200

        try:
            eventually(answers, timeout_s=60)
        except EventuallyFailed as exc:
            raise RuntimeError(f"private dockerd did not start: {self.log.read_text()[-2000:]}") from exc

    def stop(self, *, containerd_too: bool = False) -> None:
        """SIGTERM, as `systemctl stop docker` does. With live-restore dockerd leaves the containers
        running (their shims outlive containerd too); a containerd that outlives dockerd is stopped
        as well when `containerd_too` (the end of a test's use of the engine)."""
        if self.process is None:
            return
        started = time.monotonic()
        containerd = _pid_of(self.containerd_pid_file, str(self.root))
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.process = None
        if containerd is not None and containerd_too and Path(f"/proc/{containerd}").exists():
            os.kill(containerd, signal.SIGTERM)
            assert wait_gone(containerd, 30), "the private containerd did not stop"
        print(f"private dockerd stopped in {time.monotonic() - started:.1f} s")

    def kill(self) -> None:
        """SIGKILL dockerd alone, as a crash would end it: its containerd and the containers' shims
        run on (live-restore). It is reaped at once, so that its pid file names no live process and
        a `start` may follow."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def answers(self) -> bool:
        """Whether dockerd answers /_ping on its socket now."""
        return self.socket.exists() and unix_http_status(self.socket, timeout=1) == 200

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI on this engine's own socket (test set-up and checks only)."""
        return subprocess.run(
            ["docker", "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            check=True,
            timeout=300,
            **kwargs,
        )

    def load_image(self, image: str) -> None:
        """Copy `image` from the shared engine, so both run exactly what `make setup` built.
        (`docker save | docker load` takes about 3 s; importing setup's cached root filesystem is a
        second faster but would repeat setup's recipe here.) When the shared engine does not answer,
        the image is made here the way setup makes it offline: `import_image`."""
        shared = SetupPaths.from_env().docker_socket
        if unix_http_status(shared, timeout=2) != 200:
            print(f"the shared engine at {shared} does not answer: importing {image} from setup's cache")
            self.import_image(image)
            return
        with subprocess.Popen(
            ["docker", "-H", f"unix://{shared}", "save", image], stdout=subprocess.PIPE
        ) as save:
            self.docker("load", stdin=save.stdout)
        assert save.returncode == 0, f"docker save {image} failed on {shared}"

    def import_image(self, image: str) -> None:
        """Make the base sandbox image `image` as setup does offline (`ensure_image`), from the root
        filesystem setup cached for the current recipe (about 3 s); it carries the recipe's label.
        Its own state directory under `root` only links to setup's cache, which is never written."""
        if image in {variant.image for variant in VARIANTS if variant.extends is not None}:
            raise RuntimeError(f"{image} is built on the base image; only the base one is imported here")
        cached = SetupPaths.from_env().state_dir / "cache" / BASE.rootfs_name
        if not cached.is_file():
            raise RuntimeError(f"no shared engine and no cached root filesystem {cached}: run `make setup`")
        own = SetupPaths(state_dir=self.root / "setup", docker_socket=self.socket, proxy_socket=self.socket)
        (own.state_dir / "cache").mkdir(parents=True, exist_ok=True)
        (own.state_dir / "cache" / BASE.rootfs_name).unlink(missing_ok=True)
        (own.state_dir / "cache" / BASE.rootfs_name).symlink_to(cached)
        try:
            ensure_image(own, image, BASE)
        finally:
            shutil.rmtree(own.state_dir, ignore_errors=True)

    def containers(self) -> list[str]:
        return self.docker("ps", "-aq", "--no-trunc").stdout.decode().split()


def _in_containers(containers: Path) -> list[int]:
    """The processes in the cgroups of the containers an engine keeps under `containers`."""
    ids = [entry.name for entry in containers.glob("*") if len(entry.name) == 64]
    found = []
    for proc in Path("/proc").iterdir() if ids else ():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and any(i in (proc / "cgroup").read_text() for i in ids):
                found.append(int(proc.name))
    return found


def clean(root: Path) -> None:
    """Stop whatever a run left under `root`, unmount what it mounted there, and remove it.

    Every process of a run names its directory (a random name) on its command line: the gateway (its
    tokens and audit log), dockerd, containerd, the container shims and the socket proxy. The gateway goes
    first, dockerd gets SIGTERM so that it stops its containers, anything left gets SIGKILL."""
    marker = str(root)
    for pid, cmdline in processes_mentioning(marker):
        if b"gateway.cli" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid_file in (root / "dockerd.pid", root / "exec" / "containerd" / "containerd.pid"):
        daemon = _pid_of(pid_file, marker)
        if daemon is not None:
            os.kill(daemon, signal.SIGTERM)
            wait_gone(daemon, 30)
    for pid, _ in processes_mentioning(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
    # A container whose shim was killed runs on, reparented: its processes are found by its cgroup.
    for pid in _in_containers(root / "data" / "containers"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{marker}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def clean_stale_engines() -> None:
    """A killed run leaves its directory, pid files and maybe its daemons: clear those whose owner
    is gone. Directories of runs still going (another checkout's `make test`) are left alone."""
    if not ENGINES.is_dir():
        return
    for root in ENGINES.iterdir():
        if not owner_alive(root):
            clean(root)


def owner_alive(root: Path) -> bool:
    """Whether the test run that made `root` (the pid in `root/owner`, a python process) still runs."""
    try:
        owner = int((root / "owner").read_text())
        return owner > 0 and b"python" in Path(f"/proc/{owner}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
