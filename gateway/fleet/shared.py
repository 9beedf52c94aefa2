"""Budgets the replicas of a fleet share, kept in Redis (the store that already holds their shared
rate limits): calls running per tenant, and sandboxes per tenant.

Each budget is a sorted set per tenant whose members expire: a member's score is the time it lapses
unless its replica renews it (`renew`, every few seconds from the fleet monitor). A replica that
dies holds nothing for longer than `ttl_s`. Checking and taking a place is one Lua script, so two
replicas cannot both take the last one. When Redis cannot be reached, the budget refuses: it fails
closed, like the audit log.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict
from typing import Any

import redis

from gateway.errors import QuotaExceeded

__all__ = ["SharedBudgets", "SharedSandboxes", "SharedSlots"]

#: Drop lapsed members, then add `member` when it is there already or there is room: 1 if added.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class SharedBudgets:
    """The Redis connection and key space (`sgw:<gateway id>:...`) of a fleet's shared budgets."""

    def __init__(self, url: str, gateway_id: str, *, ttl_s: float = 30.0) -> None:
        self.client: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = f"sgw:{gateway_id}"
        self.ttl_s = ttl_s
        self._take = self.client.register_script(_TAKE)

    def take(self, key: str, member: str, cap: int) -> bool:
        now = time.time()
        args: list[str | float] = [now, now + self.ttl_s, member, cap, int(self.ttl_s * 2000)]
        try:
            return bool(self._take(keys=[f"{self.prefix}:{key}"], args=args))
        except redis.RedisError as exc:
            raise QuotaExceeded(
                f"the fleet's shared budgets (Redis) cannot be reached: {exc}",
                code="shared-budget-unavailable",
            ) from exc

    def renew(self, members: dict[str, list[str]]) -> None:
        """Push back the lapse time of these members (key -> members); errors are left for the next round."""
        if not members:
            return
        until = time.time() + self.ttl_s
        pipe = self.client.pipeline(transaction=False)
        for key, names in members.items():
            if names:
                pipe.zadd(f"{self.prefix}:{key}", dict.fromkeys(names, until), xx=True)
        try:
            pipe.execute()
        except redis.RedisError:
            return

    def drop(self, key: str, member: str) -> None:
        try:
            self.client.zrem(f"{self.prefix}:{key}", member)
        except redis.RedisError:
            return  # it lapses by itself within ttl_s

    def count(self, key: str) -> int:
        full = f"{self.prefix}:{key}"
        self.client.zremrangebyscore(full, "-inf", time.time())
        return int(self.client.zcard(full))


class SharedSlots:
    """Calls running per tenant across the fleet: the same interface as `TenantSlots`."""

    def __init__(self, budgets: SharedBudgets) -> None:
        self._budgets = budgets
        self._lock = threading.Lock()
        self._mine: dict[str, list[str]] = defaultdict(list)

    def acquire(self, tenant: str, cap: int) -> bool:
        token = secrets.token_hex(8)
        if not self._budgets.take(f"calls:{tenant}", token, cap):
            return False
        with self._lock:
            self._mine[tenant].append(token)
        return True

    def release(self, tenant: str) -> None:
        with self._lock:
            tokens = self._mine.get(tenant)
            token = tokens.pop() if tokens else None
            if tokens == []:
                del self._mine[tenant]
        if token is not None:
            self._budgets.drop(f"calls:{tenant}", token)

    def running(self, tenant: str) -> int:
        return self._budgets.count(f"calls:{tenant}")

    def held(self) -> dict[str, list[str]]:
        with self._lock:
            return {f"calls:{t}": list(tokens) for t, tokens in self._mine.items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._mine)


class SharedSandboxes:
    """Sandboxes per tenant across the fleet, one member per principal (`tenant/principal`)."""

    def __init__(self, budgets: SharedBudgets) -> None:
        self._budgets = budgets

    def reserve(self, key: str, cap: int) -> bool:
        """Room for the principal `key`'s sandbox in its tenant (always, when it holds one already)."""
        tenant = key.partition("/")[0]
        return self._budgets.take(f"sandboxes:{tenant}", key, cap)

    def hold(self, key: str) -> None:
        """The principal's sandbox exists (adopted): count it, whatever the cap."""
        self._budgets.take(f"sandboxes:{key.partition('/')[0]}", key, 1 << 30)

    def release(self, key: str) -> None:
        self._budgets.drop(f"sandboxes:{key.partition('/')[0]}", key)

    def set_current(self, name: str, container_id: str) -> None:
        """The container the sandbox name `name` was last given to (by any replica)."""
        try:
            self._budgets.client.set(f"{self._budgets.prefix}:current:{name}", container_id, ex=7 * 86400)
        except redis.RedisError:
            return

    def current(self, name: str) -> str | None:
        try:
            found = self._budgets.client.get(f"{self._budgets.prefix}:current:{name}")
        except redis.RedisError:
            return None
        return found.decode() if isinstance(found, bytes) else None

    def mark_lost(self, key: str) -> None:
        """The principal's sandbox was lost: whichever replica answers its next call says so."""
        try:
            self._budgets.client.set(f"{self._budgets.prefix}:lost:{key}", 1, ex=86400)
        except redis.RedisError:
            return  # this replica still knows it

    def take_lost(self, key: str) -> bool:
        try:
            return bool(self._budgets.client.getdel(f"{self._budgets.prefix}:lost:{key}"))
        except redis.RedisError:
            return False

    def renew(self, keys: list[str]) -> None:
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            by_tenant[f"sandboxes:{key.partition('/')[0]}"].append(key)
        self._budgets.renew(by_tenant)
