"""Fakes for the fleet's unit tests: one small in-memory Backend per sandbox host, a clock the test
moves, hosts files written as data, and a FleetBackend over the fakes whose health and inventory run
on that clock."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from audit import AuditLog
from gateway.backend.base import Backend, ContainerInfo, ExecOutcome, ExecRequest, ExecStream, Pumped
from gateway.errors import EngineError, SandboxError, SandboxGone
from gateway.fleet.backend import FleetBackend
from gateway.fleet.health import Health
from gateway.fleet.hosts import HostsFile, HostSpec, parse_hosts
from gateway.fleet.inventory import Inventory

__all__ = ["GOOD_IMAGE", "FakeClock", "HostFake", "Hosts", "hosts_file", "make_fleet"]

#: The image id every fake host holds unless a test says otherwise.
GOOD_IMAGE = "sha256:" + "a" * 64
_ids = itertools.count(1)


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class HostFake:
    """One host's engine: containers in a dict, every call recorded, and failures on demand.

    `failing` makes every call raise EngineError with that message (the host does not answer),
    `fails[method]` only the calls of that method;
    `hooks[method]` runs at the start of that method (after it is recorded), to act in the middle
    of a call."""

    def __init__(self, host: HostSpec) -> None:
        self.spec = host
        self.name = host.name
        self.containers: dict[str, ContainerInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self.failing: str | None = None
        self.fails: dict[str, str] = {}
        self.image_id = GOOD_IMAGE
        self.hooks: dict[str, Callable[[], None]] = {}
        #: The gateway ends of the streams handed out (attach, exec_open), and their far ends.
        self.streams: list[tuple[socket.socket, socket.socket]] = []
        self.closed = False
        self._lock = threading.Lock()

    # -- for the test -----------------------------------------------------------------------------
    def add(self, name: str, *, created: float = 0.0, running: bool = True, cid: str = "") -> str:
        """A container made behind the gateway's back (another replica, before a restart)."""
        cid = cid or f"{self.name}-c{next(_ids)}"
        self.containers[cid] = ContainerInfo(id=cid, name=name, running=running, created=created)
        return cid

    def called(self, method: str) -> list[str]:
        with self._lock:
            return [arg for m, arg in self.calls if m == method]

    def close_streams(self) -> None:
        for ours, theirs in self.streams:
            ours.close()
            theirs.close()

    def _enter(self, method: str, arg: str = "") -> None:
        with self._lock:
            self.calls.append((method, arg))
        hook = self.hooks.get(method)
        if hook is not None:
            hook()
        error = self.fails.get(method, self.failing)
        if error is not None:
            raise EngineError(error)

    def _get(self, container_id: str) -> ContainerInfo:
        found = self.containers.get(container_id)
        if found is None:
            raise SandboxGone(f"the sandbox container is gone ({self.name})")
        return found

    def _stream(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self.streams.append((ours, theirs))
        return ours

    # -- Backend ----------------------------------------------------------------------------------
    def ping(self) -> None:
        self._enter("ping")

    def image_present(self, image: str) -> bool:
        self._enter("image_present", image)
        return self.image_id != ""

    def image_identity(self, image: str) -> tuple[str, frozenset[str]]:
        self._enter("image_identity", image)
        if not self.image_id:
            raise SandboxError(f"the sandbox image {image} is not on the engine", code="image-missing")
        return self.image_id, frozenset({f"repo@{self.name}"})

    def create(self, name: str, body: dict[str, object], needs: Mapping[str, str] | None = None) -> str:
        self._enter("create", name)
        if any(c.name == name for c in self.containers.values()):
            raise SandboxGone("the sandbox container is not running (create a sandbox)")  # 409
        return self.add(name, running=False)

    def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        info = self._get(container_id)
        self.containers[container_id] = ContainerInfo(
            id=info.id, name=info.name, running=True, created=info.created
        )

    def inspect(self, container_id: str) -> ContainerInfo:
        self._enter("inspect", container_id)
        return self._get(container_id)

    def exec_open(self, container_id: str, request: ExecRequest) -> ExecStream:
        self._enter("exec_open", container_id)
        self._get(container_id)
        return ExecStream(container_id, f"exec-{next(_ids)}", self._stream(), None, b"", 0.0)

    def exec_pump(self, stream: ExecStream, request: ExecRequest, on_output: Any = None) -> Pumped:
        self._enter("exec_pump", stream.container_id)
        return Pumped(b"", b"", False)

    def exec_result(self, stream: ExecStream, pumped: Pumped) -> ExecOutcome:
        self._enter("exec_result", stream.container_id)
        return ExecOutcome(0, b"", b"", 0, 0, False, False, 1.0)

    def attach(self, container_id: str) -> tuple[socket.socket, bytes, Any]:
        self._enter("attach", container_id)
        self._get(container_id)
        return self._stream(), b"early", None

    def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        self.containers.pop(container_id, None)  # like DockerBackend: a gone container is fine

    def rename(self, container_id: str, name: str) -> None:
        self._enter("rename", container_id)
        info = self._get(container_id)
        self.containers[container_id] = ContainerInfo(
            id=info.id, name=name, running=info.running, created=info.created
        )

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]:
        self._enter("list", name or "")
        return [c for c in self.containers.values() if name is None or c.name == name]

    def close(self) -> None:
        self.closed = True


def _implements_backend(fake: HostFake) -> Backend:
    """Checked by mypy: the fake has every method of the Backend protocol."""
    return fake


def hosts_file(*hosts: dict[str, Any], **top: Any) -> str:
    """A hosts file (YAML) of these hosts; plain tcp:// on a private network unless `top` says."""
    top.setdefault("insecure_private_network", True)
    return yaml.safe_dump({**top, "hosts": list(hosts)})


def host(name: str, capacity: int = 100, **more: Any) -> dict[str, Any]:
    """One host's entry, at an address of its own."""
    return {"name": name, "address": f"tcp://{name}.internal:2376", "capacity": capacity, **more}


class Hosts:
    """What `connect` made: the live fake of each host, and every fake made (a reload makes more)."""

    def __init__(self) -> None:
        self.by_name: dict[str, HostFake] = {}
        self.made: list[HostFake] = []
        #: connect(name) raises this, when set.
        self.refuse: dict[str, Exception] = {}

    def connect(self, spec: HostSpec, hosts: HostsFile) -> Backend:
        error = self.refuse.get(spec.name)
        if error is not None:
            raise error
        fake = HostFake(spec)
        self.by_name[spec.name] = fake
        self.made.append(fake)
        return fake

    def __getitem__(self, name: str) -> HostFake:
        return self.by_name[name]

    def close_streams(self) -> None:
        for fake in self.made:
            fake.close_streams()


def make_fleet(
    text: str, audit: AuditLog, clock: FakeClock, *, up: bool = True, hosts: Hosts | None = None
) -> tuple[FleetBackend, Hosts]:
    """A FleetBackend over fake hosts whose health and image cache run on `clock`; with `up`, every
    host has answered once (it is placeable)."""
    made = hosts or Hosts()
    parsed = parse_hosts(text)
    fleet = FleetBackend(parsed, made.connect, audit, workers=4)
    fleet.health = Health(parsed.health.down_after_s, clock)
    fleet.health.track(fleet.names())
    fleet.inventory = Inventory(clock)
    if up:
        for name in fleet.names():
            fleet.health.ok(name)
    return fleet, made
