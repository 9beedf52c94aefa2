"""Which hosts are up: the state each host is in, from probes and from the calls made to it.

A host is `unknown` until it first answers, `up` while it answers, and `down` once it has not
answered for `down_after_s` (a host that never answered: that long after it was added). Two failed
calls or probes in a row make an up host `suspect`: no new sandbox is placed there until it answers
again, but its sandboxes are kept until it is down (one failure alone may be a busy machine's slow
answer). A drained host stays up and takes nothing new.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SUSPECT_AFTER", "Health", "HostHealth"]

#: Failures in a row that stop placements on a host.
SUSPECT_AFTER = 2


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
    #: Failures since it last answered.
    failing: int = 0
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
        host.last_ok, host.suspect, host.failing = now, False, 0
        return self._move(host, "up", now)

    def failed(self, name: str, error: str, *, probe: bool = True) -> str | None:
        """A probe (or, `probe=False`, a call) failed. Only probes move a host to down, so that the
        one who sees the move (the monitor) acts on it."""
        host = self._hosts.get(name)
        if host is None:
            return None
        now = self._clock()
        host.errors += 1
        host.failing += 1
        host.last_error = error[:300]
        host.suspect = host.failing >= SUSPECT_AFTER
        silent_since = host.last_ok if host.last_ok is not None else host.added
        if probe and now - silent_since >= self.down_after_s:
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
