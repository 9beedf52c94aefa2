"""What the broker works with: a principal's Sandbox, and the Grant an allowed Decision gives it."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from gateway.backend.agent_channel import AgentChannel
from gateway.errors import PolicyDenied
from policy import Decision, Principal
from policy.model import ExecLimits, Lifecycle, RateLimits, SandboxSpec

__all__ = ["STREAM_THREADS", "Grant", "Sandbox", "principal_key"]

#: Threads one sandbox may use at once to read `docker exec` output streams (its own, never shared;
#: the policy's per-principal `max_concurrent` bounds its calls before this does).
STREAM_THREADS = 32


@dataclass(slots=True)
class Sandbox:
    """A principal's live sandbox as the broker knows it."""

    container_id: str
    name: str
    principal_key: str
    profile: str
    policy_digest: str
    spec_digest: str
    image: str
    lifecycle: Lifecycle
    created_at: float
    last_used: float
    #: `uid:gid` its code runs as: a host uid of its own (gateway/uids.py).
    user: str = ""
    #: OOM kills counted so far in this sandbox's cgroup, to tell whether a call was OOM-killed.
    oom_kills: int = 0
    #: The connection to the sandbox's agent; None when commands go through `docker exec`.
    channel: AgentChannel | None = None
    #: The threads that read this sandbox's `docker exec` streams while its commands run.
    streams: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(STREAM_THREADS))

    def expired(self, now: float) -> str | None:
        """Why this sandbox must go now ('idle' or 'max-age'), or None."""
        if now - self.created_at >= self.lifecycle.max_age_s:
            return "max-age"
        if now - self.last_used >= self.lifecycle.idle_ttl_s:
            return "idle"
        return None


def principal_key(principal: Principal) -> str:
    return f"{principal.tenant}/{principal.id}"


@dataclass(frozen=True, slots=True)
class Grant:
    """The parts of an allowed Decision the broker acts on, none of them optional."""

    profile: str
    policy_digest: str
    spec: SandboxSpec
    image: str
    image_digest: str | None
    limits: ExecLimits
    timeout_s: float
    lifecycle: Lifecycle
    rate_limits: RateLimits

    @classmethod
    def of(cls, decision: Decision) -> Grant:
        """Refuse anything but a complete, allowed Decision: nothing reaches Docker without one."""
        d = decision
        if (
            not d.allowed
            or d.spec is None
            or d.image is None
            or d.limits is None
            or d.timeout_s is None
            or d.lifecycle is None
            or d.rate_limits is None
        ):
            raise PolicyDenied("no allowed decision for this call", code="not-allowed")
        return cls(
            d.profile,
            d.policy_digest,
            d.spec,
            d.image,
            d.image_digest,
            d.limits,
            d.timeout_s,
            d.lifecycle,
            d.rate_limits,
        )
