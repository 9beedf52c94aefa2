"""Sandbox hosts for fleet tests: each a private dockerd (`PrivateEngine`) in a network namespace of
its own, with the project's socket proxy on TLS (client certificates required) at the namespace's
address, reached from this (the root) namespace through a veth pair: `sgwh-XXXXXXXXh` here with
10.231.N.1/30, `eth0` in the namespace `sgwh-XXXXXXXX` with 10.231.N.2/30. Nothing else on a test
machine uses 10.231.0.0/16 (the egress network is 10.213.0.0/24, the egress world 198.51.100.0/24).

A host's directory is `ENGINES/sgwh-XXXXXXXX` (named as its namespace), so `clean_stale_engines`
finds its engine too; `clean_stale_hosts` also removes the namespaces and veths a killed run left.
Faults: `kill_engine` and `start_engine` (dockerd crashes and comes back), `cut` and `rejoin` (the
host drops off the network and comes back).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.backend.docker_engine import DockerBackend, tls_config
from gateway.errors import EngineError
from tests.support.engine import ENGINES, PrivateEngine, clean, owner_alive, wait_gone
from tests.support.pki import Pki, make_pki
from tests.support.proxy import PrivateProxy
from tests.support.waiting import eventually

__all__ = ["PORT", "PREFIX", "SandboxHost", "clean_stale_hosts", "fleet_pki"]

#: What hosts' namespaces, directories and veths are called: PREFIX and 8 hex digits (and "h").
PREFIX = "sgwh-"
#: The socket proxy's TLS port on every host (Docker's own TLS port).
PORT = 2376
_NET = "10.231"
_LOCK = Path("/run/lock/sandbox-gateway-fleet-hosts.lock")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One run at a time chooses a host's index (and so its addresses)."""
    ENGINES.mkdir(exist_ok=True)
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _indices_in_use() -> set[int]:
    """Indices of live hosts (of any run) and of addresses in 10.231/16 on this namespace's links."""
    used = set()
    for root in ENGINES.glob(f"{PREFIX}*") if ENGINES.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            if owner_alive(root):
                used.add(int((root / "index").read_text()))
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        address = line.split()[3]
        if address.startswith(f"{_NET}."):
            used.add(int(address.split(".")[2]))
    return used


class SandboxHost:
    """One sandbox host. `SandboxHost(name)` claims a free index N (or the one given, which must be
    free) and makes the host's directory; `start(pki, image)` brings it up; `close()` removes it all
    (idempotent, and safe after any failure, including one in `start`)."""

    def __init__(self, name: str, index: int | None = None) -> None:
        self.name = name
        self.netns = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        self.host_link = f"{self.netns}h"
        with _locked():
            used = _indices_in_use()
            if index is None:
                index = min(set(range(1, 255)) - used)
            if not 1 <= index <= 254 or index in used:
                raise RuntimeError(f"sandbox host index {index} is out of range or in use ({sorted(used)})")
            self.index = index
            self.engine = PrivateEngine(ENGINES / self.netns, netns=self.netns)
            (self.engine.root / "index").write_text(str(index))
        self.proxy: PrivateProxy | None = None
        self.pki: Pki | None = None

    def __repr__(self) -> str:
        return f"SandboxHost({self.name!r}, {self.index}, netns={self.netns!r})"

    @property
    def root(self) -> Path:
        return self.engine.root

    @property
    def ip(self) -> str:
        """The host's address (in its namespace), where its socket proxy listens."""
        return f"{_NET}.{self.index}.2"

    @property
    def peer_ip(self) -> str:
        """The root namespace's end of the veth pair."""
        return f"{_NET}.{self.index}.1"

    @property
    def address(self) -> str:
        """The engine address a gateway is given: tcp://IP:2376."""
        return f"tcp://{self.ip}:{PORT}"

    @property
    def server_cert(self) -> Path:
        return self._pki.server_cert(self.ip)

    @property
    def server_key(self) -> Path:
        return self._pki.server_key(self.ip)

    @property
    def client_ca(self) -> Path:
        return self._pki.ca

    @property
    def _pki(self) -> Pki:
        if self.pki is None:
            raise RuntimeError(f"{self} has not been started")
        return self.pki

    def start(self, pki: Pki, image: str) -> None:
        """Wire the namespace, start dockerd in it, load `image`, start the socket proxy on TLS at
        `address` (allowing sandboxes of `image`), and wait until it answers over TLS from here."""
        self.pki = pki
        self.wire()
        started = time.monotonic()
        self.engine.start()
        engine_up = time.monotonic()
        self.engine.load_image(image)
        loaded = time.monotonic()
        self.proxy = PrivateProxy(
            self.root,
            docker_socket=self.engine.socket,
            extra=pki.server_options(self.ip),
            image=image,
            tcp_port=PORT,
            host=self.ip,
            prefix=("nsenter", f"--net=/run/netns/{self.netns}"),
        )
        self.proxy.start()
        backend = self.backend()
        try:
            eventually(
                lambda: backend.image_present(image),
                timeout_s=10,
                retry_on=(EngineError,),
                message=f"{self} did not answer over TLS with {image}",
            )
        finally:
            backend.close()
        print(
            f"{self}: dockerd up in {engine_up - started:.1f} s, image in {loaded - engine_up:.1f} s, "
            f"proxy answering over TLS in {time.monotonic() - loaded:.1f} s"
        )

    def wire(self) -> None:
        """Make the namespace and the veth pair, with the addresses, and bring the links up."""
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("addr", "add", f"{self.peer_ip}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.ip}/30", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def backend(
        self, *, cert: Path | None = None, key: Path | None = None, timeout_s: float = 5
    ) -> DockerBackend:
        """A DockerBackend on `address`, with the gateway's client pair unless told another."""
        tls = tls_config(str(self._pki.ca), str(cert or self._pki.cert), str(key or self._pki.key))
        return DockerBackend(self.address, tls=tls, timeout_s=timeout_s)

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI on this host's own engine socket (checks only; not through the proxy)."""
        return self.engine.docker(*args, **kwargs)

    def kill_engine(self) -> None:
        """SIGKILL dockerd alone (its containerd and containers run on): the proxy answers 502."""
        self.engine.kill()

    def start_engine(self) -> None:
        """Start dockerd again on the same data root and wait until it answers (if it is not running)."""
        if self.engine.process is None or self.engine.process.poll() is not None:
            self.engine.start()

    def cut(self) -> None:
        """Take the host off the network: packets to `ip` are dropped, so connections hang (until
        the client's timeout) rather than being refused. The namespace's end of the veth goes down,
        not this end: with this end down the route to 10.231.N.0/30 goes, and the packets follow
        the default route instead (where, on the machine this was written on, something accepted
        every TCP connection, so the host seemed to be still there)."""
        _ip("-n", self.netns, "link", "set", "eth0", "down")

    def rejoin(self) -> None:
        """Bring the host back and wait until its proxy accepts connections from here."""
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        proxy = self.proxy
        if proxy is not None:
            eventually(proxy.listening, timeout_s=30, message=f"{self} did not come back")

    def close(self, logs: Path | None = None) -> None:
        """Stop the proxy, remove the containers, stop dockerd and its containerd, end anything left
        in the namespace, delete the veth pair and the namespace, and remove the directory (its logs
        copied to `logs` first, when given). Idempotent; every step is tried, the first error raised."""
        if logs is not None:
            for log in ("dockerd.log", "socket-proxy.log"):
                with contextlib.suppress(OSError):
                    logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(self.root / log, logs / f"{self.name}-{log}")
        errors: list[BaseException] = []
        for step in (self._stop_proxy, self._remove_containers, self._stop_engine, self.engine.kill):
            try:
                step()
            except Exception as exc:  # every step is tried; the first error is raised
                errors.append(exc)
        try:
            _remove_network(self.netns)
        finally:
            clean(self.root)
        if errors:
            raise errors[0]

    def _stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    def _remove_containers(self) -> None:
        if self.engine.answers() and (ids := self.engine.containers()):
            self.engine.docker("rm", "-f", *ids)

    def _stop_engine(self) -> None:
        if self.engine.process is not None:
            self.engine.stop(containerd_too=True)


def fleet_pki(tmp: Path, hosts: Sequence[SandboxHost]) -> Pki:
    """In `tmp`: a CA, a server certificate for each host's address, the gateway's client pair, and
    a client pair of another CA."""
    return make_pki(tmp, [host.ip for host in hosts])


def _remove_network(netns: str) -> None:
    """End every process in `netns`, delete it and its veth pair (the root namespace's end too)."""
    for pid in map(int, _ip("netns", "pids", netns, check=False).stdout.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # a child of this process (a dockerd or proxy it started) is reaped
        except ChildProcessError:
            wait_gone(pid, 10)
    _ip("netns", "del", netns, check=False)
    _ip("link", "del", f"{netns}h", check=False)


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def clean_stale_hosts() -> None:
    """Remove what killed runs left: hosts whose owner (the test process) is gone, with their engines,
    proxies and containers, and namespaces and veths named like a host's that no live host owns."""
    with _locked():
        for root in ENGINES.glob(f"{PREFIX}*"):
            if root.is_dir() and not owner_alive(root):
                _remove_network(root.name)
                clean(root)
        for netns in _namespaces():
            if netns.startswith(PREFIX) and not (ENGINES / netns).is_dir():
                _remove_network(netns)
        for line in _ip("-o", "link", "show").stdout.splitlines():
            link = line.split(":")[1].strip().split("@")[0]
            if link.startswith(PREFIX) and not (ENGINES / link.removesuffix("h")).is_dir():
                _ip("link", "del", link, check=False)
