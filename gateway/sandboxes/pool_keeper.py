"""Keeping the warm pools filled: made in the background, retired when old or no longer wanted."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
T = TypeVar("T")
#: After a failed pool fill, wait this long before trying again (the engine may be down).
_RETRY_S = 5.0
#: Refills wait at most this long for first calls in handed-out sandboxes to end (see `_yield`).
_HANDOVER_WAIT_S = 1.0


class PoolKeeper:
    """Fills each pool up to its size while the host quota leaves room, and removes retired ones."""

    def __init__(self, pool: WarmPool, registry: Registry, containers: Containers) -> None:
        self._pool = pool
        self._registry = registry
        self._containers = containers
        #: Pooled sandboxes handed out whose first call has not ended yet.
        self._handing = 0
        self._handed = anyio.Event()

    async def run(self) -> None:
        """For the gateway's lifetime."""
        while True:
            await self.retire()
            await self._yield()
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

    async def _yield(self) -> None:
        """Let the first calls in sandboxes just handed out end before making more: a create
        competes with them for the engine and the CPU, and they are why the pool exists. Bounded,
        so a steady stream of new principals cannot keep the pool from refilling."""
        with anyio.move_on_after(_HANDOVER_WAIT_S):
            while self._handing:
                await self._handed.wait()

    def _handed_over(self) -> None:
        self._handing -= 1
        if not self._handing:
            self._handed.set()
            self._handed = anyio.Event()

    def _full(self) -> bool:
        return self._registry.live(self._pool.size) >= self._registry.max_sandboxes

    async def _fill(self, target: PoolTarget) -> None:
        name = f"{naming.pool_prefix(self._containers.replica_id)}{secrets.token_hex(8)}"
        sandbox = await self._containers.make(None, target.grant, name, "", self._registry.taken_uids())
        if not self._pool.offer(target, sandbox):
            await self.retire()

    def take(self, spec: str, principal: Principal, grant: Allowed, key: str) -> Sandbox | None:
        """A ready sandbox of `spec`, claimed for its principal, or None. It is renamed to the
        principal's name while its first call runs (`run_in`); the pool refills once that call ends."""
        sandbox = self._pool.take(spec)
        if sandbox is not None:
            self._containers.claim(sandbox, principal, grant, key)
            sandbox.renaming = True
            self._handing += 1
        return sandbox

    async def run_in(
        self, sandbox: Sandbox, principal: Principal, run: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """`run()` (a call in `sandbox`), and whether the sandbox is still its principal's after it.
        A claimed sandbox's first call runs while the sandbox is renamed to its principal's name:
        the Docker rename costs the call nothing. It returns once both are done; a sandbox that
        could not be renamed (or whose call was cancelled during the rename) is dropped and removed,
        not lost: its principal's next call gets a new one."""
        if not sandbox.renaming:
            return await run(), True
        sandbox.renaming = False
        try:
            return await self._hand_over(sandbox, principal, run)
        finally:
            self._handed_over()

    async def _hand_over(
        self, sandbox: Sandbox, principal: Principal, run: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        renamed = False

        async def rename() -> None:
            nonlocal renamed
            try:
                await self._containers.rename_to_owner(sandbox, principal)
                renamed = True
            except GatewayError as exc:
                _log.warning("a pooled sandbox could not be renamed to its principal's (%s)", exc.message)

        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(rename)
                try:
                    outcome = await run()
                except Exception as exc:  # noqa: BLE001 - re-raised as itself below, not in a group
                    failure = exc
        finally:
            if not renamed:  # failed, or cancelled with its call: removed once the call is over
                with anyio.CancelScope(shield=True):
                    self._registry.drop(sandbox)
                    await self._remove(sandbox, "pool-assign-failed")
        if failure is not None:
            raise failure
        return outcome, renamed

    async def retire(self) -> None:
        """Remove the sandboxes the pool retired (spec dropped, pool shrunk, too old)."""
        for sandbox in self._pool.retired():
            await self._remove(sandbox, "pool-retired")

    async def _remove(self, sandbox: Sandbox, reason: str) -> None:
        """Remove a pooled sandbox; one the engine would not remove still counts, and the reaper
        tries again."""
        sandbox.executor.close()
        key = sandbox.principal_key or None  # set once claimed by a principal
        if not await self._containers.discard_quietly(sandbox.container_id, reason, principal_key=key):
            self._registry.removal_failed(sandbox, reason)
