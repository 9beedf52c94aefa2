"""A gateway's sandboxes as the tests look at them: what runs inside them, seen from the host (a runc
sandbox's processes are host processes in the sandbox's own PID namespace, so /proc shows them
without running anything in it), and a broker's sandbox of a principal."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend
    from gateway.sandboxes.broker import Broker
    from gateway.sandboxes.model import Sandbox
    from policy import Principal

__all__ = ["commands_in_sandboxes", "sandbox_of"]

POOL_PREFIX = "sgw-pool-"


def commands_in_sandboxes(backend: DockerBackend, gateway_id: str) -> list[tuple[str, ...]]:
    """The argv of every process in the principals' sandboxes of one gateway (not those still in its
    warm pool). Reading another process's namespace takes root, which the suite runs as."""
    namespaces = set()
    for row in backend.list({"sandbox-gateway.gateway": gateway_id}):
        if row.name.startswith(POOL_PREFIX) or not row.running:
            continue
        pid = backend.inspect_raw(row.id)["State"]["Pid"]
        with contextlib.suppress(OSError):  # it stopped meanwhile
            namespaces.add(os.readlink(f"/proc/{pid}/ns/pid"))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # a process that ended while it was looked at
            if os.readlink(proc / "ns" / "pid") in namespaces:
                argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                found.append(tuple(arg.decode(errors="replace") for arg in argv))
    return found


def sandbox_of(broker: Broker, principal: Principal) -> Sandbox:
    """The principal's sandbox, which the test expects the broker to hold."""
    sandbox = broker.sandbox_of(principal)
    assert sandbox is not None, f"{principal} has no sandbox"
    return sandbox
