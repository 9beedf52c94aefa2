"""The engine `make setup` starts, read back from the running daemon.

One test per item of docker-bench-security's section 2 ("Docker daemon configuration") that applies
(SECURITY.md lists those that do not, and why), plus gVisor's registration and what a sandbox under
it can reach. The daemon is inspected through its own socket: `docker info`, its process's command
line and daemon.json, and probe containers that are not sandboxes (a small TCP server on the
default bridge, with a published port). Sandboxes are made by the Broker through the socket proxy,
as in every other integration test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.calls.service import ExecutionService
from gateway.sandboxes.broker import Broker
from gateway.setup.engine import DEFAULT_ULIMITS, RUNSC_ARGS, daemon_config, dockerd_argv
from gateway.setup.state import SetupPaths
from policy import Principal, load_policy
from policy.engine import PolicyEngine
from tests.conftest import IMAGE
from tests.support import eventually
from tests.support.net import free_port

PATHS = SetupPaths.from_env()
PROBE_LABEL = "sandbox-gateway.engine-probe"
#: Answers every connection with one line, then closes it.
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'probe\\n'); c.close()\n"
)


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The docker CLI on the engine's own socket: this module inspects the daemon itself."""
    return subprocess.run(
        ["docker", "-H", f"unix://{PATHS.docker_socket}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass(frozen=True)
class Daemon:
    pid: int
    argv: list[str]
    config: dict[str, Any]
    info: dict[str, Any]


@pytest.fixture(scope="module")
def daemon() -> Daemon:
    """The running dockerd: fails (never skips) when it is not the one setup started."""
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except (OSError, ValueError) as exc:
        pytest.fail(f"no dockerd runs here ({exc}); run `make setup` first")
    if argv[:2] != ["dockerd", f"--config-file={PATHS.state_dir / 'daemon.json'}"]:
        pytest.fail(f"the running dockerd was not started by `make setup` (argv {argv})")
    info = json.loads(docker("info", "--format", "{{json .}}").stdout)
    return Daemon(pid, argv, json.loads((PATHS.state_dir / "daemon.json").read_text()), info)


@dataclass(frozen=True)
class Probe:
    """A container that is not a sandbox: default bridge, no options of its own, a published port."""

    id: str
    pid: int
    ip: str
    port: int


def _iptables(*args: str) -> str:
    return subprocess.run(["iptables", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def _read_line(host: str, port: int, timeout: float = 3) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        return conn.recv(64)


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    name = f"sgw-engine-probe-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        docker("run", "-d", "--name", name, "--label", PROBE_LABEL, "-p", f"127.0.0.1:{port}:8080", IMAGE,
               "python3", "-c", SERVER)  # fmt: skip
        state = json.loads(docker("inspect", name).stdout)[0]
        ip = state["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]

        def answers() -> bool:
            assert _read_line(ip, 8080, timeout=1) == b"probe\n"
            return True

        eventually(
            answers,
            timeout_s=20,
            retry_on=(OSError,),
            message="the probe server never answered from the host",
        )
        yield Probe(state["Id"], state["State"]["Pid"], ip, port)
    finally:
        docker("rm", "-f", name, check=False)


# -- the daemon runs setup's configuration, nothing else ------------------------------------------


def test_the_engine_runs_setups_daemon_json_and_no_other_flag(daemon: Daemon) -> None:
    assert daemon.config == daemon_config(shutil.which("runsc"))
    assert daemon.argv == dockerd_argv(PATHS)


# -- docker-bench-security section 2, item by item -------------------------------------------------


def test_2_2_no_traffic_between_containers_on_the_default_bridge(daemon: Daemon, probe: Probe) -> None:
    assert daemon.config["icc"] is False
    options = json.loads(docker("network", "inspect", "bridge", "--format", "{{json .Options}}").stdout)
    assert options["com.docker.network.bridge.enable_icc"] == "false"
    # The host reaches the probe (the fixture checked), another container on the bridge does not.
    connect = "import socket, sys; print(socket.create_connection((sys.argv[1], 8080), timeout=3).recv(64))"
    client = docker("run", "--rm", "--label", PROBE_LABEL, IMAGE, "python3", "-c", connect, probe.ip,
                    check=False)  # fmt: skip
    assert client.returncode != 0 and "timed out" in client.stderr, (client.stdout, client.stderr)
    assert _read_line(probe.ip, 8080) == b"probe\n", "the server still answers the host"


def test_2_3_logging_level_is_info(daemon: Daemon) -> None:
    assert daemon.config["log-level"] == "info" and daemon.info["Debug"] is False
    assert not [arg for arg in daemon.argv if arg.startswith(("-D", "--debug", "-l", "--log-level"))]


def test_2_4_the_engine_manages_iptables(daemon: Daemon, probe: Probe) -> None:
    assert "iptables" not in daemon.config
    rules = _iptables("-S", "FORWARD")
    assert "-A FORWARD -i docker0 -o docker0 -j DROP" in rules.splitlines(), rules
    assert f"--dport {probe.port} " in _iptables("-t", "nat", "-S", "DOCKER"), "the published port is DNAT'd"


def test_2_5_no_insecure_registries(daemon: Daemon) -> None:
    assert "insecure-registries" not in daemon.config
    registries = daemon.info["RegistryConfig"]
    # 127.0.0.0/8 is the engine's built-in default and cannot be removed; nothing else is insecure.
    assert registries["InsecureRegistryCIDRs"] == ["127.0.0.0/8"]
    assert all(index["Secure"] for index in registries["IndexConfigs"].values()), registries


def test_2_6_storage_driver_is_overlay2_not_aufs(daemon: Daemon) -> None:
    assert daemon.info["Driver"] == "overlay2"


def _published_ports() -> set[int]:
    ids = docker("ps", "-q").stdout.split()
    if not ids:
        return set()
    return {
        int(binding["HostPort"])
        for container in json.loads(docker("inspect", *ids, check=False).stdout or "[]")
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values()
        for binding in bindings or []
    }


def _listening_ports_of(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket descriptors found in /proc/net/tcp*)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().name
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    assert sockets, "the process's descriptors were read"
    return {
        int(fields[1].rpartition(":")[2], 16)
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:])
        if fields[3] == "0A" and fields[9] in sockets  # TCP_LISTEN
    }


def test_2_7_the_engine_listens_on_its_unix_socket_only(daemon: Daemon, probe: Probe) -> None:
    assert "hosts" not in daemon.config and "tls" not in daemon.config
    hosts = [arg for arg in daemon.argv if arg.startswith(("-H", "--host"))]
    assert hosts == [f"--host=unix://{PATHS.docker_socket}"]
    # dockerd holds a listening socket for each published port (to keep it reserved, the traffic
    # itself goes through iptables); nothing else, so no API on TCP.
    published = _published_ports()
    held = _listening_ports_of(daemon.pid)
    published |= _published_ports()
    assert probe.port in held, "the probe's published port is reserved by dockerd"
    assert held <= published, f"dockerd listens on TCP ports no container publishes: {held - published}"


def test_2_8_default_ulimits_apply_to_containers_without_their_own(daemon: Daemon, probe: Probe) -> None:
    assert daemon.config["default-ulimits"] == DEFAULT_ULIMITS
    limits = Path(f"/proc/{probe.pid}/limits").read_text()
    [core] = [line.split()[4:6] for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core == ["0", "0"], limits


def test_2_10_containers_stay_in_the_default_cgroup_parent(daemon: Daemon, probe: Probe) -> None:
    assert "cgroup-parent" not in daemon.config
    cgroups = Path(f"/proc/{probe.pid}/cgroup").read_text()
    assert f"/docker/{probe.id}" in cgroups, cgroups


def test_2_11_no_base_device_size(daemon: Daemon) -> None:
    assert "storage-opts" not in daemon.config
    assert not [item for item in daemon.info["DriverStatus"] if "Base Device Size" in item[0]]


def test_2_14_every_container_gets_no_new_privileges(daemon: Daemon, probe: Probe) -> None:
    assert daemon.config["no-new-privileges"] is True
    asked = json.loads(docker("inspect", probe.id).stdout)[0]["HostConfig"]["SecurityOpt"]
    assert not asked, "the probe asks for nothing itself"
    status = Path(f"/proc/{probe.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status.splitlines(), "the daemon's default applies"


def test_2_15_live_restore_is_enabled(daemon: Daemon) -> None:
    # That sandboxes survive an engine restart is shown on a private engine with this same
    # daemon.json: tests/e2e/test_engine_restart.py.
    assert daemon.config["live-restore"] is True and daemon.info["LiveRestoreEnabled"] is True


def test_2_16_published_ports_need_no_userland_proxy(daemon: Daemon, probe: Probe) -> None:
    assert daemon.config["userland-proxy"] is False
    proxies = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "docker-proxy":
                proxies.append((proc / "cmdline").read_bytes())
    assert proxies == [], "no docker-proxy process runs"
    assert _read_line("127.0.0.1", probe.port) == b"probe\n", "the published port answers on loopback"


def test_2_17_the_default_seccomp_profile_is_applied(daemon: Daemon) -> None:
    assert "name=seccomp,profile=default" in daemon.info["SecurityOptions"]
    assert "seccomp-profile" not in daemon.config


def test_2_18_no_experimental_features(daemon: Daemon) -> None:
    assert daemon.info["ExperimentalBuild"] is False and "experimental" not in daemon.config


# -- gVisor -----------------------------------------------------------------------------------------


def test_gvisor_is_registered_with_its_own_network_off_and_seccomp_inside(daemon: Daemon) -> None:
    runsc = shutil.which("runsc")
    assert runsc is not None, "setup installs runsc"
    assert daemon.info["Runtimes"]["runsc"] == {"path": runsc, "runtimeArgs": list(RUNSC_ARGS)}


#: What sandbox code tries with the devices gVisor provides, printed as JSON (errno names).
DEVICE_PROBE = r"""
import ctypes, errno, fcntl, json, os, stat, struct
libc = ctypes.CDLL(None, use_errno=True)
def outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def check(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), "")
out, fds = {}, {}
for name, path in (("fuse", "/dev/fuse"), ("tun", "/dev/net/tun")):
    out[name + "_open"] = outcome(lambda: fds.__setitem__(name, os.open(path, os.O_RDWR)))
if "tun" in fds:  # TUNSETIFF: make a tun interface
    ifreq = struct.pack("16sH22x", b"sgw0", 0x0001 | 0x1000)
    out["tun_setiff"] = outcome(lambda: fcntl.ioctl(fds["tun"], 0x400454CA, ifreq))
if "fuse" in fds:  # serve a FUSE file system: mount it, or read requests from the device
    opts = "fd=%d,rootmode=40000,user_id=0,group_id=0" % fds["fuse"]
    out["fuse_mount"] = outcome(lambda: check(libc.mount(b"x", b"/workspace", b"fuse", 0, opts.encode())))
    out["fuse_read"] = outcome(lambda: os.read(fds["fuse"], 8192))
for name, major, minor in (("tun", 10, 200), ("fuse", 10, 229), ("mem", 1, 1)):
    node = "/workspace/" + name
    out["mknod_" + name] = outcome(lambda: os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor)))
out["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
mounts = [line.split() for line in open("/proc/mounts")]
out["tmpfs"] = {f[1]: f[3] for f in mounts if f[1] in ("/tmp", "/workspace")}
print(json.dumps(out))
"""


@pytest.mark.anyio
@pytest.mark.parametrize("profile", ["default", "strict"])
async def test_sandbox_code_cannot_use_fuse_tun_or_make_device_nodes(broker: Broker, profile: str) -> None:
    """Under runc the devices are absent. Under gVisor (`strict`) runsc 20221219 offers /dev/fuse and
    /dev/net/tun to every sandbox and has no option to remove them, and ignores nosuid/nodev on
    tmpfs: each is shown to be unusable instead (SECURITY.md, "The engine `make setup` starts")."""
    service = ExecutionService(PolicyEngine(load_policy()), broker, broker.audit)
    principal = Principal(f"devices-{profile}", profile=profile)
    result = await service.execute(principal, "execute_python", DEVICE_PROBE)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    print(f"{profile}: {out}")
    assert {out[f"mknod_{name}"] for name in ("tun", "fuse", "mem")} == {"EPERM"}, out
    assert out["no_new_privs"] == 1, out
    if profile == "default":  # runc: no such devices, and the tmpfs mounts carry nosuid,nodev
        assert (out["fuse_open"], out["tun_open"]) == ("ENOENT", "ENOENT"), out
        for options in out["tmpfs"].values():
            assert {"nosuid", "nodev"} <= set(options.split(",")), out
        return
    # gVisor: a tun interface needs CAP_NET_ADMIN; FUSE needs a mount (CAP_SYS_ADMIN, and mount is
    # outside the seccomp allow-list) before its device says anything.
    assert out.get("tun_setiff", "EPERM") == "EPERM", out
    assert out.get("fuse_mount", "EPERM") == "EPERM" and out.get("fuse_read", "EPERM") == "EPERM", out
    assert set(out["tmpfs"]) == {"/tmp", "/workspace"}, out
