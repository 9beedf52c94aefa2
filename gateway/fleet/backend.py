"""FleetBackend: the broker's Backend over every host of the hosts file.

A new sandbox is placed on a host (`placement`, recorded as `sandbox.place`); later calls about it go
to the host it is on, known from the create or a listing, else asked of the hosts. Listings ask, in
parallel, every host that answers, and tag each row with its host. Calls to a down host fail at once
(`SandboxGone`), removals there wait until it is back; the monitor records host state changes."""

from __future__ import annotations

import builtins
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from audit import AuditLog
from gateway.backend.base import (
    Backend,
    ContainerInfo,
    ExecOutcome,
    ExecRequest,
    ExecStream,
    OutputCallback,
    Pumped,
)
from gateway.errors import EngineError, SandboxError, SandboxGone, SandboxUnusable
from gateway.fleet.answers import NoHostAvailable, agreed_identity, no_host_answers, why_none
from gateway.fleet.health import Health
from gateway.fleet.hosts import HostsFile, HostSpec
from gateway.fleet.inventory import IMAGE_TTL_S, Inventory, Streams
from gateway.fleet.placement import Load, bounded, rank

__all__ = ["Connect", "FleetBackend", "NoHostAvailable"]

#: Makes the Backend of one host (a DockerBackend over TLS, in the gateway).
Connect = Callable[[HostSpec, HostsFile], Backend]


class FleetBackend:
    """Backend over the hosts of a hosts file; blocking like every Backend (call it off the loop)."""

    def __init__(self, hosts: HostsFile, connect: Connect, audit: AuditLog, *, workers: int = 16) -> None:
        self.audit = audit
        self._connect = connect
        self._lock = threading.Lock()
        self._engines: dict[str, Backend] = {}
        self._retired: list[Backend] = []
        self.hosts = hosts
        self.health = Health(hosts.health.down_after_s)
        self.inventory = Inventory()
        self.streams = Streams()
        self._placing = threading.Lock()
        self._present: dict[str, tuple[bool, float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet")
        self.configure(hosts)

    # -- the hosts --------------------------------------------------------------------------------
    def configure(self, hosts: HostsFile) -> None:
        """Use `hosts` from now on (start-up, SIGHUP). A host whose address or TLS changed gets a new
        connection; a host no longer listed is treated as down."""
        with self._lock:
            old, engines = self.hosts, {}
            for host in hosts.hosts:
                before = old.named(host.name)
                same = before is not None and (before.address, old.tls_of(before)) == (
                    host.address,
                    hosts.tls_of(host),
                )
                engine = self._engines.get(host.name) if same else None
                engines[host.name] = engine or self._connect(host, hosts)
            self._retired += [e for n, e in self._engines.items() if engines.get(n) is not e]
            self.hosts, self._engines = hosts, engines  # only now: a connect that failed changes nothing
            self.health.down_after_s = hosts.health.down_after_s
            self.health.track([h.name for h in hosts.hosts])

    def engine(self, host: str) -> Backend:
        with self._lock:
            engine = self._engines.get(host)
        if engine is None:
            raise SandboxGone(f"sandbox host {host} is no longer in the hosts file", code="host-removed")
        return engine

    def names(self) -> list[str]:
        return [h.name for h in self.hosts.hosts]

    @contextmanager
    def _on(self, host: str) -> Iterator[Backend]:
        """The host's engine; a failure to reach it counts against its health."""
        if self.health.is_down(host):
            raise SandboxGone(f"sandbox host {host} is down", code="host-down")
        engine = self.engine(host)
        try:
            yield engine
        except EngineError as exc:
            if not isinstance(exc, SandboxUnusable):
                self.health.failed(host, exc.message, probe=False)
            raise

    def _host_of(self, container_id: str) -> str:
        """The host the container is on; SandboxGone with `code` sandbox-gone when every host said it
        has none, host-unknown when some could not say."""
        host = self.inventory.host_of(container_id)
        if host is not None:
            return host
        unsure = False
        for name in self.names():  # not seen yet (another replica made it): ask the hosts
            if not self.health.placeable(name):
                unsure = True
                continue
            try:
                with self._on(name) as engine:
                    info = engine.inspect(container_id)
            except SandboxGone as exc:
                unsure |= exc.code != "sandbox-gone"
                continue
            except (SandboxError, EngineError):
                unsure = True
                continue
            self.inventory.seen(name, [info])
            return name
        code = "host-unknown" if unsure else "sandbox-gone"
        raise SandboxGone("the sandbox container is on no host that answers", code=code)

    # -- Backend ----------------------------------------------------------------------------------
    def ping(self) -> None:
        """Fine while some host answered its last probe (the monitor's); no network call here, so a
        readiness check never waits on a host that stopped answering."""
        if not any(self.health.placeable(name) for name in self.names()):
            raise EngineError(no_host_answers(self.health.all()))

    def image_present(self, image: str) -> bool:
        """Whether a host that answers has it (asked every IMAGE_TTL_S at most: readiness asks often)."""
        now, known = time.monotonic(), self._present.get(image)
        if known is None or now - known[1] > IMAGE_TTL_S:
            found = any(r is True for _, r in self.each(lambda engine: engine.image_present(image)))
            self._present[image] = known = (found, now)
        return known[0]

    def image_identity(self, image: str) -> tuple[str, frozenset[str]]:
        """The image as the hosts that answer and have it agree on it; hosts with another build of it
        are not given its sandboxes (placement checks each host's own identity)."""
        found = [
            result
            for _, result in self.each(lambda engine: engine.image_identity(image))
            if isinstance(result, tuple)
        ]
        if not found:
            raise SandboxError(f"the sandbox image {image} is on no host that answers", code="image-missing")
        return agreed_identity(found)

    def create(self, name: str, body: dict[str, object], needs: Mapping[str, str] | None = None) -> str:
        """Create on the best host for `name` that has room, the image and the labels `needs`; when
        that host cannot be reached, on the next best, once. The host is counted from the moment it is
        chosen, so creations made at once see each other."""
        eligible = self._eligible(str(body.get("Image", "")), dict(needs or {}))
        last: EngineError | None = None
        for attempt in range(2):
            with self._placing:
                loads = [Load(h.name, self.inventory.count(h.name), h.capacity) for h in eligible]
                ranked = rank(name, bounded(loads))
                if not ranked:
                    break
                host = ranked[0]
                self.inventory.reserve(host)
            eligible = [h for h in eligible if h.name != host]
            try:
                with self._on(host) as engine:
                    container_id = engine.create(name, body)
                self.inventory.placed(host, container_id, name)
            except SandboxUnusable:
                raise
            except EngineError as exc:  # unreachable: the next best host, once
                last = exc
                continue
            finally:
                self.inventory.unreserve(host)
            free = self.free(host)
            self.audit.emit(
                "sandbox.place",
                container_id=container_id,
                host=host,
                rank=attempt,
                candidates=len(ranked),
                free=free,
            )
            return container_id
        raise last or NoHostAvailable(why_none(needs), code="no-host-available")

    def _eligible(self, image_id: str, needs: dict[str, str]) -> list[HostSpec]:
        """Hosts that may take it: answering, not draining, with the labels and the image."""
        return [
            host
            for host in self.hosts.hosts
            if not host.drain
            and host.satisfies(needs)
            and self.health.placeable(host.name)
            and self.inventory.has_image(host.name, image_id, self._image_id_on)
        ]

    def _image_id_on(self, host: str, image: str) -> str | None:
        """The host's build of `image`, None when it has none (a host that fails to say raises)."""
        with self._on(host) as engine:
            try:
                return engine.image_identity(image)[0]
            except SandboxError:
                return None

    def free(self, host: str) -> int:
        spec = self.hosts.named(host)
        return 0 if spec is None else spec.capacity - self.inventory.count(host)

    def start(self, container_id: str) -> None:
        with self._on(self._host_of(container_id)) as engine:
            engine.start(container_id)

    def inspect(self, container_id: str) -> ContainerInfo:
        host = self._host_of(container_id)
        with self._on(host) as engine:
            return dataclasses.replace(engine.inspect(container_id), host=host)

    def exec_open(self, container_id: str, request: ExecRequest) -> ExecStream:
        host = self._host_of(container_id)
        with self._on(host) as engine:
            stream = engine.exec_open(container_id, request)
        self._hold(host, stream.sock)
        return stream

    def exec_pump(
        self, stream: ExecStream, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> Pumped:
        return self.engine(self._host_of(stream.container_id)).exec_pump(stream, request, on_output)

    def exec_result(self, stream: ExecStream, pumped: Pumped) -> ExecOutcome:
        with self._on(self._host_of(stream.container_id)) as engine:
            return engine.exec_result(stream, pumped)

    def attach(self, container_id: str) -> tuple[socket.socket, bytes, Any]:
        host = self._host_of(container_id)
        with self._on(host) as engine:
            sock, early, raw = engine.attach(container_id)
        self._hold(host, sock)
        return sock, early, raw

    def remove(self, container_id: str) -> None:
        try:
            host = self._host_of(container_id)
        except SandboxGone as exc:  # like DockerBackend: gone already, once every host said it has none
            if exc.code == "sandbox-gone":
                return
            raise
        if self.health.is_down(host):
            raise EngineError(f"sandbox host {host} is down; the sandbox is removed when it is back")
        with self._on(host) as engine:
            engine.remove(container_id)
        self.inventory.gone(container_id)

    def rename(self, container_id: str, name: str) -> None:
        with self._on(self._host_of(container_id)) as engine:
            engine.rename(container_id, name)
        self.inventory.renamed(container_id, name)

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]:
        """The rows of every host that answers (tagged with it); the others' sandboxes are unusable now."""
        rows: list[ContainerInfo] = []
        started = self.inventory.now()
        for host, result in self.each(lambda engine: engine.list(labels, name)):
            if isinstance(result, list):
                found = [dataclasses.replace(row, host=host) for row in result]
                self.inventory.seen(host, found, complete=name is None, since=started)
                rows += found
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for engine in [*self._engines.values(), *self._retired]:
            engine.close()

    # -- for the monitor --------------------------------------------------------------------------
    def each(self, fn: Callable[[Backend], Any]) -> builtins.list[tuple[str, Any]]:
        """fn(engine) in parallel on every host that answered its last probes (one that stopped
        answering is not waited on): (host, result or the EngineError/SandboxError it raised)."""

        def one(host: str) -> Any:
            try:
                with self._on(host) as engine:
                    return fn(engine)
            except (EngineError, SandboxError) as exc:
                return exc

        names = [n for n in self.names() if self.health.placeable(n)]
        return list(zip(names, self._pool.map(one, names), strict=True))

    def _hold(self, host: str, sock: socket.socket) -> None:
        self.streams.hold(host, sock)
        if self.health.is_down(host):  # it went down while this stream opened: cut it as the rest
            self.streams.cut(host)
