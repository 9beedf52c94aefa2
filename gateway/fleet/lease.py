"""One replica at a time drives a principal's sandbox: a lease in Redis per principal.

The balancer sends a principal's calls to one replica while that replica is up (it hashes the
credential), so the lease is normally taken and given back by the same replica. It matters when
the balancer moves a principal (a replica died, came back, or failed a health check): the new
replica waits until the old one's calls have ended (their lease given back, or lapsed when that
replica died) before it touches the sandbox, so two replicas never write to one agent at once. The
replica that last drove each principal is recorded too: one that drives again after another did
forgets what it knew of the sandbox and finds it again by name, as the other left it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import redis

from gateway.errors import QuotaExceeded
from gateway.fleet.shared import SharedBudgets

__all__ = ["Leases"]

#: Take the lease when free or ours (1), and say whether another replica drove last (2); else 0.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local last = redis.call('GETSET', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], 86400000)
if last and last ~= ARGV[1] then return 2 end
return 1
"""
_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Push back the lapse of each lease given that this replica still holds.
_RENEW = """
local renewed = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
"""


class Leases:
    """Leases of this replica (`replica_id`) on principals' sandboxes."""

    def __init__(
        self,
        budgets: SharedBudgets,
        replica_id: str,
        handed_over: Callable[[str], object],
        *,
        wait_s: float = 40.0,
    ) -> None:
        self._budgets, self.replica_id = budgets, replica_id
        self._handed_over = handed_over
        self.wait_s = wait_s
        self._take = budgets.client.register_script(_TAKE)
        self._give_back = budgets.client.register_script(_GIVE_BACK)
        self._renew = budgets.client.register_script(_RENEW)
        self._holders: dict[str, int] = {}  # key -> this replica's calls holding its lease
        self._taking: dict[str, anyio.Lock] = {}

    def _keys(self, key: str) -> list[str]:
        return [f"{self._budgets.prefix}:lease:{key}", f"{self._budgets.prefix}:driver:{key}"]

    def _try(self, key: str) -> int:
        ttl = int(self._budgets.ttl_s * 1000)
        try:
            return int(self._take(keys=self._keys(key), args=[self.replica_id, ttl]))
        except redis.RedisError as exc:
            raise QuotaExceeded(
                f"the fleet's leases (Redis) cannot be reached: {exc}", code="shared-budget-unavailable"
            ) from exc

    @asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        """Hold the lease on principal `key`'s sandbox for the block (shared by this replica's calls)."""
        taking = self._taking.setdefault(key, anyio.Lock())
        async with taking:  # the first of this replica's calls on `key` takes it for the others
            if not self._holders.get(key):
                try:
                    await self._acquire(key)
                except BaseException:
                    if taking.statistics().tasks_waiting == 0:
                        self._taking.pop(key, None)
                    raise
            self._holders[key] = self._holders.get(key, 0) + 1
        try:
            yield
        finally:
            self._holders[key] -= 1
            if self._holders[key] == 0:
                del self._holders[key]
                if not taking.locked():
                    self._taking.pop(key, None)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._release, key)

    async def _acquire(self, key: str) -> None:
        with anyio.move_on_after(self.wait_s):
            delay = 0.02
            while True:
                got = await anyio.to_thread.run_sync(self._try, key)
                if got:
                    if got == 2:  # another replica drove it since: what this one knew is stale
                        self._handed_over(key)
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise QuotaExceeded(
            f"another gateway replica is still running a call in this principal's sandbox after "
            f"{self.wait_s:.0f} s; retry",
            code="sandbox-busy-elsewhere",
        )

    def _release(self, key: str) -> None:
        try:
            self._give_back(keys=self._keys(key)[:1], args=[self.replica_id])
        except redis.RedisError:
            return  # it lapses within ttl_s

    def held_keys(self) -> list[str]:
        """Principals whose lease this replica holds now (a call waiting for one holds nothing)."""
        return [key for key, calls in list(self._holders.items()) if calls > 0]

    def renew(self) -> None:
        """Push back the lapse of the leases held now (calls longer than ttl_s); a lease that lapsed
        and went to another replica meanwhile is left to it."""
        keys = [self._keys(key)[0] for key in self.held_keys()]
        if not keys:
            return
        try:
            self._renew(keys=keys, args=[self.replica_id, int(self._budgets.ttl_s * 1000)])
        except redis.RedisError:
            return
