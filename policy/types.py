"""Values that flow through the engine: who asks, what they ask, and the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from policy.interpreter_model import InterpreterLimits
from policy.model import ExecLimits, Lifecycle, RateLimits, SandboxSpec

_DEFAULT_INTERPRETER = InterpreterLimits()

__all__ = ["Action", "Allowed", "Decision", "Denied", "Principal", "UpstreamAllowed", "UpstreamDecision"]


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
class Allowed:
    """The engine allows the call: everything the broker needs to act on it, nothing optional."""

    profile: str
    policy_digest: str
    spec: SandboxSpec
    limits: ExecLimits
    image: str
    #: The digest the image is pinned to in the policy, or None where it is not pinned (the broker
    #: verifies a pin before a create).
    image_digest: str | None
    timeout_s: float
    lifecycle: Lifecycle
    rate_limits: RateLimits
    #: run_python's interpreter bounds (the profile's `interpreter` key).
    interpreter: InterpreterLimits = _DEFAULT_INTERPRETER
    reasons: tuple[str, ...] = ("allowed",)
    rule_ids: tuple[str, ...] = ()
    allowed: ClassVar[Literal[True]] = True
    message: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class Denied:
    """The engine refuses the call: why (a stable reason code), by which rule, in words."""

    profile: str
    policy_digest: str
    reasons: tuple[str, ...]
    rule_ids: tuple[str, ...]
    message: str
    allowed: ClassVar[Literal[False]] = False


#: The engine's answer: the broker acts only on an `Allowed`.
Decision = Allowed | Denied


@dataclass(frozen=True, slots=True)
class UpstreamAllowed:
    """The engine allows code in a sandbox to call `tool` of upstream `server` (code mode), under
    these budgets of the principal's profile."""

    profile: str
    policy_digest: str
    server: str
    tool: str
    #: The allow rule that matched, e.g. "profiles.default.code_mode.allow[0]".
    rule_id: str
    calls_per_execution: int
    calls_per_minute: int
    max_result_bytes: int
    call_timeout_s: float
    refuse_secrets: bool
    allowed: ClassVar[Literal[True]] = True
    reasons: ClassVar[tuple[str, ...]] = ("allowed",)
    message: ClassVar[str] = ""

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """`rule_id` as a tuple, as a `Denied` has it."""
        return (self.rule_id,)


#: The engine's answer to an upstream call from code mode.
UpstreamDecision = UpstreamAllowed | Denied
