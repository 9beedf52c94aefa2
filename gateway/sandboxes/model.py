"""What the broker works with: a principal's live Sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from gateway.backend.base import Executor
from gateway.sandboxes.naming import uid_of_user
from policy import Principal
from policy.model import Lifecycle

__all__ = ["Sandbox", "principal_key"]


@dataclass(slots=True, kw_only=True)
class Sandbox:
    """A principal's live sandbox (or a pooled one, owned by nobody yet) as the broker knows it."""

    container_id: str
    name: str
    #: `tenant/principal` of its owner; empty while it waits in a warm pool.
    principal_key: str
    profile: str
    policy_digest: str
    spec_digest: str
    image: str
    lifecycle: Lifecycle
    created_at: float
    last_used: float
    #: `uid:gid` its code runs as: a host uid of its own (gateway/uids.py).
    user: str
    #: How its commands run: through its agent, or with `docker exec`.
    executor: Executor
    #: OOM kills counted so far in this sandbox's cgroup, to tell whether a call was OOM-killed.
    oom_kills: int = 0
    #: run_python calls take the sandbox's interpreter one at a time, in order.
    interpreter_lock: anyio.Lock = field(default_factory=anyio.Lock)
    #: A pooled sandbox just given to its principal, still to be renamed to the principal's name (it
    #: is, while its first call runs: gateway/sandboxes/pool_keeper.py).
    renaming: bool = False

    def expired(self, now: float) -> str | None:
        """Why this sandbox must go now ('idle' or 'max-age'), or None."""
        if now - self.created_at >= self.lifecycle.max_age_s:
            return "max-age"
        if now - self.last_used >= self.lifecycle.idle_ttl_s:
            return "idle"
        return None

    @property
    def uid(self) -> int:
        return uid_of_user(self.user)


def principal_key(principal: Principal) -> str:
    return f"{principal.tenant}/{principal.id}"
