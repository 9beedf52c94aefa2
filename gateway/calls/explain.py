"""The policy explained: the Decision for one principal and tool call, with its reasons, and the
profiles of the policy in force. `sandbox-gateway policy explain` and the `admin_policy` tool both
print what this module makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.calls.code_mode_results import UpstreamBudgets, UpstreamExplanation
from gateway.calls.results import EffectiveLimits, PolicyExplanation, ProfileLimits
from policy import Action, Allowed, Principal, UpstreamAllowed, argument_size
from policy.engine import PolicyEngine

__all__ = ["PrincipalDirectory", "action_for", "explain", "explain_upstream", "profile_limits"]


class Credential(Protocol):
    @property
    def profile(self) -> str: ...


class PrincipalDirectory(Protocol):
    """Who has a credential in which tenant: the tokens file (`TokenStore`)."""

    def principal_entry(self, principal_id: str, tenant: str | None = None) -> Credential | None:
        """An active credential of `principal_id` in `tenant`, or None when it has none there."""


def action_for(tool: str, arguments: Mapping[str, object] | None = None) -> Action:
    """The Action the engine sees for a call of `tool` with `arguments` (its code's size, its timeout)."""
    arguments = arguments or {}
    code = arguments.get("command", arguments.get("code", ""))
    timeout = arguments.get("timeout_s")
    return Action(
        tool=tool,
        input_bytes=len(str(code).encode()),
        timeout_s=float(timeout) if isinstance(timeout, int | float | str) else None,
    )


def explain(engine: PolicyEngine, principal: Principal, action: Action) -> PolicyExplanation:
    """The engine's Decision for `principal` and `action`, and what an allowed call would get."""
    decision = engine.evaluate(principal, action)
    effective = None
    if isinstance(decision, Allowed):
        effective = EffectiveLimits(
            image=decision.image,
            image_digest=decision.image_digest,
            timeout_s=decision.timeout_s,
            limits=decision.limits,
            sandbox=decision.spec,
        )
    return PolicyExplanation(
        allowed=decision.allowed,
        principal=principal.id,
        tenant=principal.tenant,
        profile=decision.profile,
        reasons=list(decision.reasons),
        rule_ids=list(decision.rule_ids),
        message=decision.message,
        policy_digest=decision.policy_digest,
        effective=effective,
    )


def explain_upstream(
    engine: PolicyEngine, principal: Principal, server: str, tool: str, arguments: Mapping[str, Any]
) -> UpstreamExplanation:
    """The engine's Decision for code in `principal`'s sandbox calling `tool` of upstream `server`
    with `arguments` (their size measured as `policy.argument_size` does)."""
    decision = engine.decide_upstream(principal, server, tool, arguments, argument_size(arguments))
    return UpstreamExplanation(
        allowed=decision.allowed,
        principal=principal.id,
        tenant=principal.tenant,
        profile=decision.profile,
        server=server,
        tool=tool,
        reasons=list(decision.reasons),
        rule_ids=list(decision.rule_ids),
        message=decision.message,
        policy_digest=decision.policy_digest,
        effective=UpstreamBudgets.of(decision) if isinstance(decision, UpstreamAllowed) else None,
    )


def profile_limits(engine: PolicyEngine) -> list[ProfileLimits]:
    """Each profile of the policy in force, by name, with its effective limits."""
    return [ProfileLimits.of(name, engine.policy.profiles[name]) for name in sorted(engine.policy.profiles)]
