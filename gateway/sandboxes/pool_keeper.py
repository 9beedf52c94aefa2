"""Keeping the warm pools filled: made in the background, retired when old or no longer wanted."""

from __future__ import annotations

import logging
import secrets

import anyio

from gateway.errors import GatewayError
from gateway.sandboxes import naming
from gateway.sandboxes.containers import Containers
from gateway.sandboxes.model import Sandbox
from gateway.sandboxes.pool import PoolTarget, WarmPool
from gateway.sandboxes.registry import Registry
from policy import Allowed, Principal

__all__ = ["PoolKeeper"]

_log = logging.getLogger("sandbox_gateway.broker")
#: After a failed pool fill, wait this long before trying again (the engine may be down).
_RETRY_S = 5.0


class PoolKeeper:
    """Fills each pool up to its size while the host quota leaves room, and removes retired ones."""

    def __init__(self, pool: WarmPool, registry: Registry, containers: Containers) -> None:
        self._pool = pool
        self._registry = registry
        self._containers = containers

    async def run(self) -> None:
        """For the gateway's lifetime."""
        while True:
            await self.retire()
            failed = False
            for target, missing in self._pool.wanted():
                for _ in range(missing):
                    if self._full():
                        break
                    try:
                        await self._fill(target)
                    except GatewayError as exc:
                        _log.warning("filling the warm pool failed: %s", exc.message)
                        failed = True
                        break
            if failed:
                await anyio.sleep(_RETRY_S)
            elif not self._pool.wanted() or self._full():
                await self._pool.wait()

    def _full(self) -> bool:
        return self._registry.live(self._pool.size) >= self._registry.max_sandboxes

    async def _fill(self, target: PoolTarget) -> None:
        name = f"{naming.POOL_PREFIX}{secrets.token_hex(8)}"
        sandbox = await self._containers.make(None, target.grant, name, "", self._registry.taken_uids())
        if not self._pool.offer(target, sandbox):
            await self.retire()

    async def hand_out(self, spec: str, principal: Principal, grant: Allowed, key: str) -> Sandbox | None:
        """A ready sandbox of `spec` given to its principal (renamed to its name), or None. One that
        cannot be renamed, or whose caller went away meanwhile, is removed, not lost."""
        sandbox = self._pool.take(spec)
        if sandbox is None:
            return None
        try:
            await self._containers.rename_for(sandbox, principal, grant, key)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._remove(sandbox, "pool-assign-failed")
            if not isinstance(exc, GatewayError):
                raise
            _log.warning("a pooled sandbox could not be handed out (%s); creating one", exc.message)
            return None
        return sandbox

    async def retire(self) -> None:
        """Remove the sandboxes the pool retired (spec dropped, pool shrunk, too old)."""
        for sandbox in self._pool.retired():
            await self._remove(sandbox, "pool-retired")

    async def _remove(self, sandbox: Sandbox, reason: str) -> None:
        """Remove a pooled sandbox; one the engine would not remove still counts, and the reaper
        tries again."""
        sandbox.executor.close()
        if not await self._containers.discard_quietly(sandbox.container_id, reason):
            self._registry.removal_failed(sandbox, reason)
