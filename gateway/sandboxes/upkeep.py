"""The broker's upkeep: reaping sandboxes past their time and, in fleet mode, forgetting those on a
host that went down or driven by another replica since, and sharing the tenant quota."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from gateway.sandboxes.adoption import Adoption
from gateway.sandboxes.containers import Containers
from gateway.sandboxes.model import Sandbox
from gateway.sandboxes.pool import WarmPool
from gateway.sandboxes.registry import Registry, SharedQuota

__all__ = ["Upkeep"]


class Upkeep:
    """Works on the broker's registry; `discard` is the broker's own (forget, remove, count)."""

    def __init__(
        self,
        registry: Registry,
        containers: Containers,
        adoption: Adoption,
        pool: WarmPool,
        discard: Callable[[Sandbox, str], Awaitable[None]],
    ) -> None:
        self._registry, self._containers, self._adoption = registry, containers, adoption
        self._pool, self._discard = pool, discard

    async def reap_expired(self) -> int:
        """Remove sandboxes past their idle TTL or max age (never one with a call running), and
        those whose removal the engine refused before (one that fails again waits for the next)."""
        self._pool.expire(time.time())
        removed = 0
        for sandbox, why in self._registry.unremoved():
            if await self._containers.discard_quietly(sandbox.container_id, why):
                self._registry.removed(sandbox.container_id)
                removed += 1
        for sandbox in self._registry.sandboxes:
            if self._registry.busy(sandbox.principal_key):
                continue
            async with self._registry.lock(sandbox.principal_key):
                reason = sandbox.expired(time.time())
                if reason and self._registry.holds(sandbox):
                    await self._discard(sandbox, reason)
                    removed += 1
        return removed

    async def host_lost(self, container_ids: set[str]) -> int:
        """Forget the sandboxes among `container_ids` (on a host that went down), without removing
        them: their principals' next calls get new ones (`sandbox_replaced`) or, when the host is
        back by then, find theirs by name again. Returns how many were forgotten."""
        lost = [s for s in self._registry.sandboxes if s.container_id in container_ids]
        for sandbox in lost:
            sandbox.executor.close()
            self._registry.drop(sandbox)
            self._registry.mark_lost(sandbox.principal_key)
            self._adoption.may_exist(sandbox.name)
        return len(lost)

    def handed_over(self, key: str) -> bool:
        """Another replica drove the principal `key`'s sandbox since this one did: forget what this
        one knew of it (its next call finds the sandbox by name, as it is now). Whether it knew one."""
        sandbox = self._registry.get(key)
        if sandbox is None:
            return False
        sandbox.executor.close()
        self._registry.drop(sandbox)
        self._adoption.may_exist(sandbox.name)
        return True

    def share_quota(self, shared: SharedQuota) -> None:
        """Fleet mode with Redis: sandboxes per tenant are counted across the replicas too, and
        which container is each principal's latest is known to all of them."""
        self._registry.shared = shared
        self._adoption.current_of = shared.current
