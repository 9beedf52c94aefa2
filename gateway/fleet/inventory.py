"""What the gateway knows is on each host: which container is where (so a call about a sandbox goes
to its host), how many sandboxes each host holds (its free capacity, for placement), and which
build of an image each host has (a sandbox is created from an image id, which every host it may be
placed on must hold)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from gateway.backend.base import ContainerInfo
from gateway.errors import EngineError, GatewayError

__all__ = ["Inventory", "NoHostAvailable"]

#: How long a host's answer about an image is kept (a host loaded with the image is used after this).
IMAGE_TTL_S = 30.0


class NoHostAvailable(EngineError):
    """No host can take a new sandbox: all down, drained, full, or without what the profile needs."""

    code = "no-host-available"


class Inventory:
    """Thread-safe: Backend calls run on worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._host: dict[str, str] = {}  # container id -> host
        self._name: dict[str, str] = {}  # container id -> name
        self._images: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._creating: dict[str, int] = {}  # host -> creates under way there

    def host_of(self, container_id: str) -> str | None:
        with self._lock:
            return self._host.get(container_id)

    def on(self, host: str) -> dict[str, str]:
        """Container id -> name of every sandbox known to be on `host`."""
        with self._lock:
            return {cid: self._name.get(cid, "") for cid, h in self._host.items() if h == host}

    def count(self, host: str) -> int:
        """Sandboxes on `host`, those being created there included."""
        with self._lock:
            return self._count(host)

    def _count(self, host: str) -> int:
        return self._creating.get(host, 0) + sum(1 for h in self._host.values() if h == host)

    @contextmanager
    def reserved(self, host: str, capacity: int) -> Iterator[None]:
        """A place on `host` held while a sandbox is created there (`placed` makes it its own);
        NoHostAvailable when it has no room left."""
        with self._lock:
            if self._count(host) >= capacity:
                raise NoHostAvailable(f"sandbox host {host} is full")
            self._creating[host] = self._creating.get(host, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._creating[host] -= 1

    def placed(self, host: str, container_id: str, name: str) -> None:
        with self._lock:
            self._host[container_id], self._name[container_id] = host, name

    def renamed(self, container_id: str, name: str) -> None:
        with self._lock:
            if container_id in self._host:
                self._name[container_id] = name

    def gone(self, container_id: str) -> None:
        with self._lock:
            self._host.pop(container_id, None)
            self._name.pop(container_id, None)

    def seen(self, host: str, rows: Iterable[ContainerInfo], *, complete: bool = False) -> None:
        """Rows a host listed; `complete` when it was every sandbox of the gateway on it, so that
        those it no longer lists are forgotten."""
        rows = list(rows)
        with self._lock:
            if complete:
                for cid in [c for c, h in self._host.items() if h == host]:
                    self._host.pop(cid)
                    self._name.pop(cid, None)
            for row in rows:
                self._host[row.id], self._name[row.id] = host, row.name

    def forget_host(self, host: str) -> None:
        with self._lock:
            self._images = {k: v for k, v in self._images.items() if k[0] != host}

    def has_image(self, host: str, image_id: str, lookup: Callable[[str, str], str | None]) -> bool:
        """Whether `host` holds exactly this image id (asked through `lookup` and kept a while)."""
        now = self._clock()
        with self._lock:
            cached = self._images.get((host, image_id))
        if cached is None or now - cached[1] > IMAGE_TTL_S:
            try:
                cached = (lookup(host, image_id), now)
            except GatewayError:  # it did not say: not kept, it is asked again next time
                return False
            with self._lock:
                self._images[(host, image_id)] = cached
        return cached[0] == image_id
