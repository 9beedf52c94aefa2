"""What the gateway knows is on each host: which container is where (so a call about a sandbox goes
to its host), how many sandboxes each host holds (its free capacity, for placement), which build of
an image each host has (a sandbox is created from an image id, which every host it may be placed on
must hold), and which streams are open to it."""

from __future__ import annotations

import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from gateway.backend.base import ContainerInfo
from gateway.errors import GatewayError

__all__ = ["Inventory", "Streams"]

#: How long a host's answer about an image is kept (a host loaded with the image is used after this).
IMAGE_TTL_S = 30.0


class Inventory:
    """Thread-safe: Backend calls run on worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._host: dict[str, str] = {}  # container id -> host
        self._name: dict[str, str] = {}  # container id -> name
        self._placed_at: dict[str, float] = {}  # container id -> when this gateway placed it
        self._images: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._reserved: dict[str, int] = {}  # host -> creations chosen for it and under way

    def now(self) -> float:
        return self._clock()

    def host_of(self, container_id: str) -> str | None:
        with self._lock:
            return self._host.get(container_id)

    def on(self, host: str) -> dict[str, str]:
        """Container id -> name of every sandbox known to be on `host`."""
        with self._lock:
            return {cid: self._name.get(cid, "") for cid, h in self._host.items() if h == host}

    def count(self, host: str) -> int:
        """Sandboxes on `host`, and creations under way there."""
        with self._lock:
            return sum(1 for h in self._host.values() if h == host) + self._reserved.get(host, 0)

    def reserve(self, host: str) -> None:
        with self._lock:
            self._reserved[host] = self._reserved.get(host, 0) + 1

    def unreserve(self, host: str) -> None:
        with self._lock:
            left = self._reserved.get(host, 0) - 1
            if left > 0:
                self._reserved[host] = left
            else:
                self._reserved.pop(host, None)

    def placed(self, host: str, container_id: str, name: str) -> None:
        with self._lock:
            self._host[container_id], self._name[container_id] = host, name
            self._placed_at[container_id] = self._clock()

    def renamed(self, container_id: str, name: str) -> None:
        with self._lock:
            if container_id in self._host:
                self._name[container_id] = name

    def gone(self, container_id: str) -> None:
        with self._lock:
            self._host.pop(container_id, None)
            self._name.pop(container_id, None)
            self._placed_at.pop(container_id, None)

    def seen(
        self, host: str, rows: Iterable[ContainerInfo], *, complete: bool = False, since: float | None = None
    ) -> None:
        """Rows a host listed; `complete` when it was every sandbox of the gateway on it, so that
        those it no longer lists are forgotten, except those placed after the listing began (`since`,
        this inventory's clock): it could not have seen them."""
        rows = list(rows)
        with self._lock:
            if complete:
                listed_from = self._clock() if since is None else since
                for cid in [c for c, h in self._host.items() if h == host]:
                    if self._placed_at.get(cid, float("-inf")) < listed_from:
                        self._host.pop(cid)
                        self._name.pop(cid, None)
                        self._placed_at.pop(cid, None)
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


class Streams:
    """The attach and exec streams open to each host, so that they can be cut when it goes down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, weakref.WeakSet[socket.socket]] = {}

    def hold(self, host: str, sock: socket.socket) -> None:
        with self._lock:
            self._by_host.setdefault(host, weakref.WeakSet()).add(sock)

    def cut(self, host: str) -> int:
        """Shut every stream to `host`: whoever reads one sees it end now instead of waiting on a
        host that does not answer. Returns how many."""
        with self._lock:
            streams = list(self._by_host.pop(host, ()))
        for sock in streams:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
        return len(streams)
