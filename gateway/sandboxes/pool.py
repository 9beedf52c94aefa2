"""Warm pools: started sandboxes kept ready, so a new principal's first call waits for no create.

A pooled sandbox belongs to nobody until one principal takes it; it is then renamed to that
principal's sandbox name (so a restarted gateway adopts it like any other) and never goes back.
Pools are keyed by spec digest: profiles with the same sandbox spec share one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from gateway.sandboxes.model import Sandbox
from policy import Allowed
from policy.engine import PolicyEngine, allow

__all__ = ["PoolTarget", "WarmPool", "pool_targets"]


@dataclass(slots=True)
class PoolTarget:
    """How many ready sandboxes of one spec to keep, and the grant they are made from."""

    grant: Allowed
    size: int
    ready: list[Sandbox] = field(default_factory=list)


def pool_targets(engine: PolicyEngine) -> dict[str, tuple[Allowed, int]]:
    """spec digest -> (grant of the first profile with that spec, largest warm_pool among them)."""
    targets: dict[str, tuple[Allowed, int]] = {}
    for name, profile in engine.policy.profiles.items():
        size = profile.lifecycle.warm_pool
        if size <= 0:
            continue
        digest = profile.sandbox.digest()
        grant = allow(name, profile, engine.digest)
        known = targets.get(digest)
        targets[digest] = (known[0] if known else grant, max(size, known[1] if known else 0))
    return targets


def _fresh(sandbox: Sandbox, now: float) -> bool:
    """Young enough (half its max age at most, so its principal gets most of a sandbox's lifetime)
    and, on the agent path, still connected (an engine restart stops pooled sandboxes too)."""
    if not sandbox.executor.connected:
        return False
    return now - sandbox.created_at < sandbox.lifecycle.max_age_s / 2


class WarmPool:
    """Ready sandboxes per spec digest. `take` is synchronous, so two calls never get the same one."""

    def __init__(self) -> None:
        self._targets: dict[str, PoolTarget] = {}
        self._wake = anyio.Event()
        self._retired: list[Sandbox] = []
        self._unwanted: Callable[[Sandbox], bool] = lambda sandbox: False

    def configure(self, targets: dict[str, tuple[Allowed, int]]) -> None:
        """Adopt new sizes and specs (start-up, policy reload); sandboxes of dropped specs retire."""
        for digest, target in list(self._targets.items()):
            if digest not in targets:
                self._retired.extend(target.ready)
                del self._targets[digest]
        for digest, (grant, size) in targets.items():
            current = self._targets.get(digest)
            if current is None:
                self._targets[digest] = PoolTarget(grant, size)
            else:
                current.grant, current.size = grant, size
                while len(current.ready) > size:
                    self._retired.append(current.ready.pop())
        self._wake.set()

    @property
    def size(self) -> int:
        """Ready sandboxes across all pools (they count against the host quota)."""
        return sum(len(t.ready) for t in self._targets.values())

    @property
    def sandboxes(self) -> list[Sandbox]:
        return [s for t in self._targets.values() for s in t.ready]

    def available(self, spec_digest: str) -> bool:
        target = self._targets.get(spec_digest)
        return target is not None and bool(target.ready)

    def take(self, spec_digest: str) -> Sandbox | None:
        """A ready sandbox of this spec young enough to serve a principal, or None."""
        target = self._targets.get(spec_digest)
        if target is None:
            return None
        now = time.time()
        while target.ready:
            sandbox = target.ready.pop(0)
            self._wake.set()
            if _fresh(sandbox, now):
                return sandbox
            self._retired.append(sandbox)
        return None

    def retired(self) -> list[Sandbox]:
        """Sandboxes to remove (spec dropped, pool shrunk, or too old); the caller removes them."""
        out, self._retired = self._retired, []
        return out

    def expire(self, now: float) -> None:
        """Retire ready sandboxes past half their max age or with a broken agent connection."""
        for target in self._targets.values():
            old = [s for s in target.ready if not _fresh(s, now)]
            if old:
                target.ready = [s for s in target.ready if s not in old]
                self._retired.extend(old)
                self._wake.set()

    def retire_if(self, doomed: Callable[[Sandbox], bool]) -> int:
        """Retire the ready sandboxes `doomed` says (on a host that now drains); how many. Until
        the next call, a sandbox still being made when `doomed` came is retired when offered."""
        self._unwanted = doomed
        count = 0
        for target in self._targets.values():
            out = [s for s in target.ready if doomed(s)]
            if out:
                target.ready = [s for s in target.ready if s not in out]
                self._retired.extend(out)
                count += len(out)
        if count:
            self._wake.set()
        return count

    def offer(self, target: PoolTarget, sandbox: Sandbox) -> bool:
        """Add a freshly made sandbox to its pool, unless the pool was reconfigured meanwhile or
        its host started draining."""
        if (
            self._targets.get(sandbox.spec_digest) is not target
            or len(target.ready) >= target.size
            or self._unwanted(sandbox)
        ):
            self._retired.append(sandbox)
            return False
        target.ready.append(sandbox)
        return True

    def wanted(self) -> list[tuple[PoolTarget, int]]:
        return [(t, t.size - len(t.ready)) for t in self._targets.values() if len(t.ready) < t.size]

    def wake(self) -> None:
        """Look again (host capacity was freed: a sandbox went, or a creation ended)."""
        self._wake.set()

    async def wait(self) -> None:
        """Until something changed (a take, a reconfigure)."""
        await self._wake.wait()
        self._wake = anyio.Event()
