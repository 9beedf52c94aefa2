"""Which hosts are up: the state each host is in, from probes and from the calls made to it.

A host is `unknown` until it first answers, `up` while it answers, and `down` once it has not
answered for `down_after_s` (a host that never answered: that long after it was added). A failed
call or probe makes an up host `suspect` at once: no new sandbox is placed there until it answers
again, but its sandboxes are kept until it is down. A drained host stays up and takes nothing new.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Health", "HostHealth"]


@dataclass(slots=True)
class HostHealth:
    """What is known about one host's health."""

    name: str
    added: float
    state: str = "unknown"  # unknown | up | down
    suspect: bool = False
    last_ok: float | None = None
    last_error: str | None = None
    errors: int = 0
    since: float = 0.0

    @property
    def placeable(self) -> bool:
        return self.state == "up" and not self.suspect


class Health:
    """The health of every host; `ok` and `failed` return the state a host moved to, if it moved."""

    def __init__(self, down_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.down_after_s = down_after_s
        self._clock = clock
        self._hosts: dict[str, HostHealth] = {}

    def track(self, names: list[str]) -> None:
        """Follow exactly these hosts (a reload adds and drops some; the others keep their state)."""
        now = self._clock()
        self._hosts = {n: self._hosts.get(n) or HostHealth(n, added=now, since=now) for n in names}

    def of(self, name: str) -> HostHealth | None:
        return self._hosts.get(name)

    def all(self) -> list[HostHealth]:
        return list(self._hosts.values())

    def ok(self, name: str) -> str | None:
        host = self._hosts.get(name)
        if host is None:
            return None
        now = self._clock()
        host.last_ok, host.suspect = now, False
        return self._move(host, "up", now)

    def failed(self, name: str, error: str) -> str | None:
        host = self._hosts.get(name)
        if host is None:
            return None
        now = self._clock()
        host.errors += 1
        host.last_error = error[:300]
        host.suspect = True
        silent_since = host.last_ok if host.last_ok is not None else host.added
        if now - silent_since >= self.down_after_s:
            return self._move(host, "down", now)
        return None

    def _move(self, host: HostHealth, state: str, now: float) -> str | None:
        if host.state == state:
            return None
        host.state, host.since = state, now
        return state

    def is_down(self, name: str) -> bool:
        host = self._hosts.get(name)
        return host is not None and host.state == "down"

    def placeable(self, name: str) -> bool:
        host = self._hosts.get(name)
        return host is not None and host.placeable
