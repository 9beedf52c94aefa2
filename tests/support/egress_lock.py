"""One gateway with egress per host at a time: its proxy listens on the egress network's one port."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

__all__ = ["egress_port"]

_LOCK = "/run/lock/sandbox-gateway-egress-port.lock"


@contextlib.contextmanager
def egress_port() -> Iterator[None]:
    """Hold the egress port for a test's gateway; another test process waits its turn."""
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
