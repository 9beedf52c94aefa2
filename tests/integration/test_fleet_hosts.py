"""The fleet harness itself (`tests.support.fleet_hosts`): sandbox hosts, each a private dockerd in a
network namespace of its own behind the project's socket proxy on TLS at the host's address, with
the faults a fleet test needs (an engine killed and restarted, a host cut off the network and back)
and a clean-up that leaves nothing behind, even after a killed run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit import AuditLog, MemorySink
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.errors import EngineError
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.conftest import IMAGE, policy_with_exec_path
from tests.support import eventually
from tests.support.engine import ENGINES, ended, processes_mentioning
from tests.support.fleet_hosts import PREFIX, SandboxHost, clean_stale_hosts, fleet_pki
from tests.support.pki import Pki

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Fleet:
    hosts: list[SandboxHost]
    pki: Pki


def start_hosts(hosts: list[SandboxHost], names: list[str], tmp: Path) -> Pki:
    """Hosts named `names`, each added to `hosts` as soon as it is made (so that the caller closes
    whatever was made when a later step fails), then started in parallel; their PKI in `tmp`."""
    for name in names:
        hosts.append(SandboxHost(name))
    pki = fleet_pki(tmp, hosts)
    with ThreadPoolExecutor(len(hosts)) as pool:
        for started in [pool.submit(host.start, pki, IMAGE) for host in hosts]:
            started.result()
    return pki


def close_all(hosts: list[SandboxHost], logs: Path | None = None) -> None:
    """Close every host, even when closing one fails; then raise the first failure."""
    errors = []
    for host in hosts:
        try:
            host.close(logs)
        except Exception as exc:  # every host is closed; the first error is raised
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two sandbox hosts, a and b. Afterwards nothing of them is left (see `assert_gone`)."""
    clean_stale_hosts()
    hosts: list[SandboxHost] = []
    started = time.monotonic()
    try:
        pki = start_hosts(hosts, ["a", "b"], tmp_path_factory.mktemp("fleet-pki"))
        print(f"\n{len(hosts)} sandbox hosts up in {time.monotonic() - started:.1f} s")
        yield Fleet(hosts, pki)
    finally:
        namespaces = {host: netns_mark(host.netns) for host in hosts}
        close_all(hosts, tmp_path_factory.mktemp("fleet-logs"))
    for host, mark in namespaces.items():
        assert_gone(host.netns, host.root, mark)


@dataclass(frozen=True)
class NetnsMark:
    """A host's network namespace, noted just before it is closed: its inode, and the time then
    (in clock ticks since boot). Namespace inodes are reused once free, so a process later seen in a
    namespace with that inode is one of the host's only if it started before the mark."""

    inode: int
    ticks: int


def _ticks_since_boot() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _started_ticks(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime


def netns_mark(netns: str) -> NetnsMark | None:
    try:
        inode = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None
    return NetnsMark(inode, _ticks_since_boot())


def assert_gone(netns: str, root: Path, mark: NetnsMark | None) -> None:
    """No namespace, veth, directory, mount or process of the host of `netns` and `root` is left;
    nothing that ran before `mark` runs in the namespace it noted."""
    for listing in (["netns", "list"], ["-o", "link", "show"]):
        assert (
            netns not in subprocess.run(["ip", *listing], capture_output=True, text=True, check=True).stdout
        )
    assert not root.exists()
    assert f"{root}/" not in Path("/proc/self/mounts").read_text()
    assert processes_mentioning(str(root)) == []
    if mark is not None:
        inside = []
        for proc in Path("/proc").iterdir():
            try:
                if (
                    proc.name.isdigit()
                    and os.readlink(proc / "ns" / "net") == f"net:[{mark.inode}]"
                    and _started_ticks(proc.name) <= mark.ticks
                ):
                    inside.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
        assert inside == [], f"processes still in {netns}"


def in_cgroup_of(container: str) -> list[int]:
    """The processes in the cgroup of `container` (a full id), but for zombies (ended, not reaped yet)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and container in (proc / "cgroup").read_text()
                and not ended(int(proc.name))
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def ping_fails_within(
    host: SandboxHost, seconds: float, cert: Path | None = None, key: Path | None = None
) -> EngineError:
    """A ping of `host` (with the gateway's client pair, or `cert` and `key`) fails within `seconds`."""
    engine = host.backend(cert=cert, key=key)
    started = time.monotonic()
    try:
        with pytest.raises(EngineError) as failed:
            engine.ping()
    finally:
        engine.close()
    assert time.monotonic() - started < seconds
    return failed.value


def answers(host: SandboxHost) -> bool:
    engine = host.backend()
    try:
        engine.ping()
        return engine.image_present(IMAGE)
    finally:
        engine.close()


def test_each_host_answers_over_tls_with_the_image(fleet: Fleet) -> None:
    assert [host.address for host in fleet.hosts] == [f"tcp://{host.ip}:2376" for host in fleet.hosts]
    for host in fleet.hosts:
        assert answers(host), host
        assert host.server_cert.is_file() and host.server_key.is_file() and host.client_ca == fleet.pki.ca


@pytest.mark.anyio
async def test_the_hosts_are_distinct_engines(fleet: Fleet) -> None:
    """Their own engine IDs; a sandbox made through host a's proxy is on host a only."""
    a, b = fleet.hosts
    ids = {host.docker("info", "--format", "{{.ID}}").stdout.strip() for host in fleet.hosts}
    assert len(ids) == 2, ids
    engine = a.backend(timeout_s=30)
    broker = Broker(engine, AuditLog([MemorySink()]), gateway_id=f"fleet-{uuid.uuid4().hex[:10]}")
    service = ExecutionService(PolicyEngine(policy_with_exec_path("agent")), broker, broker.audit)
    try:
        result = await service.execute(Principal("fleet"), "execute_bash", "echo on host a")
        assert (result.exit_code, result.stdout) == (0, "on host a\n")
        label = f"label=sandbox-gateway.gateway={broker.gateway_id}"
        on_a = a.docker("ps", "-q", "--filter", label).stdout.split()
        assert len(on_a) == 1
        assert b.docker("ps", "-aq", "--filter", label).stdout.split() == []
    finally:
        broker.cleanup_all_sync()
        engine.close()
    assert a.docker("ps", "-aq", "--filter", label).stdout.split() == []


def test_a_cut_host_times_out_and_answers_again_after_rejoin(fleet: Fleet) -> None:
    host, other = fleet.hosts
    engine = host.backend()
    try:
        engine.ping()  # a kept-alive connection, which the cut leaves hanging
        host.cut()
        started = time.monotonic()
        # On the kept-alive connection the request is sent and no answer comes (a read timeout); the
        # backend calls that "the Docker engine failed to ping", without the address.
        with pytest.raises(EngineError):
            engine.ping()
        assert time.monotonic() - started < 8, "the backend's 5 s timeout ended the call"
        # A new connection is never made (a connect timeout).
        assert "cannot reach the Docker engine through" in str(ping_fails_within(host, 8))
        assert answers(other), "the other host is not affected"
    finally:
        host.rejoin()
        engine.close()
    eventually(lambda: answers(host), timeout_s=30, retry_on=(EngineError,))


def test_a_killed_engine_makes_the_proxy_answer_502_until_it_is_started(fleet: Fleet) -> None:
    """SIGKILL of dockerd alone: the proxy answers 502; a container runs on (live-restore), and the
    restarted engine takes it back."""
    host = fleet.hosts[1]
    container = host.docker("run", "-d", "--network", "none", IMAGE).stdout.decode().strip()
    try:
        before = json.loads(host.docker("inspect", container).stdout)[0]["State"]
        host.kill_engine()
        failed = ping_fails_within(host, 8)
        assert "not answering (HTTP 502)" in str(failed), failed
        host.start_engine()
        assert answers(host)
        after = json.loads(host.docker("inspect", container).stdout)[0]["State"]
        assert after["Running"] and after["Pid"] == before["Pid"], (before, after)
    finally:
        host.start_engine()
        host.docker("rm", "-f", container)


def test_a_client_without_a_certificate_of_the_ca_is_refused(fleet: Fleet) -> None:
    """A client pair of another CA, or plain TCP: refused by every host."""
    for host in fleet.hosts:
        ping_fails_within(host, 8, cert=fleet.pki.foreign_cert, key=fleet.pki.foreign_key)
        plain = DockerBackend(host.address, timeout_s=5)
        try:
            with pytest.raises(EngineError, match=f"through {host.address}"):
                plain.ping()
        finally:
            plain.close()


def test_close_after_failures_leaves_nothing_and_may_be_repeated(tmp_path: Path) -> None:
    """A host left in a mess (a running container, dockerd killed, the link cut) is closed whole."""
    hosts: list[SandboxHost] = []
    try:
        start_hosts(hosts, ["mess"], tmp_path)
        [host] = hosts
        container = host.docker("run", "-d", "--network", "none", IMAGE).stdout.decode().strip()
        assert in_cgroup_of(container), "the container runs"
        host.kill_engine()
        host.cut()
        mark = netns_mark(host.netns)
    finally:
        close_all(hosts)
    host.close()
    assert_gone(host.netns, host.root, mark)
    assert in_cgroup_of(container) == [], "the container's processes (in no namespace of the host's) ended"
    never_started = SandboxHost("idle")
    never_started.close()
    never_started.close()
    assert_gone(never_started.netns, never_started.root, None)


def test_what_a_killed_run_left_is_cleaned(tmp_path: Path) -> None:
    """A run killed with a host up (namespace, veth, dockerd) leaves it; the next run removes it."""
    script = (
        "import os, signal\n"
        "from tests.support.fleet_hosts import SandboxHost\n"
        "host = SandboxHost('killed')\n"
        "host.wire()\n"
        "host.engine.start()\n"
        "print(host.netns, host.engine.process.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    netns, dockerd = run.stdout.split()
    assert netns.startswith(PREFIX) and (ENGINES / netns).is_dir() and not ended(int(dockerd))
    mark = netns_mark(netns)
    assert mark is not None
    clean_stale_hosts()
    assert ended(int(dockerd))
    assert_gone(netns, ENGINES / netns, mark)
