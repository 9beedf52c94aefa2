"""The broker's state: which sandbox each principal has, who is being served, and the quotas on them.

Nothing here awaits: a quota is checked and a slot reserved in one step, so a parallel burst of
calls cannot overshoot it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import anyio

from gateway.errors import QuotaExceeded
from gateway.sandboxes.model import Sandbox
from gateway.telemetry import instruments

__all__ = ["Registry"]


class SharedQuota(Protocol):
    """Sandboxes per tenant counted across a fleet's replicas (gateway/fleet/shared.py)."""

    def reserve(self, key: str, cap: int) -> bool: ...

    def hold(self, key: str) -> None: ...

    def release(self, key: str) -> None: ...

    def mark_lost(self, key: str) -> None: ...

    def take_lost(self, key: str) -> bool: ...

    def set_current(self, name: str, container_id: str) -> None: ...

    def current(self, name: str) -> str | None: ...


class Registry:
    """Live sandboxes by principal key, their locks, calls running and creations under way."""

    def __init__(self, max_sandboxes: int, on_freed: Callable[[], None] = lambda: None) -> None:
        self.max_sandboxes = max_sandboxes
        #: Called when a sandbox stops counting against the host cap (the warm pool may fill again).
        self._on_freed = on_freed
        self._sandboxes: dict[str, Sandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._running: dict[str, int] = {}
        self._creating = 0
        self._creating_in: dict[str, int] = {}
        #: Sandboxes whose removal the engine refused, by container id, with the reason they went.
        self._unremoved: dict[str, tuple[Sandbox, str]] = {}
        #: Principals whose sandbox was lost since their last call: their next result says so.
        self._lost: set[str] = set()
        #: Fleet mode with Redis: sandboxes per tenant counted across the replicas too.
        self.shared: SharedQuota | None = None
        self._alive = instruments().sandboxes_alive

    # -- sandboxes --------------------------------------------------------------------------------

    def get(self, key: str) -> Sandbox | None:
        return self._sandboxes.get(key)

    def holds(self, sandbox: Sandbox) -> bool:
        """Whether `sandbox` is still its principal's sandbox (not replaced or removed meanwhile)."""
        return self._sandboxes.get(sandbox.principal_key) is sandbox

    @property
    def sandboxes(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    def add(self, sandbox: Sandbox) -> None:
        self._sandboxes[sandbox.principal_key] = sandbox
        self._alive.add(1)
        if self.shared is not None:
            self.shared.hold(sandbox.principal_key)
            self.shared.set_current(sandbox.name, sandbox.container_id)

    def drop(self, sandbox: Sandbox) -> None:
        if self._sandboxes.get(sandbox.principal_key) is sandbox:
            del self._sandboxes[sandbox.principal_key]
            self._alive.add(-1)
            self._on_freed()
            if self.shared is not None:
                self.shared.release(sandbox.principal_key)

    def removal_failed(self, sandbox: Sandbox, reason: str) -> None:
        """A sandbox the engine would not remove: it still counts, and the reaper tries again."""
        self._unremoved[sandbox.container_id] = (sandbox, reason)

    def unremoved(self) -> list[tuple[Sandbox, str]]:
        """Sandboxes to remove again (with the reason they went), forgetting those adopted since."""
        known = {sandbox.container_id for sandbox in self._sandboxes.values()}
        for container_id in known & self._unremoved.keys():
            del self._unremoved[container_id]
        return list(self._unremoved.values())

    def removed(self, container_id: str) -> None:
        if self._unremoved.pop(container_id, None) is not None:
            self._on_freed()

    def clear(self) -> None:
        self._alive.add(-len(self._sandboxes))
        self._sandboxes.clear()

    def lock(self, key: str) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    def taken_uids(self) -> set[int]:
        return {sandbox.uid for sandbox in self._sandboxes.values()}

    # -- lost sandboxes ---------------------------------------------------------------------------

    def mark_lost(self, key: str) -> None:
        self._lost.add(key)
        if self.shared is not None:  # another replica may answer its next call
            self.shared.mark_lost(key)

    def was_lost(self, key: str) -> bool:
        """True once after the principal's sandbox was lost (its next result says so)."""
        shared = self.shared is not None and self.shared.take_lost(key)
        if key in self._lost:
            self._lost.discard(key)
            return True
        return shared

    # -- quotas -----------------------------------------------------------------------------------

    def live(self, pooled: int) -> int:
        """Sandboxes that count against the host quota: known, not yet removed, being made, and
        `pooled` ready ones."""
        return len(self._sandboxes) + len(self._unremoved) + self._creating + pooled

    @contextlib.contextmanager
    def creating(
        self, tenant: str, *, pooled: int, adds: int, tenant_cap: int, member: str = ""
    ) -> Iterator[None]:
        """Reserve a creation for `tenant` while it is under way, after checking the host cap
        (`adds`: 0 when a pooled sandbox will be handed out, 1 when one is made) and the tenant cap
        (across the fleet too, for the principal `member`, when budgets are shared)."""
        if self.live(pooled) + adds > self.max_sandboxes:
            raise QuotaExceeded(
                f"host sandbox quota: {self.max_sandboxes} sandboxes are live on this gateway",
                code="host-sandbox-quota",
            )
        live = sum(1 for key in self._sandboxes if key.startswith(f"{tenant}/"))
        live += self._creating_in.get(tenant, 0)
        if live >= tenant_cap:
            raise QuotaExceeded(
                f"tenant sandbox quota: tenant {tenant!r} has {live} of {tenant_cap}",
                code="tenant-sandbox-quota",
            )
        shared = self.shared if member else None
        if shared is not None and not shared.reserve(member, tenant_cap):
            raise QuotaExceeded(
                f"tenant sandbox quota: tenant {tenant!r} has {tenant_cap} sandboxes across the fleet",
                code="tenant-sandbox-quota",
            )
        self._creating += 1
        self._creating_in[tenant] = self._creating_in.get(tenant, 0) + 1
        try:
            yield
        finally:
            self._creating -= 1
            self._creating_in[tenant] -= 1
            self._on_freed()
            if shared is not None and member not in self._sandboxes:  # not made after all
                shared.release(member)

    @contextlib.contextmanager
    def calling(self, key: str, limit: int) -> Iterator[None]:
        """Count one call running for `key`; refused at once beyond `limit`."""
        if self._running.get(key, 0) >= limit:
            raise QuotaExceeded(
                f"concurrent-exec quota: {limit} calls already running for this principal",
                code="concurrent-exec-quota",
            )
        self._running[key] = self._running.get(key, 0) + 1
        try:
            yield
        finally:
            self._running[key] -= 1

    def busy(self, key: str) -> bool:
        return bool(self._running.get(key, 0))

    @property
    def running_calls(self) -> int:
        return sum(self._running.values())

    async def idle(self, timeout_s: float) -> int:
        """Wait until no call runs, at most `timeout_s`; how many still run then."""
        with anyio.move_on_after(timeout_s):
            while self.running_calls:
                await anyio.sleep(0.1)
        return self.running_calls
