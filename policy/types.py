"""Values that flow through the engine: who asks, what they ask, and the answer."""

from __future__ import annotations

from dataclasses import dataclass

from policy.model import ExecLimits, Lifecycle, RateLimits, SandboxSpec

__all__ = ["Action", "Decision", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls. Always derived from a credential, never from tool arguments."""

    id: str
    tenant: str = "default"
    profile: str = "default"
    auth_method: str = "token"
    #: What the credential may do (e.g. "sandbox:exec"); checked by the transport, not the policy.
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Action:
    """One tool call as the engine sees it: sizes and bounds, never the code itself."""

    tool: str
    input_bytes: int = 0
    timeout_s: float | None = None
    image: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer. The broker acts only on an allowed Decision's spec and limits."""

    allowed: bool
    profile: str
    policy_digest: str
    reasons: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    message: str = ""
    spec: SandboxSpec | None = None
    limits: ExecLimits | None = None
    image: str | None = None
    #: The digest the image is pinned to in the policy (the broker verifies it before a create).
    image_digest: str | None = None
    timeout_s: float | None = None
    lifecycle: Lifecycle | None = None
    rate_limits: RateLimits | None = None
